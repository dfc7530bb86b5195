//! Engine API calls sent back to back on one connection and answered in order (HTTP/1.1
//! pipelining), for an engine across a network: a swap's steps (set aside, create, stop, rename,
//! start) cost one round trip instead of one each. The engine (Go's HTTP server) reads the next
//! request only after answering the one before, so they run in the order sent; **every call is
//! sent, so a failing one does not stop the ones after it**: the caller reads the first failure
//! and puts back whatever state the rest left, as it does for any failed swap.
//!
//! Only where round trips cost something: an engine behind an SSH connection's forwarded socket.
//! The connection is opened ahead of need (`ready`), so its channel is open when the calls go.

use std::time::Duration;

use bollard::models::{ContainerCreateBody, EndpointSettings, RestartPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::{Engine, EngineError};

/// One Engine API call of a pipeline.
#[derive(Debug, Clone)]
pub enum Call {
    /// The restart policy of container `name` (by id or name).
    Policy {
        name: String,
        policy: RestartPolicy,
    },
    /// Removes container `name` (forcefully); one that is gone is fine.
    Remove {
        name: String,
    },
    Create {
        name: String,
        body: Box<ContainerCreateBody>,
    },
    /// Connects container `name` to `network`.
    Connect {
        name: String,
        network: String,
        endpoint: Box<EndpointSettings>,
    },
    Stop {
        name: String,
        timeout: i32,
    },
    Rename {
        name: String,
        to: String,
    },
    Start {
        name: String,
    },
    /// Inspects container `name`: its answer is the container as the calls before left it.
    Look {
        name: String,
    },
}

impl Call {
    /// The request: method, path and query (without the API version), body.
    fn request(&self) -> (&'static str, String, Option<Vec<u8>>) {
        let json = |v: &dyn erased::Json| Some(v.to_json());
        match self {
            Self::Policy { name, policy } => (
                "POST",
                format!("/containers/{}/update", enc(name)),
                json(&serde_json::json!({ "RestartPolicy": policy })),
            ),
            Self::Remove { name } => ("DELETE", format!("/containers/{}?force=true", enc(name)), None),
            Self::Create { name, body } => (
                "POST",
                format!("/containers/create?name={}", enc(name)),
                json(body.as_ref()),
            ),
            Self::Connect {
                name,
                network,
                endpoint,
            } => (
                "POST",
                format!("/networks/{}/connect", enc(network)),
                json(&serde_json::json!({ "Container": name, "EndpointConfig": endpoint })),
            ),
            Self::Stop { name, timeout } => ("POST", format!("/containers/{}/stop?t={timeout}", enc(name)), None),
            Self::Rename { name, to } => (
                "POST",
                format!("/containers/{}/rename?name={}", enc(name), enc(to)),
                None,
            ),
            Self::Start { name } => ("POST", format!("/containers/{}/start", enc(name)), None),
            Self::Look { name } => ("GET", format!("/containers/{}/json", enc(name)), None),
        }
    }

    /// Whether `status` means the call did what it should: 2xx, and the "already so" answers
    /// the one-by-one calls accept too (304 for stop and start, 404 for a removal).
    fn fine(&self, status: u16) -> bool {
        (200..300).contains(&status)
            || (status == 304 && matches!(self, Self::Stop { .. } | Self::Start { .. }))
            || (status == 404 && matches!(self, Self::Remove { .. }))
    }

    /// The error of a failed call, worded as the one-by-one calls word theirs.
    fn error(&self, message: String) -> EngineError {
        let (action, container) = match self {
            Self::Policy { name, .. } => ("update restart policy of", name.clone()),
            Self::Remove { name } => ("remove", name.clone()),
            Self::Create { name, .. } => ("create", name.clone()),
            Self::Connect { name, network, .. } => ("connect network", format!("{name} to {network}")),
            Self::Stop { name, .. } => ("stop", name.clone()),
            Self::Rename { name, .. } => ("rename", name.clone()),
            Self::Start { name } => ("start", name.clone()),
            Self::Look { name } => ("inspect", name.clone()),
        };
        EngineError::Container {
            action,
            container,
            message,
        }
    }

    /// What this call waits for at most on the engine (a stop waits for the app to exit).
    fn budget(&self) -> Duration {
        match self {
            Self::Stop { timeout, .. } => Duration::from_secs(u64::try_from(*timeout).unwrap_or(10) + 30),
            _ => Duration::from_secs(60),
        }
    }
}

mod erased {
    /// A value sent as a JSON body.
    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("engine bodies serialize")
        }
    }
}

