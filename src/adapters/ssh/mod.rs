//! One SSH connection to a remote host per run, through the system `ssh` client (so
//! `~/.ssh/config`, agents, ProxyJump and known_hosts work as they do for `docker -H ssh://…`).
//!
//! `SshSession::open` starts `ssh` as a ControlMaster on a socket in a private temporary folder,
//! with the caller's command (the state shell) as the connection's own session, and waits
//! (bounded) until it has logged in; everything else rides on that connection, with no further
//! handshake. The session starts in the same flight as the login and first says which engine the
//! docker CLI there would use (`PRELUDE`); the master then forwards that engine's socket, so each
//! Docker Engine API connection is one channel straight to it (pooled and kept alive), with
//! `docker system dial-stdio` channels as the way when it cannot (another kind of engine, a
//! context of the user's, or an sshd that refuses), and to explain a refusal. Health probes to
//! the host's own loopback go through forwards the master listens for, behind a local listener
//! (an `ssh -W` channel per connection if the master will not). **A channel never falls back to
//! a new connection**: when the master is gone, they fail, so nothing continues after the host's
//! lock was lost with it. **Every `ssh` runs in a process group of its own**: a Ctrl-C at the
//! terminal is backtrack's to handle, and it may still need the host to finish or revert a swap.
//! Closing waits for nothing on the host: the session's input closes and the master, left without
//! channels, exits by itself.
//!
//! Host keys are never accepted blindly (`StrictHostKeyChecking=yes`), and every failure to reach
//! the host is one typed error naming the host, with the fix.
//!
//! The code is split by concern: this file has the session type, its errors and options, the
//! channels any caller runs on it (`command`, `run_script`) and what every `ssh` shares (its
//! options, a process group of its own); `master` the ControlMaster process itself (open and log
//! in, the session's first line and its input and output, closing); `forward` the forwards
//! (made ahead at login or asked later, and the local listeners for probes); `transport` the
//! Engine API over the master (a forwarded socket or `dial-stdio` channels, pooled).

mod forward;
mod master;
mod transport;

use std::io::BufReader;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ChildStdin, ChildStdout, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use crate::adapters::wire::Wire;
use crate::domain::address::SshDestination;

pub use crate::settings::SshOptions;
pub use forward::{Ahead, remember_engine, remember_far, remembered_engine, remembered_far};
pub(crate) use transport::pooled;
pub use transport::{EngineResponse, RemoteChannel, socket_transport};

use forward::{Forward, Premade};
use transport::DialStream;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SshError {
    #[error("reach {host} over ssh: {detail}")]
    Unreachable { host: String, detail: String },
    #[error("log in to {host} over ssh: {detail}")]
    AuthRefused { host: String, detail: String },
    #[error("trust {host}: its host key is not in known_hosts ({detail})")]
    UnknownHostKey { host: String, port: u16, detail: String },
    #[error("trust {host}: its host key changed ({detail})")]
    ChangedHostKey { host: String, detail: String },
    #[error("run docker on {host}: {detail}")]
    NoDocker { host: String, detail: String },
    #[error("use the docker engine on {host}: permission denied on its socket ({detail})")]
    SocketPermission { host: String, user: String, detail: String },
    #[error("use the docker engine on {host}: {detail}")]
    EngineDown { host: String, detail: String },
    #[error("run {what} on {host}: {detail}")]
    Remote { host: String, what: String, detail: String },
    #[error("run ssh: {0}; install an OpenSSH client")]
    NoClient(String),
}

impl SshError {
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Self::Unreachable { .. } => {
                "check the host name and port, that sshd runs there, and that this machine may reach it \
                 (`ssh HOST true`); BACKTRACK_CONNECT_TIMEOUT sets how long to wait"
                    .into()
            }
            Self::AuthRefused { .. } => {
                "check the user in [target] host and that your key is offered (ssh-add, IdentityFile in \
                 ~/.ssh/config or BACKTRACK_SSH_CONFIG); backtrack never asks for a password"
                    .into()
            }
            Self::UnknownHostKey { host, port, .. } => format!(
                "backtrack never accepts a host key unseen: check the fingerprint of `ssh-keyscan -p {port} {host} \
                 | ssh-keygen -lf -` with the host's owner, then add it to known_hosts (or connect once with \
                 `ssh -p {port} {host}` and answer yes)"
            ),
            Self::ChangedHostKey { host, .. } => format!(
                "if the host was rebuilt on purpose, remove its old key with `ssh-keygen -R {host}` and add the \
                 new one; otherwise do not connect"
            ),
            Self::NoDocker { .. } => "install Docker Engine (with its docker CLI) on that host".into(),
            Self::SocketPermission { user, .. } => format!(
                "add {user} to the docker group on the host (`sudo usermod -aG docker {user}`, then log in \
                 again), or use a user that may use the engine"
            ),
            Self::EngineDown { .. } => "start the docker engine on that host (`sudo systemctl start docker`)".into(),
            Self::Remote { .. } | Self::NoClient(_) => return None,
        })
    }
}

