//! Registry credentials from the Docker client's config (`$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json`): `auths` entries and credential helpers, as `docker login` leaves
//! them. No entry means anonymous access.

use std::ffi::OsStr;

use oci_client::secrets::RegistryAuth;

/// The docker config file credentials are read from, as a person would name it: with
/// `$DOCKER_CONFIG` set, `$DOCKER_CONFIG/config.json` and where that is; else
/// `~/.docker/config.json` (as the docker CLI and `docker login` use it).
pub fn config_file() -> String {
    describe_config_file(std::env::var_os("DOCKER_CONFIG").as_deref())
}

fn describe_config_file(docker_config: Option<&OsStr>) -> String {
    match docker_config.filter(|d| !d.is_empty()) {
        Some(dir) => format!(
            "$DOCKER_CONFIG/config.json, here {}",
            std::path::Path::new(dir).join("config.json").display()
        ),
        None => "~/.docker/config.json".into(),
    }
}

/// Looks up credentials for `host` (blocking work moved off the async runtime: helpers are
/// external programs).
pub async fn for_host(host: &str) -> RegistryAuth {
    let host = host.to_string();
    tokio::task::spawn_blocking(move || lookup(&host))
        .await
        .unwrap_or(RegistryAuth::Anonymous)
}

fn lookup(host: &str) -> RegistryAuth {
    match docker_credential::get_credential(host) {
        Ok(docker_credential::DockerCredential::UsernamePassword(user, pass)) => RegistryAuth::Basic(user, pass),
        Ok(docker_credential::DockerCredential::IdentityToken(_)) => {
            tracing::warn!(
                "identity tokens in the docker config are not supported for {host}; trying anonymous access"
            );
            RegistryAuth::Anonymous
        }
        Err(e) => {
            tracing::debug!("no docker credentials for {host}: {e}");
            RegistryAuth::Anonymous
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_hint_names_docker_config_when_it_is_set() {
        assert_eq!(describe_config_file(None), "~/.docker/config.json");
        assert_eq!(describe_config_file(Some(OsStr::new(""))), "~/.docker/config.json");
        assert_eq!(
            describe_config_file(Some(OsStr::new("/srv/ci/docker"))),
            "$DOCKER_CONFIG/config.json, here /srv/ci/docker/config.json"
        );
    }
}
