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

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ChildStdin, ChildStdout, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
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

/// Forwards known before connecting, which the master sets up as it logs in (no `ssh -O forward`
/// later): the engine socket the host named last time (a cache of the caller's), and the
/// `host:port` destinations of configured probes.
#[derive(Debug, Clone, Default)]
pub struct Ahead {
    pub engine_socket: Option<String>,
    pub probes: Vec<(String, u16)>,
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
}

/// What a forward made ahead leads to.
#[derive(Debug, PartialEq)]
enum Premade {
    Engine(String),
    Probe(String, u16),
}

/// Runs first in the connection's own session, before the caller's command: one line naming the
/// engine the docker CLI would use there, read from what it reads (`DOCKER_HOST`, then
/// `DOCKER_CONTEXT`, then the config's current context, then the default socket) without
/// starting it; empty when a context of the user's choosing decides (then only the docker CLI
/// itself can say).
const PRELUDE: &str = r#"e=unix:///var/run/docker.sock
if [ -n "${DOCKER_HOST+set}" ]; then e=${DOCKER_HOST:-$e}
elif [ -n "${DOCKER_CONTEXT+set}" ]; then [ "$DOCKER_CONTEXT" = default ] || e=
else
  c="${DOCKER_CONFIG:-$HOME/.docker}/config.json"
  if [ -f "$c" ]; then
    while IFS= read -r l || [ -n "$l" ]; do
      case "$l" in *'"currentContext"'*)
        case "$l" in *'"currentContext": "default"'*|*'"currentContext":"default"'*) ;; *) e= ;; esac ;;
      esac
    done < "$c"
  fi
fi
echo "ENGINE $e"
eval "exec $1""#;

impl std::fmt::Debug for SshSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SshSession({})", self.dest)
    }
}