/// Percent-encodes a path segment or query value (container and network names are
/// `[a-zA-Z0-9_.-]`, ids hex; anything else is encoded).
pub(super) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The bytes of every request, back to back; with `close`, the last one asks the engine to close
/// the connection once it has answered (so a gate's `dial-stdio` ends, and the gate goes on).
fn requests(calls: &[Call], version: &str, close: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, call) in calls.iter().enumerate() {
        let (method, path, body) = call.request();
        out.extend_from_slice(
            format!("{method} /v{version}{path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: backtrack\r\n").as_bytes(),
        );
        if close && i + 1 == calls.len() {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        match body {
            Some(b) => {
                out.extend_from_slice(
                    format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n", b.len()).as_bytes(),
                );
                out.extend_from_slice(&b);
            }
            None => out.extend_from_slice(b"Content-Length: 0\r\n\r\n"),
        }
    }
    out
}

/// One answer read off the connection.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// Reads answers off a stream: a buffer of what came and has not been used yet.
struct Reader<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: tokio::io::AsyncRead + Unpin> Reader<S> {
    async fn more(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the engine closed the connection",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// One line (a gate's answer), without its newline.
    async fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(String::from_utf8_lossy(&line[..i]).to_string());
            }
            self.more().await?;
        }
    }

    async fn answer(&mut self) -> std::io::Result<Answer> {
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        let (status, head_len, length, chunked) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf).map_err(|e| bad(e.to_string()))? {
                httparse::Status::Complete(n) => {
                    let status = response.code.unwrap_or(0);
                    let header = |name: &str| {
                        response
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
                    };
                    let length = header("content-length").and_then(|l| l.parse::<usize>().ok());
                    let chunked = header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
                    break (status, n, length, chunked);
                }
                httparse::Status::Partial => self.more().await?,
            }
        };
        self.buf.drain(..head_len);
        let no_body = status == 204 || status == 304 || (100..200).contains(&status);
        let body = if no_body {
            Vec::new()
        } else if chunked {
            self.chunked().await?
        } else if let Some(n) = length {
            while self.buf.len() < n {
                self.more().await?;
            }
            self.buf.drain(..n).collect()
        } else {
            return Err(bad(format!("an answer ({status}) without a length")));
        };
        Ok(Answer { status, body })
    }

    async fn chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                self.more().await?;
            };
            let size_text = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("a chunk without a size"))?;
            self.buf.drain(..line_end + 2);
            while self.buf.len() < size + 2 {
                self.more().await?;
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

/// The message of an engine's error answer (`{"message": "..."}`), else its text.
fn message_of(answer: &Answer) -> String {
    serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).trim().to_string())
        .trim()
        .to_string()
}

impl Engine {
    /// Whether calls to this engine are worth pipelining (it is across a network, behind a
    /// forwarded socket).
    pub fn pipelines(&self) -> bool {
        self.raw.is_some()
    }

    /// Opens the connection the next `pipeline` uses, so its channel to the host is open by then.
    pub async fn ready_pipeline(&self) {
        let Some(path) = &self.raw else { return };
        let mut spare = self.spare.lock().await;
        if spare.is_none()
            && let Ok(stream) = UnixStream::connect(path).await
        {
            *spare = Some(stream);
        }
    }

    /// Sends every call at once on one connection and reads each answer in order: one round
    /// trip. The answers are the calls' results, in order; an answer that never came is an error
    /// of its call. Only for an engine that `pipelines`.
    pub async fn pipeline(&self, calls: &[Call]) -> Vec<Result<Vec<u8>, EngineError>> {
        let Some(path) = self.raw.clone() else {
            return unanswered(calls, "no connection to pipeline on (this is a bug, please report it)");
        };
        let stream = match self.spare.lock().await.take() {
            Some(s) => s,
            None => match UnixStream::connect(path).await {
                Ok(s) => s,
                Err(e) => return unanswered(calls, &format!("connect to the engine: {e}")),
            },
        };
        let (read, write) = stream.into_split();
        match self.run(read, write, None, calls).await {
            Gated::Ran { answers, .. } => answers,
            // Without a gate there is no refusal.
            Gated::Refused(why) | Gated::NoDocker(why) => unanswered(calls, &why),
        }
    }