/// A live ControlMaster connection to one host. Dropping it closes the connection.
pub struct SshSession {
    dest: SshDestination,
    options: SshOptions,
    control: PathBuf,
    /// Holds the control socket and the master's log; removed on drop.
    dir: tempfile::TempDir,
    /// What the last failing `docker system dial-stdio` said, to explain a refused engine.
    dial_error: Arc<Mutex<Option<String>>>,
    forwards: tokio::sync::Mutex<Vec<Forward>>,
    /// A `dial-stdio` channel opened ahead of need once that way to the engine is used: the next
    /// Engine API connection (a request made while another runs) takes it instead of waiting for
    /// the docker CLI to start on the host.
    spare: Mutex<Option<DialStream>>,
    /// The master `ssh`: our child, in a process group of its own (a Ctrl-C at the terminal is
    /// for backtrack, which may still need the host to finish or revert a swap).
    master: Mutex<Option<std::process::Child>>,
    /// The input and output of the master's own session, until taken.
    session_in: Mutex<Option<ChildStdin>>,
    session_out: Mutex<Option<BufReader<ChildStdout>>>,
    /// What the session's first line said about the host's engine (see `PRELUDE`).
    endpoint: OnceLock<Option<String>>,
    /// The local end of a forward to the host's engine socket, once asked for.
    engine_socket: OnceLock<Option<PathBuf>>,
    /// Forwards the master made as it logged in (`Ahead`), and their local ends.
    premade: Vec<(Premade, PathBuf)>,
    /// The round trips waited on this host, by phase (`--verbose`).
    wire: Arc<Wire>,
    /// The target folder whose lock the session took as it started (`state::remote::
    /// shell_command_locking`): its first answer is that lock's.
    locked_ahead: OnceLock<String>,
}

impl std::fmt::Debug for SshSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SshSession({})", self.dest)
    }
}

impl SshSession {
    pub fn destination(&self) -> &SshDestination {
        &self.dest
    }

    /// The session was started taking the lock of the target in `relative`.
    pub fn set_locked_ahead(&self, relative: &str) {
        let _ = self.locked_ahead.set(relative.to_string());
    }

    /// The target folder whose lock the session took as it started, if any.
    pub fn locked_ahead(&self) -> Option<&str> {
        self.locked_ahead.get().map(String::as_str)
    }

    /// The round trips this run waited on the host, by phase.
    pub fn wire(&self) -> &Arc<Wire> {
        &self.wire
    }

    /// A channel on the master running `remote` (a command line for the remote user's shell).
    pub fn command(&self, remote: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("ssh");
        cmd.args(self.channel_args()).arg("--").arg(&self.dest.host).arg(remote);
        own_group(cmd)
    }

    fn channel_args(&self) -> Vec<String> {
        let mut args = base_args(&self.dest, &self.options);
        args.extend([
            "-S".into(),
            self.control.display().to_string(),
            "-o".into(),
            "ControlMaster=no".into(),
            // With the master gone, fail instead of connecting again (see the module doc).
            "-o".into(),
            "ProxyCommand=false".into(),
        ]);
        args
    }

    /// Runs `script` with `sh -c` on the host, `args` as its `$1…`, `stdin` as its input; returns
    /// its stdout. A non-zero exit is an error carrying its stderr.
    pub fn run_script(&self, what: &str, script: &str, args: &[&str], stdin: &[u8]) -> Result<Vec<u8>, SshError> {
        use std::io::Write;
        let mut line = format!("sh -c {} sh", shell_quote(script));
        for a in args {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        let fail = |detail: String| SshError::Remote {
            host: self.dest.to_string(),
            what: what.to_string(),
            detail,
        };
        let mut child = self
            .command(&line)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| SshError::NoClient(e.to_string()))?;
        if let Some(mut i) = child.stdin.take() {
            i.write_all(stdin).map_err(|e| fail(format!("send input: {e}")))?;
        }
        let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            Err(fail(if err.is_empty() {
                format!("exit status {}", out.status.code().unwrap_or(-1))
            } else {
                err
            }))
        }
    }
}

/// `cmd` in a process group of its own, so a Ctrl-C at the terminal reaches backtrack only: it
/// may still need the connection to finish or put back what it started on the host.
fn own_group(mut cmd: std::process::Command) -> std::process::Command {
    cmd.process_group(0);
    cmd
}

/// Options shared by the master and every channel: the user's config file, the user and port
/// of the address (given to ssh as `-l` and `-p`, never glued to the host), no prompts, and no
/// host key accepted unseen.
fn base_args(dest: &SshDestination, options: &SshOptions) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(c) = &options.config {
        args.extend(["-F".into(), c.display().to_string()]);
    }
    if let Some(u) = &dest.user {
        args.extend(["-l".into(), u.clone()]);
    }
    if let Some(p) = dest.port {
        args.extend(["-p".into(), p.to_string()]);
    }
    args.extend(
        [
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-T",
            "-x",
            "-a",
        ]
        .into_iter()
        .map(String::from),
    );
    args
}

fn last_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A destination with a user and a port, for the tests of every part of the session.
    pub(super) fn dest() -> SshDestination {
        SshDestination {
            user: Some("ubuntu".into()),
            host: "ec2-1.example.com".into(),
            port: Some(2222),
        }
    }

    #[test]
    fn port_and_user_go_to_ssh_as_options_not_in_the_host_name() {
        let args = base_args(
            &dest(),
            &SshOptions {
                config: Some("/tmp/cfg".into()),
                connect_timeout: Duration::from_secs(3),
            },
        );
        let joined = args.join(" ");
        assert!(joined.contains("-F /tmp/cfg"), "{joined}");
        assert!(joined.contains("-l ubuntu"), "{joined}");
        assert!(joined.contains("-p 2222"), "{joined}");
        assert!(joined.contains("StrictHostKeyChecking=yes"), "{joined}");
        assert!(joined.contains("BatchMode=yes"), "{joined}");
        assert!(!joined.contains("ec2-1.example.com:2222"), "{joined}");
    }

    #[test]
    fn shell_quote_survives_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
