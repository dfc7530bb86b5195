//! HTTP rules every registry request follows, whoever sends it: bodies read as a stream up to a
//! stated cap, a time budget for the whole command, connect and read timeouts on every client, no
//! redirect followed by the client itself (the caller follows them and decides what to send), and
//! origins compared as scheme + host + port so credentials never leave the registry's own.

use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::Url;

use super::{CONNECT_TIMEOUT, READ_TIMEOUT, RegistryError};

/// An HTTP client with connect and read timeouts that follows no redirect by itself.
pub fn client(accept_invalid_certs: bool) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .danger_accept_invalid_certs(accept_invalid_certs)
        .user_agent(concat!("backtrack/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Scheme, host and port: what decides whether a URL is the registry's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    pub fn of(url: &Url) -> Self {
        Self {
            scheme: url.scheme().to_ascii_lowercase(),
            host: url.host_str().unwrap_or_default().to_ascii_lowercase(),
            port: url.port_or_known_default(),
        }
    }
}

/// Why a capped read stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The body is longer than the cap (by its Content-Length or as it streamed).
    TooLarge,
    Transport(reqwest::Error),
}

/// Reads a response body, refusing one longer than `cap` bytes without holding more than that.
pub async fn read_capped(mut resp: reqwest::Response, cap: u64) -> Result<Bytes, ReadError> {
    if resp.content_length().is_some_and(|n| n > cap) {
        return Err(ReadError::TooLarge);
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Transport)? {
        if (buf.len() + chunk.len()) as u64 > cap {
            return Err(ReadError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads at most `cap` bytes of a body and drops the rest (for error answers, where a prefix is
/// all a message needs).
pub async fn read_prefix(mut resp: reqwest::Response, cap: u64) -> Bytes {
    let mut buf = BytesMut::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = (cap as usize).saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() as u64 >= cap {
            break;
        }
    }
    buf.freeze()
}

/// The first 300 characters of a body as text, for a message.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut out: String = text.chars().take(300).collect();
    if out.len() < text.len() {
        out.push_str("...");
    }
    out
}

/// How long a command may spend on registry requests in all: the time during which at least one
/// request is in flight counts, the time between them (a swap, a soak) does not.
#[derive(Debug)]
pub struct Budget {
    limit: Duration,
    registry: String,
    state: Mutex<BudgetState>,
}

#[derive(Debug, Default)]
struct BudgetState {
    used: Duration,
    active: usize,
    busy_since: Option<tokio::time::Instant>,
}

impl Budget {
    pub fn new(limit: Duration, registry: &str) -> Self {
        Self {
            limit,
            registry: registry.to_string(),
            state: Mutex::new(BudgetState::default()),
        }
    }

    /// Runs `fut` within what is left of the budget; running out is [`RegistryError::Deadline`].
    pub async fn run<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        let deadline = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let since = *s.busy_since.get_or_insert_with(tokio::time::Instant::now);
            s.active += 1;
            since.checked_add(self.limit.saturating_sub(s.used))
        };
        let _guard = Busy(self);
        let Some(deadline) = deadline else {
            return fut.await;
        };
        tokio::time::timeout_at(deadline, fut)
            .await
            .unwrap_or_else(|_| Err(self.exceeded()))
    }

    pub fn exceeded(&self) -> RegistryError {
        RegistryError::Deadline {
            registry: self.registry.clone(),
            limit: self.limit,
        }
    }
}

/// Marks the end of one request of a busy period (also when it was cancelled).
struct Busy<'a>(&'a Budget);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        s.active = s.active.saturating_sub(1);
        if s.active == 0
            && let Some(since) = s.busy_since.take()
        {
            s.used = s.used.saturating_add(since.elapsed());
        }
    }
}

/// An authentication challenge (`WWW-Authenticate`), as far as backtrack answers one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String> },
}

/// Parses `Bearer realm="https://auth.example.com/token",service="registry"` or `Basic realm=".."`.
/// `None` for schemes backtrack does not answer, or a bearer challenge without a realm.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: get("realm").filter(|r| !r.is_empty())?,
            service: get("service"),
        })
    } else {
        None
    }
}

/// `k="v", k2=v2` pairs; quoted values may hold commas and `\"`.
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        } else if chars.peek() == Some(&',') {
            chars.next();
        } else if key.is_empty() {
            return out;
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
}

/// The target of `rel="next"` in a `Link` header.
pub fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .contains("rel=\"next\"")
            .then(|| url.trim().trim_start_matches('<').trim_end_matches('>').to_string())
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn bearer_and_basic_challenges_are_read() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("basic"), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(
            parse_challenge(r#"Bearer realm="https://x/t\"q",service=s"#),
            Some(Challenge::Bearer {
                realm: "https://x/t\"q".into(),
                service: Some("s".into()),
            })
        );
    }

    #[test]
    fn next_link_is_read_from_the_link_header() {
        assert_eq!(
            next_link("</v2/app/tags/list?n=1000&last=v1.2.3>; rel=\"next\"").as_deref(),
            Some("/v2/app/tags/list?n=1000&last=v1.2.3")
        );
        assert_eq!(
            next_link("<https://x/a>; rel=\"prev\", <https://x/b>; rel=\"next\"").as_deref(),
            Some("https://x/b")
        );
        assert_eq!(next_link("<https://x/a>; rel=\"prev\""), None);
    }

    #[test]
    fn origins_differ_by_scheme_host_or_port() {
        let o = |u: &str| Origin::of(&Url::parse(u).unwrap());
        assert_eq!(o("https://Reg.example.com/v2/"), o("https://reg.example.com:443/x"));
        assert_ne!(o("https://reg.example.com/"), o("http://reg.example.com/"));
        assert_ne!(o("https://reg.example.com/"), o("https://reg.example.com:5000/"));
        assert_ne!(o("https://reg.example.com/"), o("https://reg.example.com.evil/"));
    }

    #[test]
    fn excerpts_are_short() {
        let long = "x".repeat(10_000);
        assert_eq!(excerpt(long.as_bytes()).len(), 303);
        assert_eq!(excerpt(b" short \n"), "short");
    }

    #[tokio::test]
    async fn the_budget_counts_busy_time_only_and_ends_a_slow_request() {
        let ms = Duration::from_millis;
        let budget = Budget::new(ms(400), "reg");
        let quick = budget
            .run(async {
                tokio::time::sleep(ms(150)).await;
                Ok(())
            })
            .await;
        assert!(quick.is_ok());
        // Idle time between requests is not counted: 150 ms of the 400 are used.
        tokio::time::sleep(ms(500)).await;
        let started = std::time::Instant::now();
        let slow = budget
            .run(async {
                tokio::time::sleep(ms(5000)).await;
                Ok(())
            })
            .await;
        let err = slow.unwrap_err().to_string();
        assert!(err.contains("reg within 400ms"), "{err}");
        let waited = started.elapsed();
        assert!(waited >= ms(200) && waited < ms(1000), "{waited:?}");
    }

    proptest! {
        #[test]
        fn arbitrary_challenges_never_panic(s in "\\PC{0,120}") {
            let _ = parse_challenge(&s);
        }

        #[test]
        fn challenge_shaped_text_never_panics(s in "(Bearer|Basic) [a-z=\",\\\\ ]{0,60}") {
            let _ = parse_challenge(&s);
        }

        #[test]
        fn arbitrary_link_headers_never_panic(s in "\\PC{0,120}") {
            let _ = next_link(&s);
        }
    }
}