    /// `pipeline` behind a gate on the host: `stream` is a channel running `gate`'s program
    /// there, which first does what `preamble` asks (writes the operation's intent to the
    /// journal) and answers `OK` before it hands the rest of its input to the engine (`docker
    /// system dial-stdio`), so the calls run only once the intent is on the host's disk, in the
    /// same round trip. A refusal (what it said before `ERR`) means no call ran; so does
    /// `NODOCKER` (no docker CLI there to hand the calls to). When the preamble names a probe,
    /// the gate makes it once the calls are answered (the last one closes the connection) and
    /// says how it went on one more line, `Gated::Ran::probe`.
    pub async fn pipeline_gated(
        &self,
        read: impl tokio::io::AsyncRead + Unpin,
        write: impl tokio::io::AsyncWrite + Unpin,
        preamble: &[u8],
        calls: &[Call],
    ) -> Gated {
        self.run(read, write, Some(preamble), calls).await
    }

    async fn run(
        &self,
        read: impl tokio::io::AsyncRead + Unpin,
        mut write: impl tokio::io::AsyncWrite + Unpin,
        preamble: Option<&[u8]>,
        calls: &[Call],
    ) -> Gated {
        // The calls change containers: what was read ahead of them no longer stands.
        self.early.forget_containers();
        let version = {
            let v = self.docker.client_version();
            format!("{}.{}", v.major_version, v.minor_version)
        };
        let gated = if preamble.is_some() { ", behind the intent" } else { "" };
        let _waiting = self.wire().map(|w| {
            let n = calls.len() + usize::from(preamble.is_some());
            w.wait_n(format!("{} calls, pipelined{gated}", calls.len()), n)
        });
        let mut bytes = preamble.map(<[u8]>::to_vec).unwrap_or_default();
        bytes.extend(requests(calls, &version, preamble.is_some()));
        if let Err(e) = async {
            write.write_all(&bytes).await?;
            write.flush().await
        }
        .await
        {
            return Gated::Refused(format!("send to the host: {e}"));
        }
        if preamble.is_some() {
            // The gate reads its input to the end before it goes on (the probe after the calls).
            drop(write);
        }
        let mut reader = Reader {
            stream: read,
            buf: Vec::new(),
        };
        if preamble.is_some() {
            let mut said = Vec::new();
            loop {
                match tokio::time::timeout(Duration::from_secs(60), reader.line()).await {
                    Ok(Ok(l)) if l == "OK" => break,
                    Ok(Ok(l)) if l == "NODOCKER" => {
                        return Gated::NoDocker("no docker CLI on the host to hand the calls to".into());
                    }
                    Ok(Ok(l)) if l == "ERR" => {
                        return Gated::Refused(if said.is_empty() {
                            "the host's shell did not say why".into()
                        } else {
                            said.join("; ")
                        });
                    }
                    Ok(Ok(l)) if l.trim().is_empty() => {}
                    Ok(Ok(l)) => said.push(l.trim().to_string()),
                    Ok(Err(e)) => return Gated::Refused(format!("the gate on the host ended: {e}")),
                    Err(_) => return Gated::Refused("the gate on the host did not answer within 60s".into()),
                }
            }
        }
        let mut out = Vec::with_capacity(calls.len());
        for call in calls {
            let answer = tokio::time::timeout(call.budget(), reader.answer()).await;
            let broken = matches!(answer, Ok(Err(_)) | Err(_));
            out.push(match answer {
                Ok(Ok(a)) if call.fine(a.status) => Ok(a.body),
                Ok(Ok(a)) => Err(call.error(message_of(&a))),
                Ok(Err(e)) => Err(call.error(format!("no answer from the engine: {e}"))),
                Err(_) => Err(call.error(format!("no answer within {}s", call.budget().as_secs()))),
            });
            if broken {
                // The connection is no longer in step: the rest is unknown.
                for c in &calls[out.len()..] {
                    out.push(Err(
                        c.error("no answer from the engine after an earlier one failed".into())
                    ));
                }
                break;
            }
        }
        // What the gate says after the calls (its probe), when all were answered.
        let probe = match (preamble.is_some(), out.iter().all(Result::is_ok)) {
            (true, true) => tokio::time::timeout(Duration::from_secs(5), reader.line())
                .await
                .ok()
                .and_then(Result::ok)
                .filter(|l| l.starts_with("PROBE ")),
            _ => None,
        };
        Gated::Ran { answers: out, probe }
    }
}

/// How a gated pipeline went.
#[derive(Debug)]
pub enum Gated {
    /// The gate opened: each call's result (the body of its answer), and the line the gate said
    /// after them (`PROBE …`), if any.
    Ran {
        answers: Vec<Result<Vec<u8>, EngineError>>,
        probe: Option<String>,
    },
    /// The gate refused (the intent could not be written): no call ran.
    Refused(String),
    /// The host has no docker CLI to hand the calls to: no call ran.
    NoDocker(String),
}

