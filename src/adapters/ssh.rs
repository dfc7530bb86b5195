//! One SSH connection to a remote host per run, through the system `ssh` client (so
//! `~/.ssh/config`, agents, ProxyJump and known_hosts work as they do for `docker -H ssh://…`).
//!
//! `SshSession::open` starts `ssh` as a ControlMaster on a socket in a private temporary folder
//! and waits (bounded) until it authenticated; everything else rides on that connection as
//! multiplexed channels, with no further handshake: the Docker Engine API (each HTTP connection
//! is a `docker system dial-stdio` channel, pooled and kept alive; the first is opened as soon as
//! the connection is up, so the docker CLI starts on the host while the lock is taken), health
//! probes to the host's
//! own loopback (`ssh -W` channels behind a local listener), and short remote commands for the
//! target's state (journal, lock). **A channel never falls back to a new connection**: when the
//! master is gone, they fail, so nothing continues after the host's lock was lost with it.
//!
//! Host keys are never accepted blindly (`StrictHostKeyChecking=yes`), and every failure to reach
//! the host is one typed error naming the host, with the fix.

use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::domain::address::SshDestination;

/// How to run ssh: an ssh_config of the user's choosing (`ssh -F`) and how long reaching the host
/// may take.
#[derive(Debug, Clone)]
pub struct SshOptions {
    pub config: Option<PathBuf>,
    pub connect_timeout: Duration,
}

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

/// A local listener forwarding to (host, port) as the remote host sees it, and its accept loop.
type Forward = ((String, u16), std::net::SocketAddr, tokio::task::AbortHandle);

/// An Engine API response coming back over a `dial-stdio` channel.
pub type EngineResponse = Pin<
    Box<
        dyn std::future::Future<Output = Result<hyper::Response<hyper::body::Incoming>, bollard::errors::Error>> + Send,
    >,
>;

/// A live ControlMaster connection to one host. Dropping it closes the connection.
pub struct SshSession {
    dest: SshDestination,
    options: SshOptions,
    control: PathBuf,
    /// Holds the control socket and the master's log; removed on drop.
    _dir: tempfile::TempDir,
    /// What the last failing `docker system dial-stdio` said, to explain a refused engine.
    dial_error: Arc<Mutex<Option<String>>>,
    forwards: Mutex<Vec<Forward>>,
    /// A `dial-stdio` channel opened ahead of need, when the connection was made: the first
    /// Engine API connection takes it instead of waiting for the docker CLI to start on the host
    /// (it starts while the state shell takes the lock).
    spare: Mutex<Option<DialStream>>,
}

impl std::fmt::Debug for SshSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SshSession({})", self.dest)
    }
}

