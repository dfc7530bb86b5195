//! The Engine API of a host reached over SSH, as a bollard custom transport: each HTTP connection
//! is a channel on the master, either to the master's local end of its forward to the host's
//! engine socket (`socket_transport`) or running `docker system dial-stdio` there
//! (`SshSession::docker_transport`, with one channel kept ready ahead of need and what a refused
//! one said kept to explain it). `pooled`, the keep-alive hyper client behind both, is also the
//! TLS engine's (`docker::tls`).

use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{SshError, SshSession, last_line};
use crate::adapters::wire::Wire;

/// An Engine API response coming back over a `dial-stdio` channel.
pub type EngineResponse = Pin<
    Box<
        dyn std::future::Future<Output = Result<hyper::Response<hyper::body::Incoming>, bollard::errors::Error>> + Send,
    >,
>;

impl SshSession {
    /// The Engine API of the host as a bollard transport: each HTTP connection is a
    /// `docker system dial-stdio` channel; connections are pooled and reused.
    pub fn docker_transport(
        self: &Arc<Self>,
    ) -> impl Fn(bollard::BollardRequest) -> EngineResponse + Send + Sync + 'static {
        pooled(EngineConnector::Dial(self.clone()), Some(self.wire.clone()))
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
}

/// The Engine API behind a local unix socket as a bollard transport, connections pooled and
/// reused: the master's end of its forward to a host's engine socket (`engine_socket`), where
/// each connection is a channel to that socket (counted on `wire`), or a local engine's own
/// socket.
pub fn socket_transport(
    socket: PathBuf,
    wire: Option<Arc<Wire>>,
) -> impl Fn(bollard::BollardRequest) -> EngineResponse + Send + Sync + 'static {
    pooled(EngineConnector::Socket(Arc::new(socket), wire.clone()), wire)
}

/// A bollard transport over `connector`: a hyper client that pools and keeps connections alive,
/// each request a wait on `wire` until its answer's head has come. Shared by the SSH transports
/// and the TLS one.
pub(crate) fn pooled<C>(
    connector: C,
    wire: Option<Arc<Wire>>,
) -> impl Fn(bollard::BollardRequest) -> EngineResponse + Send + Sync + 'static
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector);
    move |req: bollard::BollardRequest| -> EngineResponse {
        let client = client.clone();
        let waiting = wire
            .as_ref()
            .map(|w| w.wait(format!("{} {}", req.method(), req.uri().path())));
        Box::pin(async move {
            let answer = client.request(req).await.map_err(bollard::errors::Error::from);
            drop(waiting);
            answer
        })
    }
}

/// How a new Engine API connection is made: a channel running `docker system dial-stdio`, or a
/// connection to the master's local end of its forward to the host's engine socket.
#[derive(Clone)]
enum EngineConnector {
    Dial(Arc<SshSession>),
    Socket(Arc<PathBuf>, Option<Arc<Wire>>),
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
                EngineConnector::Socket(path, wire) => {
                    if let Some(w) = wire {
                        w.channel_opened();
                    }
                    EngineStream::Socket(tokio::net::UnixStream::connect(path.as_path()).await?)
                }
                EngineConnector::Dial(session) => {
                    session.wire.channel_opened();
                    EngineStream::Dial(Box::new(session.dial_ready()?))
                }
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

impl SshSession {
    /// A channel running `remote` (a command line for the remote user's shell) on the host,
    /// its input and output the caller's (the swap's gate); ended when dropped.
    pub fn open_channel(&self, remote: &str) -> std::io::Result<RemoteChannel> {
        let mut child = tokio::process::Command::new("ssh")
            .process_group(0)
            .args(self.channel_args())
            .arg("--")
            .arg(&self.dest.host)
            .arg(remote)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(std::io::Error::other("ssh gave no pipes"));
        };
        Ok(RemoteChannel { child, stdin, stdout })
    }
}

/// A channel of its own running a command on the host: write its input, read its output.
pub struct RemoteChannel {
    /// Kept while the channel is used: dropping it ends the channel.
    pub child: tokio::process::Child,
    pub stdin: tokio::process::ChildStdin,
    pub stdout: tokio::process::ChildStdout,
}

/// One `dial-stdio` channel: its stdout is read, its stdin written.
pub(super) struct DialStream {
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
