//! Where the engine is named and what goes with it: `--host`, `[target] host`, `DOCKER_HOST`
//! or the current docker context (found as the docker CLI finds it), each with the TLS folder
//! that goes with where it was named (the environment's `DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH`,
//! or the context's own), given only to `tcp://` engines; and how ssh is run for `ssh://` ones.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::domain::address::EngineAddress;

/// The folder of an engine's TLS files and where it was named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Holds `ca.pem`, `cert.pem` and `key.pem`.
    pub dir: PathBuf,
    /// For messages: `DOCKER_CERT_PATH`, `~/.docker (DOCKER_CERT_PATH unset)`, `docker context 'prod'`.
    pub source: String,
}

impl TlsFiles {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
}

/// How to run ssh: an ssh_config of the user's choosing (`ssh -F`) and how long reaching the host
/// may take.
#[derive(Debug, Clone)]
pub struct SshOptions {
    pub config: Option<PathBuf>,
    pub connect_timeout: Duration,
}

/// Where the engine may be named besides `[target] host` (see `pick` for the order).
#[derive(Debug, Clone)]
pub struct EngineHosts {
    pub flag: Option<String>,
    /// `--hosts a,b`: the hosts of a fleet this run acts on.
    pub only: Option<Vec<String>>,
    pub docker_host: Option<String>,
    /// The TLS the environment asks for `tcp://` engines named outside a docker context
    /// (`DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`), or why it cannot be had.
    pub env_tls: Result<Option<TlsFiles>, String>,
    /// The current docker context's engine (`DOCKER_CONTEXT`, else `currentContext` of the
    /// docker config), or why it could not be read.
    pub context: Result<Option<ContextEngine>, String>,
}

/// The engine of a docker context: its address and its TLS (the context's own TLS folder, when
/// it has one), or why that TLS cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextEngine {
    pub host: String,
    pub tls: Result<Option<TlsFiles>, String>,
}

impl EngineHosts {
    /// `--host`, then `[target] host`, then `DOCKER_HOST`, then the docker context; with the TLS
    /// that goes with where it was named (the environment's, or the context's own), as the
    /// docker CLI pairs them.
    fn pick(&self, configured: Option<&str>) -> Result<Option<ContextEngine>, String> {
        if let Some(h) = self.flag.as_deref().or(configured).or(self.docker_host.as_deref()) {
            return Ok(Some(ContextEngine {
                host: h.to_string(),
                tls: self.env_tls.clone(),
            }));
        }
        self.context.clone()
    }
}

/// The TLS `docker` would use for a `tcp://` engine from its environment: `DOCKER_TLS_VERIFY`
/// (any non-empty value) with the files in `DOCKER_CERT_PATH`, default `~/.docker`. `DOCKER_TLS`
/// alone (TLS that does not check the engine's certificate) is refused: it is not built.
pub(super) fn env_tls(
    verify: bool,
    tls: bool,
    cert_path: Option<PathBuf>,
    home: &Path,
) -> Result<Option<TlsFiles>, String> {
    if !verify {
        if tls {
            return Err(
                "DOCKER_TLS is set without DOCKER_TLS_VERIFY: TLS that does not check the engine's \
                        certificate is not supported; set DOCKER_TLS_VERIFY=1 and put the engine's CA in \
                        DOCKER_CERT_PATH/ca.pem"
                    .into(),
            );
        }
        return Ok(None);
    }
    Ok(Some(match cert_path {
        Some(dir) => TlsFiles {
            dir,
            source: "DOCKER_CERT_PATH".into(),
        },
        None => TlsFiles {
            dir: home.join(".docker"),
            source: "~/.docker (DOCKER_TLS_VERIFY is set, DOCKER_CERT_PATH is not)".into(),
        },
    }))
}

