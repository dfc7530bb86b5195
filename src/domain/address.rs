//! Where a Docker Engine is: the address users write in `[target] host`, `--host`, `DOCKER_HOST`
//! or a docker context (`unix:///var/run/docker.sock`, `tcp://10.0.0.5:2376`,
//! `ssh://ubuntu@ec2-1.example.com:2222`), parsed once into parts. Pure: no IO.
//!
//! The port of an `ssh://` address is kept apart from the host name (bollard's own `ssh` support
//! hands `host:2222` to ssh as a host name), so it can be given to ssh as `-p`.

use std::fmt;

/// A parsed engine address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineAddress {
    /// A unix socket on this machine.
    Unix(String),
    /// `tcp://host:port` (plain HTTP; TLS is chosen from the environment by the adapter).
    Tcp { host: String, port: u16 },
    /// An engine on another machine, reached by the system `ssh` client.
    Ssh(SshDestination),
}

/// `ssh://[user@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshDestination {
    pub user: Option<String>,
    /// A host name, an address, or a `Host` alias of the user's ssh_config.
    pub host: String,
    pub port: Option<u16>,
}

impl fmt::Display for SshDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ssh://")?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            write!(f, "{}", self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

impl SshDestination {
    /// `user@host` (or `host`), as ssh takes it and as messages name it.
    pub fn user_at_host(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("use engine address '{0}': expected unix://PATH, tcp://HOST:PORT or ssh://[USER@]HOST[:PORT]")]
    Scheme(String),
    #[error("use engine address '{address}': {why}")]
    Invalid { address: String, why: String },
}

impl EngineAddress {
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        let invalid = |why: &str| AddressError::Invalid {
            address: s.to_string(),
            why: why.to_string(),
        };
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(AddressError::Scheme(s.to_string()));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "unix" => {
                if !rest.starts_with('/') {
                    return Err(invalid("a unix socket path must be absolute (unix:///run/docker.sock)"));
                }
                Ok(Self::Unix(rest.to_string()))
            }
            "tcp" | "http" => {
                let rest = rest.trim_end_matches('/');
                let (host, port) = split_host_port(rest).map_err(|w| invalid(&w))?;
                Ok(Self::Tcp {
                    host,
                    port: port.unwrap_or(2375),
                })
            }
            "ssh" => {
                let rest = rest.trim_end_matches('/');
                if rest.contains('/') {
                    return Err(invalid("an ssh address has no path (ssh://user@host:port)"));
                }
                let (user, hostport) = match rest.rsplit_once('@') {
                    Some((u, h)) if !u.is_empty() => (Some(u.to_string()), h),
                    Some(_) => return Err(invalid("the user before '@' is empty")),
                    None => (None, rest),
                };
                let (host, port) = split_host_port(hostport).map_err(|w| invalid(&w))?;
                if host.starts_with('-') {
                    return Err(invalid("a host name cannot start with '-'"));
                }
                Ok(Self::Ssh(SshDestination { user, host, port }))
            }
            _ => Err(AddressError::Scheme(s.to_string())),
        }
    }
}

impl EngineAddress {
    /// What to say when this engine is reached in plain HTTP over a network: anyone on the path
    /// may then run containers as root on that host. `None` for unix sockets, ssh, TLS and
    /// loopback. The docker CLI allows it; backtrack does too, with this warning.
    pub fn plain_tcp_warning(&self, tls: bool) -> Option<String> {
        let Self::Tcp { host, .. } = self else {
            return None;
        };
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        (!tls && !loopback).then(|| {
            format!(
                "warning: {self} is plain HTTP: anyone on the network path can run containers as root on that \
                 host; reach it over ssh://, or with TLS (DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH)"
            )
        })
    }
}

impl fmt::Display for EngineAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix://{p}"),
            Self::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Self::Ssh(d) => write!(f, "{d}"),
        }
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port '{p}' is not a number from 1 to 65535"))
    };
    let (host, p) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("an IPv6 address misses its ']'")?;
        match after.strip_prefix(':') {
            Some(p) => (h.to_string(), Some(port(p)?)),
            None if after.is_empty() => (h.to_string(), None),
            None => return Err(format!("unexpected '{after}' after the address")),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(port(p)?)),
            None => (s.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    Ok((host, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_port_is_kept_apart_from_the_host() {
        let a = EngineAddress::parse("ssh://ubuntu@ec2-1.example.com:2222").unwrap();
        assert_eq!(
            a,
            EngineAddress::Ssh(SshDestination {
                user: Some("ubuntu".into()),
                host: "ec2-1.example.com".into(),
                port: Some(2222),
            })
        );
        assert_eq!(a.to_string(), "ssh://ubuntu@ec2-1.example.com:2222");
        let b = EngineAddress::parse("ssh://prod-web").unwrap();
        assert_eq!(
            b,
            EngineAddress::Ssh(SshDestination {
                user: None,
                host: "prod-web".into(),
                port: None,
            })
        );
        let v6 = EngineAddress::parse("ssh://root@[fd00::2]:22").unwrap();
        assert_eq!(v6.to_string(), "ssh://root@[fd00::2]:22");
    }

    #[test]
    fn unix_and_tcp_addresses() {
        assert_eq!(
            EngineAddress::parse("unix:///srv/h2.sock").unwrap(),
            EngineAddress::Unix("/srv/h2.sock".into())
        );
        assert_eq!(
            EngineAddress::parse("tcp://10.0.0.5").unwrap(),
            EngineAddress::Tcp {
                host: "10.0.0.5".into(),
                port: 2375
            }
        );
    }

    #[test]
    fn plain_tcp_off_this_machine_is_warned_about() {
        let warn = |a: &str, tls: bool| EngineAddress::parse(a).unwrap().plain_tcp_warning(tls);
        assert!(
            warn("tcp://10.0.0.5:2375", false)
                .unwrap()
                .contains("tcp://10.0.0.5:2375 is plain HTTP")
        );
        assert!(warn("tcp://docker.example.com", false).is_some());
        for (a, tls) in [
            ("tcp://10.0.0.5:2376", true),
            ("tcp://127.0.0.1:2375", false),
            ("tcp://localhost:2375", false),
            ("tcp://[::1]:2375", false),
            ("ssh://u@h", false),
            ("unix:///run/docker.sock", false),
        ] {
            assert_eq!(warn(a, tls), None, "{a}");
        }
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        for (a, want) in [
            ("ec2-1.example.com", "expected unix://"),
            ("ftp://x", "expected unix://"),
            ("ssh://u@h:99999", "port '99999'"),
            ("ssh://@h", "user before '@'"),
            ("ssh://u@h/path", "no path"),
            ("ssh://-oProxyCommand=x", "cannot start with '-'"),
            ("unix://relative.sock", "absolute"),
        ] {
            let e = EngineAddress::parse(a).unwrap_err().to_string();
            assert!(e.contains(want), "{a}: {e}");
        }
    }
}
