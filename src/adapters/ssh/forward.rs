//! Forwards over an [`SshSession`]'s master: the ones known ahead (`Ahead`: the engine socket the
//! host named last time, remembered in the cache folder, and configured probes), which the master
//! listens for from its login; the forward to the host's engine socket, asked once the session
//! has named it; and local TCP listeners for probes to the host's own loopback, each connection
//! forwarded by the master (or, when it will not, an `ssh -W` channel of its own).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use super::{SshSession, own_group};
use crate::domain::address::SshDestination;

/// Forwards known before connecting, which the master sets up as it logs in (no `ssh -O forward`
/// later): the engine socket the host named last time (a cache of the caller's), and the
/// `host:port` destinations of configured probes.
#[derive(Debug, Clone, Default)]
pub struct Ahead {
    pub engine_socket: Option<String>,
    pub probes: Vec<(String, u16)>,
}

/// A local listener forwarding to (host, port) as the remote host sees it, and its accept loop.
pub(super) type Forward = ((String, u16), std::net::SocketAddr, tokio::task::AbortHandle);

/// What a forward made ahead leads to.
#[derive(Debug, PartialEq)]
pub(super) enum Premade {
    Engine(String),
    Probe(String, u16),
}

impl SshSession {
    /// A local socket through which the master reaches the host's engine socket directly (a
    /// `direct-streamlocal` channel per connection: no process on either side), when the host's
    /// docker CLI would use a `unix://` socket and the master agrees to forward it; `None`
    /// otherwise (then `docker system dial-stdio` channels are the way). Blocking; asked once.
    pub fn engine_socket(&self) -> Option<PathBuf> {
        self.engine_socket
            .get_or_init(|| {
                let path = self.engine_path()?;
                if let Some(local) = self.premade_for(&Premade::Engine(path.to_string())) {
                    return Some(local);
                }
                let local = self.dir.path().join("engine-forwarded.sock");
                self.forward_by_master(&local, path).then_some(local)
            })
            .clone()
    }

    /// The path of the host's engine socket, when the session named a `unix://` one that can be
    /// forwarded: for the caller to remember (`Ahead::engine_socket`) for the next connection.
    pub fn engine_path(&self) -> Option<&str> {
        self.endpoint()?.strip_prefix("unix://").filter(|p| forwardable(p))
    }

    /// Whether the engine socket the host named was the one forwarded at login (`Ahead`), so
    /// there is nothing new to remember.
    pub fn engine_known_ahead(&self) -> bool {
        self.engine_path()
            .is_some_and(|p| self.premade_for(&Premade::Engine(p.to_string())).is_some())
    }

    /// The local end of the forward the master made at login to the engine socket the host
    /// named last time (`Ahead::engine_socket`), before the host has said whether it still uses
    /// it (`engine_known_ahead` says, once it has).
    pub fn premade_engine_socket(&self) -> Option<PathBuf> {
        self.premade.iter().find_map(|(p, local)| match p {
            Premade::Engine(_) => Some(local.clone()),
            Premade::Probe(..) => None,
        })
    }

    fn premade_for(&self, what: &Premade) -> Option<PathBuf> {
        self.premade
            .iter()
            .find(|(p, _)| p == what)
            .map(|(_, local)| local.clone())
    }

    /// Asks the master to listen on `local` and forward each connection to `to` as the host
    /// sees it (a socket path or `host:port`); whether it agreed.
    fn forward_by_master(&self, local: &std::path::Path, to: &str) -> bool {
        let mut cmd = std::process::Command::new("ssh");
        cmd.args(self.channel_args())
            .args(["-O", "forward", "-L"])
            .arg(format!("{}:{to}", local.display()))
            .arg("--")
            .arg(&self.dest.host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        own_group(cmd).status().is_ok_and(|s| s.success())
    }

    /// A local address whose connections are forwarded to `host:port` as the remote host sees
    /// it. One listener per destination, for the whole run. The master itself forwards them (it
    /// is asked once to listen on a socket in the session's private folder, so a connection
    /// costs one channel opened on the live connection); when it will not, each connection is an
    /// `ssh -W` channel of its own.
    pub async fn forward(self: &Arc<Self>, host: &str, port: u16) -> std::io::Result<std::net::SocketAddr> {
        let key = (host.to_string(), port);
        let mut forwards = self.forwards.lock().await;
        if let Some((_, addr, _)) = forwards.iter().find(|(k, _, _)| *k == key) {
            return Ok(*addr);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let target = tcp_target(host, port);
        let (socket, by_master) = match self.premade_for(&Premade::Probe(host.to_string(), port)) {
            Some(local) => (local, true),
            None => {
                let local = self.dir.path().join(format!("forward-{}", forwards.len()));
                let (session, to, at) = (self.clone(), target.clone(), local.clone());
                let agreed = tokio::task::spawn_blocking(move || session.forward_by_master(&at, &to))
                    .await
                    .unwrap_or(false);
                (local, agreed)
            }
        };
        let session = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut local, _)) = listener.accept().await else {
                    break;
                };
                if by_master {
                    session.wire.channel_opened();
                    let Ok(mut remote) = tokio::net::UnixStream::connect(&socket).await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
                    });
                    continue;
                }
                let Ok(mut child) = tokio::process::Command::new("ssh")
                    .process_group(0)
                    .args(session.channel_args())
                    .arg("-W")
                    .arg(&target)
                    .arg("--")
                    .arg(&session.dest.host)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                else {
                    continue;
                };
                tokio::spawn(async move {
                    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                        return;
                    };
                    let mut remote = tokio::io::join(stdout, stdin);
                    let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
                    drop(remote);
                    let _ = child.kill().await;
                });
            }
        });
        forwards.push((key, addr, task.abort_handle()));
        Ok(addr)
    }
}