fn unanswered(calls: &[Call], why: &str) -> Vec<Result<Vec<u8>, EngineError>> {
    calls.iter().map(|c| Err(c.error(why.to_string()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_go_back_to_back_with_their_bodies_and_encoded_names() {
        let calls = [
            Call::Stop {
                name: "web".into(),
                timeout: 10,
            },
            Call::Rename {
                name: "web".into(),
                to: "web-backtrack-prev".into(),
            },
            Call::Policy {
                name: "abc".into(),
                policy: RestartPolicy {
                    name: Some(bollard::models::RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                },
            },
            Call::Remove { name: "a b".into() },
        ];
        let text = String::from_utf8(requests(&calls, "1.47", false)).unwrap();
        assert!(
            text.starts_with("POST /v1.47/containers/web/stop?t=10 HTTP/1.1\r\n"),
            "{text}"
        );
        assert!(
            text.contains("POST /v1.47/containers/web/rename?name=web-backtrack-prev HTTP/1.1\r\n"),
            "{text}"
        );
        assert!(
            text.contains("\r\n\r\n{\"RestartPolicy\":{\"Name\":\"no\"}}POST")
                || text.contains("{\"RestartPolicy\":{\"Name\":\"no\""),
            "{text}"
        );
        assert!(
            text.contains("DELETE /v1.47/containers/a%20b?force=true HTTP/1.1"),
            "{text}"
        );
        assert_eq!(text.matches("HTTP/1.1\r\n").count(), 4);
        assert!(!text.contains("Connection: close"), "{text}");
        // Behind a gate the last call closes the connection, so the gate's dial-stdio ends.
        let look = [Call::Start { name: "web".into() }, Call::Look { name: "web".into() }];
        let text = String::from_utf8(requests(&look, "1.41", true)).unwrap();
        assert!(
            text.ends_with("GET /v1.41/containers/web/json HTTP/1.1\r\nHost: docker\r\nUser-Agent: backtrack\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"),
            "{text}"
        );
        assert_eq!(text.matches("Connection: close").count(), 1);
    }

    #[tokio::test]
    async fn answers_are_read_in_order_with_lengths_chunks_and_no_bodies() {
        let wire: &[u8] = b"HTTP/1.1 204 No Content\r\nApi-Version: 1.47\r\n\r\n\
HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"Id\":\"abc\"}\n\
HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"mes\r\n15\r\nsage\":\"name in use\"}\n\r\n0\r\n\r\n\
HTTP/1.1 304 Not Modified\r\n\r\n";
        // Delivered a few bytes at a time, as a slow link would.
        let (mut tx, rx) = tokio::io::duplex(7);
        tokio::spawn(async move {
            for piece in wire.chunks(5) {
                tx.write_all(piece).await.unwrap();
            }
        });
        let mut r = Reader {
            stream: rx,
            buf: Vec::new(),
        };
        assert_eq!(
            r.answer().await.unwrap(),
            Answer {
                status: 204,
                body: vec![]
            }
        );
        let created = r.answer().await.unwrap();
        assert_eq!(
            (created.status, created.body.as_slice()),
            (201, &b"{\"Id\":\"abc\"}\n"[..])
        );
        let conflict = r.answer().await.unwrap();
        assert_eq!(conflict.status, 409);
        assert_eq!(message_of(&conflict), "name in use");
        assert_eq!(r.answer().await.unwrap().status, 304);
        assert!(r.answer().await.is_err(), "the stream ended: no fifth answer");
    }

    #[test]
    fn the_already_so_answers_are_fine_only_where_the_one_by_one_calls_accept_them() {
        let stop = Call::Stop {
            name: "w".into(),
            timeout: 1,
        };
        let remove = Call::Remove { name: "w".into() };
        let rename = Call::Rename {
            name: "w".into(),
            to: "x".into(),
        };
        assert!(stop.fine(304) && !stop.fine(404) && stop.fine(204));
        assert!(remove.fine(404) && !remove.fine(409));
        assert!(!rename.fine(304) && !rename.fine(404) && rename.fine(204));
        let e = rename.error("Conflict. The container name \"/x\" is already in use".into());
        assert_eq!(
            e.to_string(),
            EngineError::Container {
                action: "rename",
                container: "w".into(),
                message: "Conflict. The container name \"/x\" is already in use".into(),
            }
            .to_string()
        );
    }
}