/// The engine address of the current docker context, as the docker CLI finds it: the context
/// named by `DOCKER_CONTEXT`, else `currentContext` in `config.json`; `default` (or none) is the
/// local socket. A context's metadata is `contexts/meta/<sha256 of its name>/meta.json`.
///
/// Its TLS files, when it has any, are in `contexts/tls/<same hash>/docker/` (`ca.pem`,
/// `cert.pem`, `key.pem`); a context that skips verifying the engine's certificate is refused for
/// a `tcp://` engine.
pub fn docker_context_host(docker_config: &Path, env_context: Option<String>) -> Result<Option<ContextEngine>, String> {
    use sha2::Digest as _;
    let name = match env_context {
        Some(n) => n,
        None => {
            let Ok(text) = std::fs::read(docker_config.join("config.json")) else {
                return Ok(None);
            };
            let v: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| format!("read {}: {e}", docker_config.join("config.json").display()))?;
            match v.get("currentContext").and_then(|c| c.as_str()) {
                Some(n) if !n.is_empty() => n.to_string(),
                _ => return Ok(None),
            }
        }
    };
    if name == "default" {
        return Ok(None);
    }
    let hash = sha2::Sha256::digest(name.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let meta = docker_config.join("contexts/meta").join(&hash).join("meta.json");
    let text = std::fs::read(&meta).map_err(|_| {
        format!(
            "find docker context '{name}' (no {}); see `docker context ls`",
            meta.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| format!("read {}: {e}", meta.display()))?;
    let Some(host) = v
        .pointer("/Endpoints/docker/Host")
        .and_then(|h| h.as_str())
        .filter(|h| !h.is_empty())
    else {
        return Ok(None);
    };
    let tls_dir = docker_config.join("contexts/tls").join(&hash).join("docker");
    let has_tls = ["ca.pem", "cert.pem", "key.pem"]
        .iter()
        .any(|f| tls_dir.join(f).exists());
    let skip = v
        .pointer("/Endpoints/docker/SkipTLSVerify")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let tls = if skip {
        Err(format!(
            "docker context '{name}' skips verifying the engine's TLS certificate, which backtrack does not do; \
             give the context the engine's CA (`docker context update {name} --docker \"host={host},ca=…,cert=…,key=…\"`)"
        ))
    } else if has_tls {
        Ok(Some(TlsFiles {
            dir: tls_dir,
            source: format!("docker context '{name}'"),
        }))
    } else {
        Ok(None)
    };
    Ok(Some(ContextEngine {
        host: host.to_string(),
        tls,
    }))
}

/// The engine of a single-host target, as written and parsed, with its TLS.
pub(super) struct Picked {
    pub host: Option<String>,
    pub engine: Option<EngineAddress>,
    pub tls: Option<TlsFiles>,
}

/// The engine of a single-host target: `single` (the one host of a fleet's list, with the
/// environment's TLS), else the first of the places `EngineHosts::pick` looks; TLS only for a
/// `tcp://` engine.
pub(super) fn resolve(hosts: &EngineHosts, single: Option<&str>, configured: Option<&str>) -> Result<Picked, String> {
    let picked = match single {
        Some(one) => Some(ContextEngine {
            host: one.to_string(),
            tls: hosts.env_tls.clone(),
        }),
        None => hosts.pick(configured)?,
    };
    let host = picked.as_ref().map(|p| p.host.clone());
    let engine = host
        .as_deref()
        .map(EngineAddress::parse)
        .transpose()
        .map_err(|e| e.to_string())?;
    // TLS is for `tcp://` engines only (ssh:// and unix:// ignore it, as the docker CLI does).
    let tls = match (&engine, picked) {
        (Some(EngineAddress::Tcp { .. }), Some(p)) => p.tls?,
        _ => None,
    };
    Ok(Picked { host, engine, tls })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_tls_is_docker_clis() {
        let home = Path::new("/home/me");
        assert_eq!(env_tls(false, false, Some("/c".into()), home), Ok(None));
        assert_eq!(
            env_tls(true, false, None, home).unwrap().unwrap().dir,
            home.join(".docker")
        );
        assert_eq!(
            env_tls(true, true, Some("/c".into()), home).unwrap().unwrap().dir,
            PathBuf::from("/c")
        );
        assert!(
            env_tls(false, true, None, home)
                .unwrap_err()
                .contains("DOCKER_TLS_VERIFY=1")
        );
    }

    #[test]
    fn docker_context_is_found_as_the_docker_cli_finds_it() {
        use sha2::Digest as _;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(docker_context_host(dir.path(), None), Ok(None));
        std::fs::write(dir.path().join("config.json"), r#"{"currentContext":"ec2"}"#).unwrap();
        let err = docker_context_host(dir.path(), None).unwrap_err();
        assert!(err.contains("find docker context 'ec2'"), "{err}");
        let hash_of = |name: &str| -> String {
            sha2::Sha256::digest(name.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        let meta = dir.path().join("contexts/meta").join(hash_of("ec2"));
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(
            meta.join("meta.json"),
            r#"{"Name":"ec2","Endpoints":{"docker":{"Host":"ssh://ubuntu@ec2-1","SkipTLSVerify":false}}}"#,
        )
        .unwrap();
        assert_eq!(
            docker_context_host(dir.path(), None),
            Ok(Some(ContextEngine {
                host: "ssh://ubuntu@ec2-1".into(),
                tls: Ok(None)
            }))
        );
        // DOCKER_CONTEXT wins over config.json; "default" is the local socket.
        assert_eq!(docker_context_host(dir.path(), Some("default".into())), Ok(None));
        // A context's TLS files are in contexts/tls/<hash>/docker.
        let tls = dir.path().join("contexts/tls").join(hash_of("ec2")).join("docker");
        std::fs::create_dir_all(&tls).unwrap();
        std::fs::write(tls.join("ca.pem"), "x").unwrap();
        let found = docker_context_host(dir.path(), None).unwrap().unwrap();
        assert_eq!(found.tls.unwrap().unwrap().dir, tls);
        std::fs::write(
            meta.join("meta.json"),
            r#"{"Name":"ec2","Endpoints":{"docker":{"Host":"tcp://ec2-1:2376","SkipTLSVerify":true}}}"#,
        )
        .unwrap();
        let found = docker_context_host(dir.path(), None).unwrap().unwrap();
        assert!(found.tls.unwrap_err().contains("skips verifying"));
    }
}