impl SshSession {
    /// Connects and authenticates, within the connect timeout. Blocking (it runs once per run,
    /// before anything else can happen).
    pub fn open(dest: &SshDestination, options: &SshOptions) -> Result<Self, SshError> {
        let dir = tempfile::Builder::new()
            .prefix("backtrack-ssh-")
            .tempdir_in(std::env::temp_dir())
            .map_err(|e| SshError::NoClient(format!("make a folder for the control socket: {e}")))?;
        let control = dir.path().join("c");
        let log_path = dir.path().join("master.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| SshError::NoClient(format!("create {}: {e}", log_path.display())))?;
        let secs = options.connect_timeout.as_secs().max(1);
        let mut cmd = std::process::Command::new("ssh");
        cmd.args(base_args(dest, options))
            .arg("-S")
            .arg(&control)
            .args(["-M", "-N", "-f"])
            .args(["-o", "ControlPersist=60"])
            .arg("-o")
            .arg(format!("ConnectTimeout={secs}"))
            .args(["-o", "ServerAliveInterval=3", "-o", "ServerAliveCountMax=3"])
            .arg("--")
            .arg(&dest.host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = cmd.spawn().map_err(|e| SshError::NoClient(e.to_string()))?;
        // `-f`: ssh goes to the background once authenticated; the foreground process exits 0.
        let deadline = Instant::now() + options.connect_timeout + Duration::from_millis(500);
        let status = loop {
            if let Some(s) = child.try_wait().map_err(|e| SshError::NoClient(e.to_string()))? {
                break Some(s);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let said = std::fs::read_to_string(&log_path).unwrap_or_default();
        let session = Self {
            dest: dest.clone(),
            options: options.clone(),
            control,
            _dir: dir,
            dial_error: Arc::default(),
            forwards: Mutex::default(),
            spare: Mutex::default(),
        };
        match status {
            Some(s) if s.success() && session.control.exists() => {
                // Only inside the runtime (tokio's process support needs it).
                if tokio::runtime::Handle::try_current().is_ok() {
                    *session.spare.lock().expect("spare") = session.spawn_dial().ok();
                }
                Ok(session)
            }
            Some(_) => Err(classify_connect(dest, &said)),
            None => Err(SshError::Unreachable {
                host: dest.to_string(),
                detail: format!("no answer within {}s", options.connect_timeout.as_secs_f32()),
            }),
        }
    }

    pub fn destination(&self) -> &SshDestination {
        &self.dest
    }

    /// A channel on the master running `remote` (a command line for the remote user's shell).
    pub fn command(&self, remote: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("ssh");
        cmd.args(self.channel_args()).arg("--").arg(&self.dest.host).arg(remote);
        cmd
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

    /// The Engine API of the host as a bollard transport: each HTTP connection is a
    /// `docker system dial-stdio` channel; connections are pooled and reused.
    pub fn docker_transport(
        self: &Arc<Self>,
    ) -> impl Fn(bollard::BollardRequest) -> EngineResponse + Send + Sync + 'static {
        let connector = DialStdio { session: self.clone() };
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        move |req: bollard::BollardRequest| -> EngineResponse {
            let client = client.clone();
            Box::pin(async move { client.request(req).await.map_err(bollard::errors::Error::from) })
        }
    }

    /// What a refused engine connection said on the host, as a typed error when it is one of the
    /// known causes (no docker, no permission, engine down).
    pub fn engine_failure(&self) -> Option<SshError> {
        let said = self.dial_error.lock().ok()?.clone()?;
        let host = self.dest.to_string();
        let low = said.to_ascii_lowercase();
        Some(if low.contains("not found") && low.contains("docker") {
            SshError::NoDocker {
                host,
                detail: last_line(&said),
            }
        } else if low.contains("permission denied") {
            SshError::SocketPermission {
                host,
                user: self.dest.user.clone().unwrap_or_else(|| "your user".into()),
                detail: "the docker CLI said: permission denied".into(),
            }
        } else if low.contains("cannot connect to the docker daemon") || low.contains("no such file") {
            SshError::EngineDown {
                host,
                detail: last_line(&said),
            }
        } else {
            SshError::Remote {
                host,
                what: "docker system dial-stdio".into(),
                detail: last_line(&said),
            }
        })
    }

    /// A local address whose connections are forwarded to `host:port` as the remote host sees
    /// it (an `ssh -W` channel per connection). One listener per destination, for the whole run.
    pub async fn forward(self: &Arc<Self>, host: &str, port: u16) -> std::io::Result<std::net::SocketAddr> {
        let key = (host.to_string(), port);
        if let Some((_, addr, _)) = self
            .forwards
            .lock()
            .expect("forwards")
            .iter()
            .find(|(k, _, _)| *k == key)
        {
            return Ok(*addr);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let session = self.clone();
        let target = format!("{host}:{port}");
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut local, _)) = listener.accept().await else {
                    break;
                };
                let Ok(mut child) = tokio::process::Command::new("ssh")
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
        self.forwards
            .lock()
            .expect("forwards")
            .push((key, addr, task.abort_handle()));
        Ok(addr)
    }
}

impl Drop for SshSession {
    fn drop(&mut self) {
        for (_, _, task) in self
            .forwards
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default()
        {
            task.abort();
        }
        // Close the master now (it would also go by itself 60 s after its last channel).
        let _ = std::process::Command::new("ssh")
            .args(base_args(&self.dest, &self.options))
            .arg("-S")
            .arg(&self.control)
            .args(["-O", "exit", "--"])
            .arg(&self.dest.host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
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

/// Turns what `ssh` said when the connection failed into the error a person can act on.
fn classify_connect(dest: &SshDestination, said: &str) -> SshError {
    let host = dest.to_string();
    let detail = said
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with('@') && !l.starts_with("Warning: Permanently"))
        .unwrap_or("ssh exited without saying why")
        .to_string();
    if said.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        SshError::ChangedHostKey { host, detail }
    } else if said.contains("Host key verification failed") || said.contains("host key is known") {
        SshError::UnknownHostKey {
            host: dest.host.clone(),
            port: dest.port.unwrap_or(22),
            detail,
        }
    } else if said.contains("Permission denied") || said.contains("Too many authentication failures") {
        SshError::AuthRefused { host, detail }
    } else {
        SshError::Unreachable { host, detail }
    }
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

/// The connector behind `docker_transport`: a new channel running `docker system dial-stdio`.
#[derive(Clone)]
struct DialStdio {
    session: Arc<SshSession>,
}

impl tower_service::Service<hyper::Uri> for DialStdio {
    type Response = hyper_util::rt::TokioIo<DialStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let session = self.session.clone();
        Box::pin(async move {
            // The spare, unless its channel already ended (then a new one says why).
            let ready = session
                .spare
                .lock()
                .ok()
                .and_then(|mut s| s.take())
                .and_then(|mut s| s.alive().then_some(s));
            let stream = match ready {
                Some(s) => s,
                None => session.spawn_dial()?,
            };
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

impl SshSession {
    /// A new channel running `docker system dial-stdio` on the host; what it says on stderr is
    /// kept (it explains a refused engine).
    fn spawn_dial(&self) -> std::io::Result<DialStream> {
        let mut child = tokio::process::Command::new("ssh")
            .args(self.channel_args())
            .arg("--")
            .arg(&self.dest.host)
            .arg("docker system dial-stdio")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(std::io::Error::other("ssh gave no pipes"));
        };
        let slot = self.dial_error.clone();
        tokio::spawn(async move {
            let mut text = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut text).await;
            let text = String::from_utf8_lossy(&text).trim().to_string();
            if !text.is_empty()
                && let Ok(mut s) = slot.lock()
            {
                *s = Some(text);
            }
        });
        Ok(DialStream {
            _child: child,
            stdin,
            stdout,
        })
    }
}

/// One `dial-stdio` channel as a byte stream: its stdout is read, its stdin written.
struct DialStream {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
}

impl DialStream {
    fn alive(&mut self) -> bool {
        matches!(self._child.try_wait(), Ok(None))
    }
}

impl Connection for DialStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for DialStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdout).poll_read(cx, buf)
    }
}

impl AsyncWrite for DialStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stdin).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdin).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdin).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest() -> SshDestination {
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
    fn connect_failures_are_told_apart() {
        let d = dest();
        let cases = [
            (
                "No ED25519 host key is known for [ec2-1.example.com]:2222 and you have requested strict checking.\r\nHost key verification failed.\r\n",
                "UnknownHostKey",
            ),
            (
                "@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.\n",
                "ChangedHostKey",
            ),
            (
                "ubuntu@ec2-1.example.com: Permission denied (publickey).\n",
                "AuthRefused",
            ),
            (
                "ssh: connect to host ec2-1.example.com port 2222: Connection refused\n",
                "Unreachable",
            ),
            (
                "ssh: Could not resolve hostname nowhere: Name or service not known\n",
                "Unreachable",
            ),
        ];
        for (said, want) in cases {
            let e = classify_connect(&d, said);
            let got = format!("{e:?}");
            assert!(got.starts_with(want), "{said:?} -> {got}");
            assert!(e.hint().is_some(), "{got}");
        }
        let e = classify_connect(&d, "Host key verification failed.\n");
        assert!(
            e.hint().unwrap().contains("ssh-keyscan -p 2222 ec2-1.example.com"),
            "{:?}",
            e.hint()
        );
    }

    #[test]
    fn shell_quote_survives_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
