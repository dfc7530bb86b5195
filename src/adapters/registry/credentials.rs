//! Registry credentials from the Docker client's config (`$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json`): `auths` entries and credential helpers, as `docker login` leaves
//! them. No entry means anonymous access.

use oci_client::secrets::RegistryAuth;

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
