//! TLS to a `tcp://` engine, as `docker --tlsverify` talks to one: the engine's certificate must
//! be signed by `ca.pem` (and only by it: the system's roots are not trusted for an engine, which
//! grants root on its host) and be valid for the host name dialled; `cert.pem` + `key.pem` are the
//! client certificate the engine checks. The three files are in one folder: `DOCKER_CERT_PATH`
//! (default `~/.docker`), or a docker context's TLS folder.
//!
//! The connection is a bollard custom transport over rustls (the crypto provider reqwest already
//! brings, aws-lc-rs): TCP connect bounded by the connect timeout, one TLS session per HTTP
//! connection, pooled and kept alive. What goes wrong is told apart as a typed [`TlsError`]: a
//! missing or unreadable file (named by path), the engine's certificate rejected (wrong CA, wrong
//! name, expired), our client certificate refused or missing, a plain-HTTP server on the port.
//! TLS 1.3 servers refuse a client certificate only after the handshake, on the first read, so
//! the stream watches its reads too and keeps the first TLS failure for the engine to report.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::adapters::ssh::EngineResponse;
pub use crate::settings::TlsFiles;

#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error("read {what} {}: {detail}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        detail: String,
        source_name: String,
    },
    #[error("trust the engine at {host}: its certificate {detail}")]
    Untrusted { host: String, ca: PathBuf, detail: String },
    #[error("log in to the engine at {host}: it refused the client certificate {} ({detail})", cert.display())]
    ClientRefused {
        host: String,
        cert: PathBuf,
        detail: String,
    },
    #[error("log in to the engine at {host}: it wants a client certificate, and {} has no cert.pem and key.pem", dir.display())]
    NoClientCert { host: String, dir: PathBuf },
    #[error("talk TLS to the engine at {host}: it answered in plain HTTP")]
    PlainHttp { host: String },
    #[error("talk plain HTTP to the engine at {host}: it wants TLS")]
    TlsNeeded { host: String },
    #[error("talk TLS to the engine at {host}: {detail}")]
    Handshake { host: String, detail: String },
}

impl TlsError {
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Self::File { source_name, .. } => format!(
                "the TLS folder comes from {source_name}; it must hold ca.pem (the CA that signed the engine's \
                 certificate), cert.pem and key.pem (a client certificate signed by the CA the engine trusts), \
                 as for `docker --tlsverify`"
            ),
            Self::Untrusted { ca, .. } => format!(
                "{} must be the CA that signed the engine's --tlscert, and that certificate must name the host \
                 dialled (subjectAltName); only that CA is trusted for an engine",
                ca.display()
            ),
            Self::ClientRefused { .. } => {
                "cert.pem must be signed by the CA the engine trusts (its --tlscacert) and allow client auth".into()
            }
            Self::NoClientCert { .. } => {
                "put a client certificate signed by the CA the engine trusts (its --tlscacert) and its key there as \
                 cert.pem and key.pem"
                    .into()
            }
            Self::PlainHttp { .. } => "that port serves the engine without TLS (2375 by convention): use the engine's \
                 TLS port (2376), or unset DOCKER_TLS_VERIFY to talk plain HTTP on a network you trust"
                .into(),
            Self::TlsNeeded { .. } => "set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH to the folder holding ca.pem, \
                 cert.pem and key.pem (or use a docker context that has them)"
                .into(),
            Self::Handshake { .. } => return None,
        })
    }
}

/// What a connection needs to say what went wrong.
#[derive(Debug)]
struct Peer {
    /// `tcp://host:port`, for messages.
    shown: String,
    files: TlsFiles,
    client_cert: bool,
    /// The first TLS failure seen on any connection, for the engine to report.
    failure: Mutex<Option<TlsError>>,
}

