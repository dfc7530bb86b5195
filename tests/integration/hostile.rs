//! A hostile registry: a small in-process HTTP server that sends oversized and endless bodies,
//! `Link`s and redirects to another origin (which records what reaches it), ever-growing tag
//! pages, malformed and mismatching manifests, slow answers, and deletes that fail. The real
//! `backtrack` binary runs against it; each test asserts a clear error (or the right behaviour),
//! bounded time, bounded memory (peak RSS of the process) and that no credential left the
//! registry's origin.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::Digest as _;

use crate::harness::Test;

/// The most a run against a hostile registry may take, and the most memory it may hold.
const TIME_LIMIT: Duration = Duration::from_secs(30);
const RSS_LIMIT_KIB: u64 = 64 * 1024;

const USER: &str = "backtrack-user";
const SECRET: &str = "s3cret-password";

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the server answers.
enum Reply {
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Headers, then body bytes for as long as the client reads (no Content-Length).
    Endless { headers: Vec<(String, String)> },
    /// Waits this long, then answers.
    After(Duration, Box<Reply>),
}

fn ok_json(body: impl Into<Vec<u8>>) -> Reply {
    Reply::Full {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.into(),
    }
}

fn status(code: u16, body: &str) -> Reply {
    Reply::Full {
        status: code,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.as_bytes().to_vec(),
    }
}

fn with_header(reply: Reply, k: &str, v: &str) -> Reply {
    match reply {
        Reply::Full {
            status,
            mut headers,
            body,
        } => {
            headers.push((k.into(), v.into()));
            Reply::Full { status, headers, body }
        }
        other => other,
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

/// One HTTP/1.1 server on loopback; one request per connection.
struct Server {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (handler, seen) = (handler.clone(), seen2.clone());
                std::thread::spawn(move || serve(conn, &*handler, &seen));
            }
        });
        Self { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, handler: &Handler, seen: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let req = Seen { method, path, headers };
    if let Some(n) = req.header("content-length").and_then(|n| n.parse::<u64>().ok()) {
        let _ = std::io::copy(&mut (&mut reader).take(n), &mut std::io::sink());
    }
    seen.lock().unwrap().push(req.clone());
    let reply = handler(&req);
    write_reply(conn, reply, req.method == "HEAD");
}

fn write_reply(mut conn: TcpStream, reply: Reply, head: bool) {
    match reply {
        Reply::After(wait, reply) => {
            std::thread::sleep(wait);
            write_reply(conn, *reply, head);
        }
        Reply::Full { status, headers, body } => {
            let mut out = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
            if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
                out.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let _ = conn.write_all(out.as_bytes());
            if !head {
                let _ = conn.write_all(&body);
            }
        }
        Reply::Endless { headers } => {
            let mut out = String::from("HTTP/1.1 200 OK\r\nConnection: close\r\n");
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            if conn.write_all(out.as_bytes()).is_err() || head {
                return;
            }
            let chunk = vec![b'['; 64 * 1024];
            // Until the client hangs up (or 4 GiB, so a broken client cannot keep this forever).
            for _ in 0..65_536 {
                if conn.write_all(&chunk).is_err() {
                    return;
                }
            }
        }
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// A real (tiny) image: its config with a description label, and a manifest naming it.
struct Image {
    config: Vec<u8>,
    manifest: Vec<u8>,
}

impl Image {
    fn new(description: &str) -> Self {
        let config = serde_json::to_vec(&serde_json::json!({
            "created": "2026-01-01T00:00:00Z",
            "config": {"Labels": {"org.opencontainers.image.description": description}},
        }))
        .unwrap();
        Self::with_config(config)
    }

    fn with_config(config: Vec<u8>) -> Self {
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": sha256(&config),
                "size": config.len(),
            },
            "layers": [],
        }))
        .unwrap();
        Self { config, manifest }
    }

    fn digest(&self) -> String {
        sha256(&self.manifest)
    }

    fn manifest_reply(&self) -> Reply {
        Reply::Full {
            status: 200,
            headers: vec![
                (
                    "Content-Type".into(),
                    "application/vnd.docker.distribution.manifest.v2+json".into(),
                ),
                ("Docker-Content-Digest".into(), self.digest()),
            ],
            body: self.manifest.clone(),
        }
    }
}