/// The engine socket `dest` named last time, from the cache folder (see `Ahead`).
pub fn remembered_engine(cache_dir: &std::path::Path, dest: &SshDestination) -> Option<String> {
    let text = std::fs::read_to_string(engine_memo(cache_dir, dest)).ok()?;
    Some(text.trim().to_string()).filter(|p| forwardable(p))
}

/// Remembers the engine socket `dest` named, for the next connection; best effort (a cache).
pub fn remember_engine(cache_dir: &std::path::Path, dest: &SshDestination, path: &str) {
    let file = engine_memo(cache_dir, dest);
    if let Some(dir) = file.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        let tmp = file.with_extension("tmp");
        if std::fs::write(&tmp, path).is_ok() {
            let _ = std::fs::rename(&tmp, &file);
        }
    }
}

/// Whether `dest` was across a network last time (its quickest round trip at least
/// `wire::FAR`), so programs worth starting there (the swap's gate) can start with the login;
/// `None` when it was never measured.
pub fn remembered_far(cache_dir: &std::path::Path, dest: &SshDestination) -> Option<bool> {
    match std::fs::read_to_string(memo(cache_dir, "ssh-far", dest)).ok()?.trim() {
        "far" => Some(true),
        "near" => Some(false),
        _ => None,
    }
}

/// Remembers whether `dest` is across a network, for the next run; best effort (a cache).
pub fn remember_far(cache_dir: &std::path::Path, dest: &SshDestination, far: bool) {
    let file = memo(cache_dir, "ssh-far", dest);
    if let Some(dir) = file.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        let tmp = file.with_extension("tmp");
        if std::fs::write(&tmp, if far { "far" } else { "near" }).is_ok() {
            let _ = std::fs::rename(&tmp, &file);
        }
    }
}

fn engine_memo(cache_dir: &std::path::Path, dest: &SshDestination) -> PathBuf {
    memo(cache_dir, "ssh-engines", dest)
}

/// The file in `cache_dir/kind/` that remembers something of `dest`.
fn memo(cache_dir: &std::path::Path, kind: &str, dest: &SshDestination) -> PathBuf {
    let name: String = dest
        .to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    cache_dir.join(kind).join(name)
}

/// Whether ssh can forward to the socket `path` (its `-L` spec splits on `:`).
pub(super) fn forwardable(path: &str) -> bool {
    path.starts_with('/') && !path.contains(':')
}

/// `host:port` for ssh's forward specs, an IPv6 address in brackets.
pub(super) fn tcp_target(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::dest;
    use super::*;

    #[test]
    fn the_engine_socket_a_host_named_is_remembered_per_destination() {
        let cache = tempfile::tempdir().unwrap();
        let d = dest();
        assert_eq!(remembered_engine(cache.path(), &d), None);
        remember_engine(cache.path(), &d, "/run/user/1000/docker.sock");
        assert_eq!(
            remembered_engine(cache.path(), &d).as_deref(),
            Some("/run/user/1000/docker.sock")
        );
        let other = SshDestination {
            port: Some(22),
            ..dest()
        };
        assert_eq!(
            remembered_engine(cache.path(), &other),
            None,
            "another port is another host"
        );
        // What ssh could not forward is not offered again.
        std::fs::write(engine_memo(cache.path(), &d), "relative/docker.sock").unwrap();
        assert_eq!(remembered_engine(cache.path(), &d), None);
    }
}