impl Peer {
    fn note(&self, e: &std::io::Error) {
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
            return;
        };
        let typed = self.classify(tls);
        if let Ok(mut slot) = self.failure.lock()
            && slot.is_none()
        {
            *slot = Some(typed);
        }
    }

    fn classify(&self, e: &rustls::Error) -> TlsError {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let host = self.shown.clone();
        match e {
            E::InvalidCertificate(c) => TlsError::Untrusted {
                host,
                ca: self.files.ca(),
                detail: match c {
                    C::UnknownIssuer | C::BadSignature => format!("is not signed by {}", self.files.ca().display()),
                    C::NotValidForName | C::NotValidForNameContext { .. } => {
                        "does not name this host (subjectAltName)".into()
                    }
                    C::Expired | C::ExpiredContext { .. } => "has expired".into(),
                    C::NotValidYet | C::NotValidYetContext { .. } => "is not valid yet (check the clocks)".into(),
                    other => format!("was rejected: {other:?}"),
                },
            },
            E::AlertReceived(A::CertificateRequired | A::HandshakeFailure) if !self.client_cert => {
                TlsError::NoClientCert {
                    host,
                    dir: self.files.dir.clone(),
                }
            }
            E::AlertReceived(
                a @ (A::BadCertificate
                | A::UnknownCA
                | A::CertificateUnknown
                | A::CertificateRequired
                | A::UnsupportedCertificate
                | A::CertificateExpired
                | A::AccessDenied
                | A::DecryptError),
            ) => {
                if self.client_cert {
                    TlsError::ClientRefused {
                        host,
                        cert: self.files.cert(),
                        detail: format!("alert {a:?}"),
                    }
                } else {
                    TlsError::NoClientCert {
                        host,
                        dir: self.files.dir.clone(),
                    }
                }
            }
            E::InvalidMessage(_) => TlsError::PlainHttp { host },
            other => TlsError::Handshake {
                host,
                detail: other.to_string(),
            },
        }
    }
}

/// Reads the TLS files into a client config. `ca.pem` is required; `cert.pem` and `key.pem` go
/// together (neither is allowed: the engine may not ask for one, and says so if it does).
fn client_config(files: &TlsFiles) -> Result<(rustls::ClientConfig, bool), TlsError> {
    let file_err = |what: &'static str, path: &Path, detail: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        detail,
        source_name: files.source.clone(),
    };
    let read = |what: &'static str, path: &Path| -> Result<Vec<u8>, TlsError> {
        std::fs::read(path).map_err(|e| {
            let detail = if e.kind() == std::io::ErrorKind::NotFound {
                "no such file".to_string()
            } else {
                e.to_string()
            };
            file_err(what, path, detail)
        })
    };
    let certs = |what: &'static str, path: &Path, bytes: &[u8]| -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let list = CertificateDer::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_err(what, path, format!("not a PEM certificate: {e}")))?;
        if list.is_empty() {
            return Err(file_err(what, path, "holds no PEM certificate".into()));
        }
        Ok(list)
    };
    let ca_path = files.ca();
    let ca = read("the engine's CA certificate", &ca_path)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certs("the engine's CA certificate", &ca_path, &ca)? {
        roots
            .add(c)
            .map_err(|e| file_err("the engine's CA certificate", &ca_path, e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Handshake {
            host: String::new(),
            detail: e.to_string(),
        })?
        .with_root_certificates(roots);
    let (cert_path, key_path) = (files.cert(), files.key());
    let config = match (cert_path.exists(), key_path.exists()) {
        (false, false) => return Ok((builder.with_no_client_auth(), false)),
        (true, false) => {
            return Err(file_err(
                "the client key",
                &key_path,
                "no such file (cert.pem is there)".into(),
            ));
        }
        (false, true) => {
            return Err(file_err(
                "the client certificate",
                &cert_path,
                "no such file (key.pem is there)".into(),
            ));
        }
        (true, true) => {
            let chain = certs(
                "the client certificate",
                &cert_path,
                &read("the client certificate", &cert_path)?,
            )?;
            let key = PrivateKeyDer::from_pem_slice(&read("the client key", &key_path)?)
                .map_err(|e| file_err("the client key", &key_path, format!("not a PEM private key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| file_err("the client key", &key_path, format!("does not go with cert.pem: {e}")))?
        }
    };
    Ok((config, true))
}

/// An engine's API over TLS, as a bollard transport, and the first TLS failure it met.
pub struct Transport {
    pub call: Box<dyn Fn(bollard::BollardRequest) -> EngineResponse + Send + Sync>,
    peer: Arc<Peer>,
}

impl Transport {
    /// Reads the TLS files (errors name the file) and prepares connections to `host:port`.
    pub fn new(host: &str, port: u16, files: &TlsFiles, connect_timeout: Duration) -> Result<Self, TlsError> {
        let (config, client_cert) = client_config(files)?;
        let shown = format!("tcp://{host}:{port}");
        let name =
            ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string()).map_err(|e| {
                TlsError::Handshake {
                    host: shown.clone(),
                    detail: format!("'{host}' is not a host name for TLS: {e}"),
                }
            })?;
        let peer = Arc::new(Peer {
            shown,
            files: files.clone(),
            client_cert,
            failure: Mutex::new(None),
        });
        let connector = Dial {
            addr: (host.trim_start_matches('[').trim_end_matches(']').to_string(), port),
            name,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeout: connect_timeout,
            peer: peer.clone(),
        };
        Ok(Self {
            call: Box::new(crate::adapters::ssh::pooled(connector, None)),
            peer,
        })
    }

    /// A handle on the first TLS failure seen, for after the transport was handed to bollard.
    pub fn failures(&self) -> Failures {
        Failures(self.peer.clone())
    }
}

/// The first TLS failure of a transport's connections, if any.
#[derive(Debug, Clone)]
pub struct Failures(Arc<Peer>);

impl Failures {
    pub fn first(&self) -> Option<TlsError> {
        self.0.failure.lock().ok()?.clone()
    }
}

/// The connector: TCP (bounded by the connect timeout), then the TLS handshake.
#[derive(Clone)]
struct Dial {
    addr: (String, u16),
    name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
    peer: Arc<Peer>,
}

impl tower_service::Service<hyper::Uri> for Dial {
    type Response = hyper_util::rt::TokioIo<Watched>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = tokio::time::timeout(this.timeout, tokio::net::TcpStream::connect(&this.addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {}s", this.timeout.as_secs_f32()),
                    )
                })??;
            tcp.set_nodelay(true)?;
            let stream = tokio::time::timeout(this.timeout, this.tls.connect(this.name.clone(), tcp))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no TLS handshake within {}s", this.timeout.as_secs_f32()),
                    )
                })?
                .inspect_err(|e| this.peer.note(e))?;
            Ok(hyper_util::rt::TokioIo::new(Watched {
                inner: stream,
                peer: this.peer,
            }))
        })
    }
}