/// A sandbox whose docker config holds credentials for `registry`, with a config for repository
/// `app` there (plus `more` TOML in `[registry]`).
fn sandbox(registry: &str, more: &str) -> Test {
    let t = Test::new().config(&format!(
        "[registry]\nurl = \"{registry}\"\nrepository = \"app\"\n{more}"
    ));
    let dir = t.dir.path().join("docker-config");
    std::fs::create_dir_all(&dir).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{SECRET}"));
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({"auths": {registry: {"auth": auth}}}).to_string(),
    )
    .unwrap();
    t
}

/// How a run went, with its peak memory.
struct Measured {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
    peak_rss_kib: u64,
}

/// Runs `backtrack ARGS` in `t`, polling the child's peak RSS (VmHWM) until it exits; kills it
/// (and fails) past `TIME_LIMIT`.
fn measure(t: &Test, args: &[&str]) -> Measured {
    let mut cmd = t.command();
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn backtrack");
    let status_path = format!("/proc/{}/status", child.id());
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut peak = 0;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_path)
            && let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "backtrack {} ran longer than {TIME_LIMIT:?} against the hostile registry",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let m = Measured {
        code: status.code().unwrap_or(-1),
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
        took: started.elapsed(),
        peak_rss_kib: peak,
    };
    eprintln!(
        "backtrack {}: exit {} in {:.2?}, peak RSS {} KiB\n{}",
        args.join(" "),
        m.code,
        m.took,
        m.peak_rss_kib,
        m.stderr.trim()
    );
    m
}

impl Measured {
    /// Exit code, a message containing `needle`, bounded time and memory.
    #[track_caller]
    fn fails_clearly(&self, code: i32, needle: &str) {
        assert_eq!(
            self.code, code,
            "wrong exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "the error does not say '{needle}':\n{}",
            self.stderr
        );
        self.was_bounded();
    }

    #[track_caller]
    fn was_bounded(&self) {
        assert!(self.took < TIME_LIMIT, "took {:?}", self.took);
        assert!(
            self.peak_rss_kib > 0 && self.peak_rss_kib < RSS_LIMIT_KIB,
            "peak RSS {} KiB (limit {RSS_LIMIT_KIB} KiB)",
            self.peak_rss_kib
        );
    }
}