impl SshSession {
    /// Connects and authenticates, within the connect timeout, with `session` (a command line
    /// for the remote user's shell) as the connection's own session: it starts in the same
    /// flight as the login, so it is running on the host as soon as the connection is up, and
    /// its input and output are handed out once (`take_session_input`, `take_session_output`). Blocking (it runs once per
    /// run, before anything else can happen).
    pub fn open(
        dest: &SshDestination,
        options: &SshOptions,
        session: &str,
        ahead: &Ahead,
    ) -> Result<Arc<Self>, SshError> {
        let dir = tempfile::Builder::new()
            .prefix("backtrack-ssh-")
            .tempdir_in(std::env::temp_dir())
            .map_err(|e| SshError::NoClient(format!("make a folder for the control socket: {e}")))?;
        let control = dir.path().join("c");
        let log_path = dir.path().join("master.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| SshError::NoClient(format!("create {}: {e}", log_path.display())))?;
        let secs = options.connect_timeout.as_secs().max(1);
        // Forwards known ahead: the master listens for them from the start.
        let mut premade = Vec::new();
        let mut listen = Vec::new();
        if let Some(path) = ahead.engine_socket.as_deref().filter(|p| forwardable(p)) {
            let local = dir.path().join("engine.sock");
            listen.push(format!("{}:{path}", local.display()));
            premade.push((Premade::Engine(path.to_string()), local));
        }
        for (i, (host, port)) in ahead.probes.iter().enumerate() {
            let local = dir.path().join(format!("probe-{i}.sock"));
            listen.push(format!("{}:{}", local.display(), tcp_target(host, *port)));
            premade.push((Premade::Probe(host.clone(), *port), local));
        }
        let mut cmd = std::process::Command::new("ssh");
        cmd.args(base_args(dest, options))
            .arg("-S")
            .arg(&control)
            .args(["-M", "-o", "ControlPersist=no"])
            .args(listen.iter().flat_map(|l| ["-L", l.as_str()]))
            .arg("-o")
            .arg(format!("ConnectTimeout={secs}"))
            .args(["-o", "ServerAliveInterval=3", "-o", "ServerAliveCountMax=3"])
            .arg("--")
            .arg(&dest.host)
            .arg(session_line(session))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut master = own_group(cmd).spawn().map_err(|e| SshError::NoClient(e.to_string()))?;
        // The master listens on its control socket once it has logged in (it appears whole:
        // ssh links it into place after `listen`); an ssh that exits first failed.
        let deadline = Instant::now() + options.connect_timeout + Duration::from_millis(500);
        let failed = loop {
            if control.exists() {
                break None;
            }
            if let Some(s) = master.try_wait().map_err(|e| SshError::NoClient(e.to_string()))? {
                break Some(Some(s));
            }
            if Instant::now() >= deadline {
                let _ = master.kill();
                let _ = master.wait();
                break Some(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if let Some(exited) = failed {
            return Err(match exited {
                Some(_) => classify_connect(dest, &std::fs::read_to_string(&log_path).unwrap_or_default()),
                None => SshError::Unreachable {
                    host: dest.to_string(),
                    detail: format!("no answer within {}s", options.connect_timeout.as_secs_f32()),
                },
            });
        }
        let (input, output) = (
            master.stdin.take().expect("piped stdin"),
            BufReader::new(master.stdout.take().expect("piped stdout")),
        );
        let session = Arc::new(Self {
            dest: dest.clone(),
            options: options.clone(),
            control,
            dir,
            dial_error: Arc::default(),
            forwards: tokio::sync::Mutex::default(),
            spare: Mutex::default(),
            master: Mutex::new(Some(master)),
            session_in: Mutex::new(Some(input)),
            session_out: Mutex::new(Some(output)),
            endpoint: OnceLock::new(),
            engine_socket: OnceLock::new(),
            premade,
        });
        // The way to the engine is readied while the caller goes on (it takes the session's
        // first line and one `ssh -O forward`).
        let ready = session.clone();
        std::thread::spawn(move || {
            ready.engine_socket();
        });
        Ok(session)
    }

    /// The input of the connection's own session (the command given to `open`), once: `None`
    /// when it was taken before. Closing it ends that command.
    pub fn take_session_input(&self) -> Option<ChildStdin> {
        self.session_in.lock().ok()?.take()
    }

    /// The output of the connection's own session, once, past its first line (which names the
    /// engine; see `PRELUDE`): it blocks until that line has come.
    pub fn take_session_output(&self) -> Option<BufReader<ChildStdout>> {
        let mut out = self.session_out.lock().ok()?;
        if let Some(o) = out.as_mut() {
            self.read_endpoint(o);
        }
        out.take()
    }

    /// The engine the docker CLI on the host would use, as the session's first line said it:
    /// `Some("unix:///…")` and the like, `None` when it could not tell (a context of the user's
    /// choosing) or the session ended. Blocks until that line has come (the session starts
    /// with the connection).
    fn endpoint(&self) -> Option<&str> {
        if self.endpoint.get().is_none()
            && let Ok(mut out) = self.session_out.lock()
            && let Some(o) = out.as_mut()
        {
            self.read_endpoint(o);
        }
        self.endpoint.get().and_then(Option::as_deref)
    }

    fn read_endpoint(&self, out: &mut BufReader<ChildStdout>) {
        self.endpoint.get_or_init(|| {
            let mut line = String::new();
            out.read_line(&mut line).ok()?;
            let e = line.strip_prefix("ENGINE")?.trim();
            (!e.is_empty()).then(|| e.to_string())
        });
    }

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

    pub fn destination(&self) -> &SshDestination {
        &self.dest
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

    /// The Engine API of the host as a bollard transport: each HTTP connection is a
    /// `docker system dial-stdio` channel; connections are pooled and reused.
    pub fn docker_transport(
        self: &Arc<Self>,
    ) -> impl Fn(bollard::BollardRequest) -> EngineResponse + Send + Sync + 'static {
        pooled(EngineConnector::Dial(self.clone()))
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

impl Drop for SshSession {
    /// Ends the run's side of the connection without waiting on the host: forwards stop, the
    /// session's input closes (its command ends), and the master, whose channels are all
    /// closing, exits by itself; it is reaped in the background, and ended if it lingers.
    fn drop(&mut self) {
        for (_, _, task) in std::mem::take(self.forwards.get_mut()) {
            task.abort();
        }
        drop(self.session_in.get_mut().ok().and_then(Option::take));
        drop(self.spare.get_mut().ok().and_then(Option::take));
        if let Some(mut master) = self.master.get_mut().ok().and_then(Option::take) {
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if !matches!(master.try_wait(), Ok(None)) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = master.kill();
                let _ = master.wait();
            });
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

fn engine_memo(cache_dir: &std::path::Path, dest: &SshDestination) -> PathBuf {
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
    cache_dir.join("ssh-engines").join(name)
}

/// Whether ssh can forward to the socket `path` (its `-L` spec splits on `:`).
fn forwardable(path: &str) -> bool {
    path.starts_with('/') && !path.contains(':')
}

/// `host:port` for ssh's forward specs, an IPv6 address in brackets.
fn tcp_target(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The remote command line of the connection's own session: `PRELUDE`, then `session`.
fn session_line(session: &str) -> String {
    format!("sh -c {} sh {}", shell_quote(PRELUDE), shell_quote(session))
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

/// The Engine API behind a local unix socket as a bollard transport, connections pooled and
/// reused: the master's end of its forward to a host's engine socket (`engine_socket`), where
/// each connection is a channel to that socket, or a local engine's own socket.
pub fn socket_transport(socket: PathBuf) -> impl Fn(bollard::BollardRequest) -> EngineResponse + Send + Sync + 'static {
    pooled(EngineConnector::Socket(Arc::new(socket)))
}

/// A bollard transport over `connector`: a hyper client that pools and keeps connections alive.
/// Shared by the SSH transports and the TLS one.
pub(crate) fn pooled<C>(connector: C) -> impl Fn(bollard::BollardRequest) -> EngineResponse + Send + Sync + 'static
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector);
    move |req: bollard::BollardRequest| -> EngineResponse {
        let client = client.clone();
        Box::pin(async move { client.request(req).await.map_err(bollard::errors::Error::from) })
    }
}

/// How a new Engine API connection is made: a channel running `docker system dial-stdio`, or a
/// connection to the master's local end of its forward to the host's engine socket.
#[derive(Clone)]
enum EngineConnector {
    Dial(Arc<SshSession>),
    Socket(Arc<PathBuf>),
}

impl tower_service::Service<hyper::Uri> for EngineConnector {
    type Response = hyper_util::rt::TokioIo<EngineStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let how = self.clone();
        Box::pin(async move {
            let stream = match how {
                EngineConnector::Socket(path) => {
                    EngineStream::Socket(tokio::net::UnixStream::connect(path.as_path()).await?)
                }
                EngineConnector::Dial(session) => EngineStream::Dial(Box::new(session.dial_ready()?)),
            };
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

impl SshSession {
    /// A `dial-stdio` channel for a new connection: the spare, unless its channel already ended
    /// (then a new one says why); one channel then stays ready ahead of need.
    fn dial_ready(&self) -> std::io::Result<DialStream> {
        let ready = self
            .spare
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .and_then(|mut s| s.alive().then_some(s));
        let stream = match ready {
            Some(s) => s,
            None => self.spawn_dial()?,
        };
        if let Ok(next) = self.spawn_dial()
            && let Ok(mut spare) = self.spare.lock()
        {
            *spare = Some(next);
        }
        Ok(stream)
    }

    /// A new channel running `docker system dial-stdio` on the host; what it says on stderr is
    /// kept (it explains a refused engine).
    fn spawn_dial(&self) -> std::io::Result<DialStream> {
        let mut child = tokio::process::Command::new("ssh")
            .process_group(0)
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

/// One `dial-stdio` channel: its stdout is read, its stdin written.
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

/// One Engine API connection, as `EngineConnector` made it.
enum EngineStream {
    Dial(Box<DialStream>),
    Socket(tokio::net::UnixStream),
}

impl Connection for EngineStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for EngineStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Dial(d) => Pin::new(&mut d.stdout).poll_read(cx, buf),
            Self::Socket(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for EngineStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Dial(d) => Pin::new(&mut d.stdin).poll_write(cx, buf),
            Self::Socket(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Dial(d) => Pin::new(&mut d.stdin).poll_flush(cx),
            Self::Socket(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Dial(d) => Pin::new(&mut d.stdin).poll_shutdown(cx),
            Self::Socket(s) => Pin::new(s).poll_shutdown(cx),
        }
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

    /// Runs the session line in a local `sh` with only `env` (and a home of its own) set, as
    /// sshd would on the host; returns its first two lines.
    fn session_start(env: &[(&str, &str)], config: Option<&str>) -> (String, String) {
        let home = tempfile::tempdir().unwrap();
        if let Some(c) = config {
            std::fs::create_dir_all(home.path().join(".docker")).unwrap();
            std::fs::write(home.path().join(".docker/config.json"), c).unwrap();
        }
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(session_line("echo 'the session runs'"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", home.path())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines().map(str::to_string);
        (lines.next().unwrap_or_default(), lines.next().unwrap_or_default())
    }

    #[test]
    fn the_session_names_the_engine_the_docker_cli_would_use_then_runs() {
        let default = "ENGINE unix:///var/run/docker.sock";
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, &'a str);
        let cases: &[Case] = &[
            (&[], None, default),
            (
                &[("DOCKER_HOST", "unix:///run/user/1000/docker.sock")],
                None,
                "ENGINE unix:///run/user/1000/docker.sock",
            ),
            (
                &[("DOCKER_HOST", "tcp://10.0.0.5:2375")],
                None,
                "ENGINE tcp://10.0.0.5:2375",
            ),
            // Set but empty: the default context, as the docker CLI reads it.
            (&[("DOCKER_HOST", "")], None, default),
            // DOCKER_HOST wins over a context, as it does for the docker CLI.
            (
                &[("DOCKER_HOST", "unix:///x.sock"), ("DOCKER_CONTEXT", "remote")],
                None,
                "ENGINE unix:///x.sock",
            ),
            (&[("DOCKER_CONTEXT", "default")], None, default),
            (&[("DOCKER_CONTEXT", "rootless")], None, "ENGINE"),
            (&[], Some("{\n  \"currentContext\": \"rootless\"\n}"), "ENGINE"),
            (&[], Some("{\"auths\":{},\"currentContext\":\"default\"}"), default),
            (&[], Some("{\"auths\": {}}"), default),
        ];
        for (env, config, want) in cases {
            let (first, second) = session_start(env, *config);
            assert_eq!(first.trim_end(), *want, "{env:?} {config:?}");
            assert_eq!(second, "the session runs", "{env:?} {config:?}");
        }
    }

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

    #[test]
    fn shell_quote_survives_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