/// A TLS stream that keeps the first TLS failure met while reading (a refused client
/// certificate arrives there with TLS 1.3).
struct Watched {
    inner: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    peer: Arc<Peer>,
}

impl Connection for Watched {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Err(e)) = &r {
            this.peer.note(e);
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles {
            dir: dir.to_path_buf(),
            source: "DOCKER_CERT_PATH".into(),
        }
    }

    #[test]
    fn missing_files_are_named_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = client_config(&files(dir.path())).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("{}: no such file", dir.path().join("ca.pem").display())),
            "{e}"
        );
        assert!(e.hint().unwrap().contains("DOCKER_CERT_PATH"), "{:?}", e.hint());
        std::fs::write(dir.path().join("ca.pem"), "not pem").unwrap();
        let e = client_config(&files(dir.path())).unwrap_err();
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
    }

    #[test]
    fn tls_failures_are_told_apart() {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let peer = |client_cert| Peer {
            shown: "tcp://h:2376".into(),
            files: files(Path::new("/certs")),
            client_cert,
            failure: Mutex::new(None),
        };
        let cases: [(bool, E, &str); 6] = [
            (
                true,
                E::InvalidCertificate(C::UnknownIssuer),
                "is not signed by /certs/ca.pem",
            ),
            (
                true,
                E::InvalidCertificate(C::NotValidForName),
                "does not name this host",
            ),
            (
                false,
                E::AlertReceived(A::CertificateRequired),
                "has no cert.pem and key.pem",
            ),
            (
                true,
                E::AlertReceived(A::BadCertificate),
                "refused the client certificate /certs/cert.pem",
            ),
            (
                true,
                E::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                "answered in plain HTTP",
            ),
            (true, E::HandshakeNotComplete, "talk TLS to the engine at tcp://h:2376"),
        ];
        for (client_cert, e, want) in cases {
            let got = peer(client_cert).classify(&e).to_string();
            assert!(got.contains(want), "{e:?} -> {got}");
        }
        // Only the first failure is kept, and only TLS ones.
        let p = peer(true);
        p.note(&std::io::Error::other("plain io"));
        assert!(p.failure.lock().unwrap().is_none());
        p.note(&std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            E::InvalidCertificate(C::Expired),
        ));
        p.note(&std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            E::AlertReceived(A::BadCertificate),
        ));
        assert!(
            p.failure
                .lock()
                .unwrap()
                .as_ref()
                .unwrap()
                .to_string()
                .contains("has expired")
        );
    }
}