/// `/v2/` wants basic credentials; everything else is answered by `rest` (credentials or not).
fn basic_realm(rest: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> impl Fn(&Seen) -> Reply + Send + Sync {
    move |req: &Seen| {
        if req.path == "/v2/" {
            return match req.header("authorization") {
                Some(_) => ok_json("{}"),
                None => with_header(
                    status(401, r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#),
                    "WWW-Authenticate",
                    "Basic realm=\"hostile\"",
                ),
            };
        }
        rest(req)
    }
}

fn tags(list: &[&str]) -> Reply {
    ok_json(serde_json::json!({"name": "app", "tags": list}).to_string())
}

#[test]
fn an_endless_manifest_body_is_cut_at_4_mib_with_a_clear_error() {
    let server = Server::start(basic_realm(|req| match req.path.as_str() {
        p if p.starts_with("/v2/app/tags/list") => tags(&["v1.0.0"]),
        _ => Reply::Endless { headers: vec![] },
    }));
    let m = measure(&sandbox(&server.addr, ""), &["versions", "--refresh"]);
    m.fails_clearly(3, "it sent more than 4 MiB");
    assert!(
        m.stderr.contains(&server.addr) && m.stderr.contains("manifest"),
        "{}",
        m.stderr
    );
}

#[test]
fn a_manifest_declared_at_500_mb_is_refused_before_reading() {
    let server = Server::start(basic_realm(|req| match req.path.as_str() {
        p if p.starts_with("/v2/app/tags/list") => tags(&["v1.0.0"]),
        _ => Reply::Full {
            status: 200,
            headers: vec![("Content-Length".into(), "500000000".into())],
            body: vec![b'{'; 1024],
        },
    }));
    let m = measure(&sandbox(&server.addr, ""), &["versions"]);
    m.fails_clearly(3, "it sent more than 4 MiB");
}

#[test]
fn an_endless_tag_list_is_cut_with_a_clear_error() {
    let server = Server::start(basic_realm(|_| Reply::Endless { headers: vec![] }));
    let m = measure(&sandbox(&server.addr, ""), &["versions"]);
    m.fails_clearly(3, "it sent more than 8 MiB");
    assert!(m.stderr.contains("tag list"), "{}", m.stderr);
}

#[test]
fn tag_pages_that_never_end_stop_at_the_tag_cap() {
    let server = Server::start(basic_realm(|req| {
        // Every page brings 1,000 new tags and a link to the next.
        let page: u64 = req
            .path
            .split("last=p")
            .nth(1)
            .and_then(|n| n.split('-').next())
            .and_then(|n| n.parse().ok())
            .map_or(0, |n: u64| n + 1);
        let list: Vec<String> = (0..1000).map(|i| format!("p{page}-t{i}")).collect();
        with_header(
            ok_json(serde_json::json!({"name": "app", "tags": list}).to_string()),
            "Link",
            &format!("</v2/app/tags/list?n=1000&last=p{page}-t999>; rel=\"next\""),
        )
    }));
    let m = measure(&sandbox(&server.addr, ""), &["versions", "--all"]);
    m.fails_clearly(3, "more than 100000 tags");
    let pages = server.seen().iter().filter(|r| r.path.contains("tags/list")).count();
    assert!((100..=102).contains(&pages), "{pages} pages were read");
}

#[test]
fn a_link_and_a_redirect_to_another_origin_get_no_credentials() {
    let image = Arc::new(Image::new("served-from-elsewhere"));
    let other = {
        let image = image.clone();
        Server::start(move |req| {
            if req.path.starts_with("/v2/app/tags/list") {
                tags(&["v1.0.0"])
            } else if req.path.starts_with("/blobs/") {
                ok_json(image.config.clone())
            } else {
                status(404, "{}")
            }
        })
    };
    let other_addr = other.addr.clone();
    let server = {
        let image = image.clone();
        Server::start(basic_realm(move |req| {
            let authorized = req.header("authorization").is_some();
            if !authorized {
                return status(401, r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#);
            }
            match req.path.as_str() {
                // The first page is here; the next one is on another origin.
                p if p.starts_with("/v2/app/tags/list") => with_header(
                    tags(&["v0.9.0"]),
                    "Link",
                    &format!("<http://{other_addr}/v2/app/tags/list?last=v0.9.0>; rel=\"next\""),
                ),
                p if p.starts_with("/v2/app/manifests/") => image.manifest_reply(),
                // Blob storage elsewhere, as S3-backed registries do.
                p if p.starts_with("/v2/app/blobs/") => Reply::Full {
                    status: 307,
                    headers: vec![("Location".into(), format!("http://{other_addr}/blobs/config"))],
                    body: Vec::new(),
                },
                _ => status(404, "{}"),
            }
        }))
    };
    let m = measure(
        &sandbox(&server.addr, ""),
        &["versions", "--all", "--output", "json", "--refresh"],
    );
    assert_eq!(m.code, 0, "stdout:\n{}\nstderr:\n{}", m.stdout, m.stderr);
    m.was_bounded();
    // The redirect worked without the header: the label came from the other origin.
    assert!(m.stdout.contains("served-from-elsewhere"), "{}", m.stdout);
    assert!(m.stdout.contains("v1.0.0"), "the linked page was read: {}", m.stdout);
    let reached = other.seen();
    assert!(reached.iter().any(|r| r.path.starts_with("/v2/app/tags/list")));
    assert!(reached.iter().any(|r| r.path.starts_with("/blobs/")));
    for r in &reached {
        assert_eq!(
            r.header("authorization"),
            None,
            "credentials reached another origin: {r:?}"
        );
        assert!(
            !r.headers.iter().any(|(_, v)| v.contains(SECRET)),
            "the secret reached another origin: {r:?}"
        );
    }
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{SECRET}"))
    );
    assert!(
        server
            .seen()
            .iter()
            .any(|r| r.header("authorization") == Some(expected.as_str())),
        "the registry itself got the credentials"
    );
}

/// A token service on an origin of its own that hands out `token` for any scope asked.
fn token_service(token: &'static str) -> Server {
    Server::start(move |req| {
        if req.path.starts_with("/token") {
            ok_json(format!(r#"{{"token":"{token}"}}"#))
        } else {
            status(404, "{}")
        }
    })
}

#[test]
fn a_plain_http_token_service_on_another_origin_gets_no_credentials() {
    let other = token_service("anonymous-token");
    let realm = format!("http://{}/token", other.addr);
    let server = Server::start(move |req| {
        if req.header("authorization") != Some("Bearer anonymous-token") {
            return with_header(
                status(401, r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#),
                "WWW-Authenticate",
                &format!("Bearer realm=\"{realm}\",service=\"hostile\""),
            );
        }
        match req.path.as_str() {
            p if p.starts_with("/v2/app/tags/list") => tags(&[]),
            _ => ok_json("{}"),
        }
    });
    let m = measure(&sandbox(&server.addr, ""), &["versions"]);
    assert_eq!(m.code, 0, "stdout:\n{}\nstderr:\n{}", m.stdout, m.stderr);
    let reached = other.seen();
    assert!(
        reached.iter().any(|r| r.path.contains("scope=repository%3Aapp%3Apull")),
        "{reached:?}"
    );
    for r in &reached {
        assert_eq!(
            r.header("authorization"),
            None,
            "credentials reached another origin: {r:?}"
        );
    }
}

#[test]
fn malformed_and_mismatching_manifests_are_errors() {
    let image = Image::new("x");
    let garbage = Server::start(basic_realm(|req| match req.path.as_str() {
        p if p.starts_with("/v2/app/tags/list") => tags(&["v1.0.0"]),
        _ => ok_json("{\"schemaVersion\": 2, \"config\": "),
    }));
    measure(&sandbox(&garbage.addr, ""), &["versions"]).fails_clearly(3, "parse manifest");

    let lying = Server::start(basic_realm(move |req| match req.path.as_str() {
        p if p.starts_with("/v2/app/tags/list") => tags(&["v1.0.0"]),
        _ => {
            let mut reply = image.manifest_reply();
            if let Reply::Full { headers, .. } = &mut reply {
                headers.retain(|(k, _)| k != "Docker-Content-Digest");
                headers.push(("Docker-Content-Digest".into(), format!("sha256:{}", "0".repeat(64))));
            }
            reply
        }
    }));
    measure(&sandbox(&lying.addr, ""), &["versions"]).fails_clearly(3, "but what it sent is");
}

#[test]
fn an_unparseable_config_blob_is_an_error_and_is_not_cached() {
    let image = Arc::new(Image::with_config(b"this is not JSON".to_vec()));
    let server = {
        let image = image.clone();
        Server::start(basic_realm(move |req| match req.path.as_str() {
            p if p.starts_with("/v2/app/tags/list") => tags(&["v1.0.0"]),
            p if p.starts_with("/v2/app/manifests/") => image.manifest_reply(),
            p if p.starts_with("/v2/app/blobs/") => ok_json(image.config.clone()),
            _ => status(404, "{}"),
        }))
    };
    let t = sandbox(&server.addr, "");
    measure(&t, &["versions"]).fails_clearly(3, "parse the config");
    let blob_reads = || {
        server
            .seen()
            .iter()
            .filter(|r| r.path.starts_with("/v2/app/blobs/"))
            .count()
    };
    assert_eq!(blob_reads(), 1);
    // Asked again next time: nothing about it was cached.
    measure(&t, &["versions"]).fails_clearly(3, "parse the config");
    assert_eq!(blob_reads(), 2);
}

#[test]
fn a_slow_registry_ends_at_the_configured_deadline() {
    let server = Server::start(|_| Reply::After(Duration::from_secs(25), Box::new(ok_json("{}"))));
    let m = measure(&sandbox(&server.addr, "timeout = \"2s\"\n"), &["versions"]);
    m.fails_clearly(3, "within 2s ([registry] timeout)");
    assert!(m.took < Duration::from_secs(6), "took {:?}", m.took);
}

#[test]
fn a_delete_answering_name_unknown_is_reported_not_counted_as_done() {
    let old = Arc::new(Image::new("old"));
    let new = Arc::new(Image::new("new"));
    let server = {
        let (old, new) = (old.clone(), new.clone());
        Server::start(basic_realm(move |req| {
            let path = req.path.as_str();
            match (req.method.as_str(), path) {
                (_, p) if p.starts_with("/v2/app/tags/list") => tags(&["v1.0.0", "v2.0.0"]),
                ("GET" | "HEAD", "/v2/app/manifests/v1.0.0") => old.manifest_reply(),
                ("GET" | "HEAD", "/v2/app/manifests/v2.0.0") => new.manifest_reply(),
                ("GET" | "HEAD", p) if p.starts_with("/v2/app/manifests/") => status(
                    404,
                    r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                ),
                ("DELETE", _) => status(
                    404,
                    r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#,
                ),
                _ => status(404, "{}"),
            }
        }))
    };
    let t = sandbox(&server.addr, "");
    std::fs::write(t.dir.path().join("p.toml"), "[[keep]]\nnewest = 1\n").unwrap();
    let m = measure(&t, &["prune", "--policy", "p.toml", "--yes"]);
    assert_ne!(m.code, 0, "stdout:\n{}\nstderr:\n{}", m.stdout, m.stderr);
    assert!(
        m.stderr.contains("does not exist") || m.stdout.contains("does not exist"),
        "stdout:\n{}\nstderr:\n{}",
        m.stdout,
        m.stderr
    );
    m.was_bounded();
    let deletes: Vec<Seen> = server.seen().into_iter().filter(|r| r.method == "DELETE").collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert!(deletes[0].path.ends_with(&old.digest()), "{deletes:?}");
}

#[test]
fn an_empty_policy_is_refused_by_policy_check_and_prune() {
    let t = Test::new().config("[registry]\nurl = \"127.0.0.1:1\"\nrepository = \"app\"\n");
    std::fs::write(t.dir.path().join("empty.toml"), "").unwrap();
    let run = t.exec(["policy", "check", "empty.toml"]).code(2);
    assert!(
        run.stderr.contains("empty.toml:1:1: the policy has no [[keep]] rule"),
        "{}",
        run.stderr
    );
    let run = t.exec(["prune", "--policy", "empty.toml", "--yes"]).code(2);
    assert!(run.stderr.contains("keep_nothing = true"), "{}", run.stderr);
    std::fs::write(t.dir.path().join("nothing.toml"), "keep_nothing = true\n").unwrap();
    t.exec(["policy", "check", "nothing.toml"]).success();
}

#[test]
fn repository_names_outside_the_grammar_are_usage_errors_before_any_request() {
    let server = Server::start(|_| ok_json("{}"));
    for (name, col) in [("x/../../../v2/prn", 14), ("../app", 14), ("App", 14)] {
        let t = Test::new().config(&format!(
            "[registry]\nurl = \"{}\"\nrepository = \"{name}\"\n",
            server.addr
        ));
        let run = t.exec(["versions"]).code(2);
        assert!(
            run.stderr
                .contains(&format!("backtrack.toml:3:{col}: invalid repository name '{name}'")),
            "{}",
            run.stderr
        );
    }
    assert!(server.seen().is_empty(), "requests were sent: {:?}", server.seen());
}

#[test]
fn out_of_range_durations_are_usage_errors_not_panics() {
    let t = Test::new().config(
        "[registry]\nurl = \"127.0.0.1:1\"\nrepository = \"app\"\n[target]\nkind = \"container\"\nname = \"x\"\n[health]\ntimeout = \"300000000000y\"\n",
    );
    let run = t.exec(["deploy", "v1.0.0", "--yes"]).code(2);
    assert!(run.stderr.contains("backtrack.toml:8:11"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    let t = Test::new().config("[registry]\nurl = \"127.0.0.1:1\"\nrepository = \"app\"\n");
    let run = t
        .exec(["deploy", "v1.0.0", "--mark-good", "--soak", "300000000000y", "--yes"])
        .code(2);
    assert!(run.stderr.contains("300000000000y"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

/// Regression (#29): a token that grants pull but not push (the scope refused) makes `mark-good`
/// fail clearly with the registry's exit code, and nothing is half done: no manifest was put and
/// the journal says the mark failed.
#[test]
fn a_token_refused_the_push_scope_fails_mark_good_clearly_and_moves_nothing() {
    let image = Image::new("v1");
    let token = token_service("pull-only");
    let realm = format!("http://{}/token", token.addr);
    let manifest = image.manifest.clone();
    let digest = image.digest();
    let config = image.config.clone();
    let server = Server::start(move |req| {
        let challenge = |error: &str| {
            with_header(
                status(
                    401,
                    &format!(r#"{{"errors":[{{"code":"{error}","message":"authentication required"}}]}}"#),
                ),
                "WWW-Authenticate",
                &format!("Bearer realm=\"{realm}\",service=\"hostile\",scope=\"repository:app:pull,push\""),
            )
        };
        if req.header("authorization") != Some("Bearer pull-only") {
            return challenge("UNAUTHORIZED");
        }
        match (req.method.as_str(), req.path.as_str()) {
            ("PUT", _) | ("POST", _) | ("DELETE", _) => with_header(
                status(
                    403,
                    r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#,
                ),
                "WWW-Authenticate",
                "Bearer error=\"insufficient_scope\"",
            ),
            (_, p) if p.starts_with("/v2/app/tags/list") => tags(&["v1.0.0"]),
            (_, p) if p.starts_with("/v2/app/manifests/") => Reply::Full {
                status: 200,
                headers: vec![
                    (
                        "Content-Type".into(),
                        "application/vnd.docker.distribution.manifest.v2+json".into(),
                    ),
                    ("Docker-Content-Digest".into(), digest.clone()),
                ],
                body: manifest.clone(),
            },
            (_, p) if p.starts_with("/v2/app/blobs/") => ok_json(config.clone()),
            _ => status(404, r#"{"errors":[{"code":"NOT_FOUND"}]}"#),
        }
    });
    let t = sandbox(&server.addr, "");
    let m = measure(&t, &["mark-good", "v1.0.0"]);
    assert_eq!(m.code, 3, "stdout:\n{}\nstderr:\n{}", m.stdout, m.stderr);
    assert!(
        m.stderr.contains("last_known_good") && (m.stderr.contains("denied") || m.stderr.contains("DENIED")),
        "the error names the pointer and the refusal: {}",
        m.stderr
    );
    assert!(
        !server
            .seen()
            .iter()
            .any(|r| r.method == "PUT" && r.header("authorization").is_none()),
        "no anonymous push was tried"
    );
    let history = t.exec(["history", "--output", "json"]).success().json();
    let ops = history["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 1, "{history}");
    assert_eq!(ops[0]["op"], "mark-good", "{history}");
    assert_eq!(
        ops[0]["result"], "failed",
        "the journal says the mark did not happen: {history}"
    );
}
