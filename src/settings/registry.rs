//! The `[registry]` section resolved: the URL split into host and scheme (plain HTTP only to
//! loopback, or elsewhere with `insecure`), the kind inferred from the host (ECR's
//! `<account>.dkr.ecr.<region>.amazonaws.com`, else a Distribution registry), the repository.

use std::time::Duration;

use super::config::{self, EcrSection, RegistryKind};

#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub kind: RegistryKind,
    /// `host[:port]`, without scheme.
    pub host: String,
    pub repository: String,
    /// Talk plain HTTP (loopback, or `http://` with `insecure`).
    pub plain_http: bool,
    /// Accept plain HTTP / unverified TLS to a non-loopback host.
    pub insecure: bool,
    pub ecr: EcrSection,
    /// How long one command may spend on registry requests in all (`[registry] timeout`).
    pub timeout: Duration,
}

impl RegistrySettings {
    /// `host/repository`, as users write image names.
    pub fn display(&self) -> String {
        format!("{}/{}", self.host, self.repository)
    }
}

pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `<account>.dkr.ecr.<region>.amazonaws.com` → (account, region).
pub fn parse_ecr_host(host: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() >= 6 && parts[1] == "dkr" && parts[2] == "ecr" && parts[4] == "amazonaws" {
        Some((parts[0].to_string(), parts[3].to_string()))
    } else {
        None
    }
}

/// `[registry]` checked and resolved; the message says what is wrong with it.
pub(super) fn resolve(reg: config::RegistrySection) -> Result<RegistrySettings, String> {
    let (scheme, host) = match reg.url.split_once("://") {
        Some((s, h)) => (Some(s.to_ascii_lowercase()), h.trim_end_matches('/').to_string()),
        None => (None, reg.url.trim_end_matches('/').to_string()),
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!(
            "[registry] url '{}' must be host[:port] (the repository goes in `repository`)",
            reg.url
        ));
    }
    let loopback = is_loopback_host(&host);
    let plain_http = match scheme.as_deref() {
        Some("http") => true,
        Some("https") => false,
        None => loopback,
        Some(other) => {
            return Err(format!("[registry] url scheme '{other}' is not http or https"));
        }
    };
    if plain_http && !loopback && !reg.insecure {
        return Err(format!(
            "[registry] url '{}' is plain HTTP to a non-loopback host; use https, or set insecure = true if you mean it",
            reg.url
        ));
    }
    let kind = reg.kind.unwrap_or(if parse_ecr_host(&host).is_some() {
        RegistryKind::Ecr
    } else {
        RegistryKind::Oci
    });
    let repository = reg.repository.trim_matches('/').to_string();
    if repository.is_empty() {
        return Err("[registry] repository is empty".into());
    }
    Ok(RegistrySettings {
        kind,
        host,
        repository,
        plain_http,
        insecure: reg.insecure,
        ecr: reg.ecr.unwrap_or_default(),
        timeout: reg.timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        for (h, want) in [
            ("127.0.0.1:5000", true),
            ("localhost", true),
            ("[::1]:5000", true),
            ("127.1.2.3", true),
            ("10.0.0.1:5000", false),
            ("example.com", false),
        ] {
            assert_eq!(is_loopback_host(h), want, "{h}");
        }
    }
}
