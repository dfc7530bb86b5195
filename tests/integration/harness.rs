//! The test harness: real services (Docker Engine, a Distribution registry) started by
//! `scripts/test-env`, test images built `FROM scratch` with busybox, and a small builder that runs
//! the `backtrack` binary in a sandbox of its own (config, state, cache, docker config).
//!
//! A service that is not there fails the test with the command that starts it; nothing skips.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub const BASE_IMAGE: &str = "backtrack-test-base:1";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The registry address the tests use (`scripts/test-env` starts it).
pub fn registry() -> String {
    std::env::var("BACKTRACK_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into())
}

/// This run's remote hosts and swarm: `scripts/test` takes a slot of its own and exports what
/// `scripts/test-env --slot N --print` says; run by hand after `scripts/test-env`, slot 0's.
pub struct TestHosts {
    /// The folder of the first remote host (bt-h2): its engine's socket, the client ssh_config.
    pub h2_dir: PathBuf,
    /// `ssh://bt-remote@127.0.0.1:PORT` of bt-h2.
    pub h2: String,
    pub h2_ssh_port: u16,
    /// The folder of the third host (bt-h3): its socket, state and TLS certificates.
    pub h3_dir: PathBuf,
    pub h3: String,
    pub h3_ssh_port: u16,
    /// bt-h3's engine over TLS, `tcp://127.0.0.1:PORT`.
    pub h3_tls: String,
    pub h3_tls_port: u16,
    pub swarm_dir: PathBuf,
    /// The swarm manager's address on the swarm's LAN (its sshd listens there).
    pub swarm_manager: String,
}

pub fn hosts() -> &'static TestHosts {
    static HOSTS: OnceLock<TestHosts> = OnceLock::new();
    HOSTS.get_or_init(|| TestHosts::from_vars(|name| std::env::var(name).ok()))
}

impl TestHosts {
    /// From the variables `scripts/test-env --print` names (`var` looks one up); slot 0's values
    /// for those it does not have.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str, default: &str| var(name).unwrap_or_else(|| default.into());
        let port = |name: &str, default: &str| {
            var(name, default)
                .parse::<u16>()
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let env_dir = var("BACKTRACK_TEST_ENV_DIR", "/var/lib/backtrack-test-env");
        let (h2_ssh_port, h3_ssh_port, h3_tls_port) = (
            port("BACKTRACK_TEST_REMOTE_SSH_PORT", "2222"),
            port("BACKTRACK_TEST_REMOTE3_SSH_PORT", "2223"),
            port("BACKTRACK_TEST_REMOTE3_TLS_PORT", "2376"),
        );
        TestHosts {
            h2_dir: var("BACKTRACK_TEST_REMOTE_DIR", &format!("{env_dir}/h2")).into(),
            h2: format!("ssh://bt-remote@127.0.0.1:{h2_ssh_port}"),
            h2_ssh_port,
            h3_dir: var("BACKTRACK_TEST_REMOTE3_DIR", &format!("{env_dir}/h3")).into(),
            h3: format!("ssh://bt-remote@127.0.0.1:{h3_ssh_port}"),
            h3_ssh_port,
            h3_tls: format!("tcp://127.0.0.1:{h3_tls_port}"),
            h3_tls_port,
            swarm_dir: var("BACKTRACK_TEST_SWARM_DIR", &format!("{env_dir}/swarm")).into(),
            swarm_manager: var("BACKTRACK_TEST_SWARM_MANAGER", "10.231.0.1"),
        }
    }
}

/// Fails loudly when a real service is missing.
pub fn require_services() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let docker = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output();
        assert!(
            docker.as_ref().is_ok_and(|o| o.status.success()),
            "no Docker Engine answers: run `scripts/test-env` (as root) first"
        );
        let url = format!("http://{}/v2/", registry());
        let ok = reqwest::blocking::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .is_ok_and(|r| r.status().is_success());
        assert!(
            ok,
            "no registry answers at {url}: run `scripts/test-env` (as root) first"
        );
    });
}

/// A unique, lowercase name for this test run.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("run docker")
}

pub fn docker_ok(args: &[&str]) -> String {
    ok_on(docker, "docker", args)
}

/// `engine(args)`, which must succeed (`what` names the engine when it does not); its stdout.
pub fn ok_on(engine: fn(&[&str]) -> Output, what: &str, args: &[&str]) -> String {
    let out = engine(args);
    assert!(
        out.status.success(),
        "{what} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Builds the busybox base image once per machine.
pub fn base_image() {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap();
    if *built {
        return;
    }
    if !docker(&["image", "inspect", BASE_IMAGE]).status.success() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy("/bin/busybox", dir.path().join("busybox"))
            .expect("copy /bin/busybox (apt-get install busybox-static)");
        std::fs::write(
            dir.path().join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\",\"--install\",\"-s\",\"/bin\"]\n",
        )
        .unwrap();
        docker_ok(&["build", "-q", "-t", BASE_IMAGE, dir.path().to_str().unwrap()]);
    }
    *built = true;
}

/// How a test image behaves.
#[derive(Debug, Clone)]
pub struct AppImage {
    pub version: String,
    /// Extra tags to push for the same image.
    pub tags: Vec<String>,
    /// `Some(true)`: a HEALTHCHECK that passes; `Some(false)`: one that always fails.
    pub healthcheck: Option<bool>,
    /// The process exits right away with this code instead of serving.
    pub crash: Option<i32>,
    pub revision: Option<String>,
    pub description: Option<String>,
    /// Bytes of random filler in a layer (for "large image" tests).
    pub filler_bytes: usize,
    /// A user the image knows (in /etc/passwd), for `docker run --user NAME`.
    pub user: Option<String>,
    /// More image labels.
    pub labels: Vec<(String, String)>,
    /// Seconds the app takes before it listens (a real app's boot).
    pub boot_secs: u32,
    /// It serves, but `/health` answers 404.
    pub health_404: bool,
}

impl AppImage {
    pub fn new(version: &str) -> Self {
        Self {
            version: version.into(),
            tags: vec![],
            healthcheck: None,
            crash: None,
            revision: None,
            description: None,
            filler_bytes: 0,
            user: None,
            labels: Vec::new(),
            boot_secs: 0,
            health_404: false,
        }
    }

    pub fn boot(mut self, secs: u32) -> Self {
        self.boot_secs = secs;
        self
    }

    /// Serves, but not `/health` (404): a version that takes connections and fails requests.
    pub fn health_404(mut self) -> Self {
        self.health_404 = true;
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.into(), value.into()));
        self
    }

    pub fn user(mut self, name: &str) -> Self {
        self.user = Some(name.into());
        self
    }

    pub fn healthcheck(mut self, passes: bool) -> Self {
        self.healthcheck = Some(passes);
        self
    }

    pub fn crash(mut self, code: i32) -> Self {
        self.crash = Some(code);
        self
    }

    pub fn revision(mut self, rev: &str) -> Self {
        self.revision = Some(rev.into());
        self
    }

    pub fn tag(mut self, tag: &str) -> Self {
        self.tags.push(tag.into());
        self
    }

    pub fn filler(mut self, bytes: usize) -> Self {
        self.filler_bytes = bytes;
        self
    }

    fn dockerfile(&self) -> String {
        let v = self.version.trim_start_matches('v');
        let mut f = format!(
            "FROM {BASE_IMAGE}\nRUN [\"/bin/sh\",\"-c\",\"mkdir -p /www && echo {v} > /www/health && echo ok > /www/index.html\"]\n"
        );
        if self.filler_bytes > 0 {
            f.push_str("COPY filler /filler\n");
        }
        if let Some(u) = &self.user {
            f.push_str(&format!(
                "RUN [\"/bin/sh\",\"-c\",\"mkdir -p /etc && echo {u}:x:1000:1000::/:/bin/sh > /etc/passwd\"]\n"
            ));
        }
        f.push_str(&format!("LABEL org.opencontainers.image.version=\"{v}\"\n"));
        for (k, val) in &self.labels {
            f.push_str(&format!("LABEL {k}=\"{val}\"\n"));
        }
        if let Some(r) = &self.revision {
            f.push_str(&format!("LABEL org.opencontainers.image.revision=\"{r}\"\n"));
        }
        if let Some(d) = &self.description {
            f.push_str(&format!("LABEL org.opencontainers.image.description=\"{d}\"\n"));
        }
        f.push_str(&format!("ENV APP_VERSION={v}\n"));
        match self.healthcheck {
            Some(true) => f.push_str(
                "HEALTHCHECK --interval=1s --timeout=1s --retries=2 CMD [\"/bin/wget\",\"-q\",\"-O\",\"/dev/null\",\"http://127.0.0.1:8080/health\"]\n",
            ),
            Some(false) => f.push_str("HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD [\"/bin/false\"]\n"),
            None => {}
        }
        match self.crash {
            Some(code) => f.push_str(&format!(
                "CMD [\"/bin/sh\",\"-c\",\"echo starting {v}; echo boom >&2; exit {code}\"]\n"
            )),
            None => {
                if self.health_404 {
                    f.push_str("RUN [\"/bin/rm\",\"/www/health\"]\n");
                }
                let boot = if self.boot_secs > 0 {
                    format!("sleep {}; ", self.boot_secs)
                } else {
                    String::new()
                };
                f.push_str(&format!(
                    "CMD [\"/bin/sh\",\"-c\",\"trap 'kill $pid; exit 0' TERM; {boot}echo serving; httpd -f -p 8080 -h /www & pid=$!; wait $pid\"]\n"
                ));
            }
        }
        f
    }
}

/// A repository of its own in the test registry.
pub struct Repo {
    /// Basic credentials for registries that want them.
    pub basic: Option<(String, String)>,
    pub name: String,
    /// `host:port` of the registry holding it (the shared test registry unless said otherwise).
    pub host: String,
}

impl Repo {
    pub fn new(test: &str) -> Self {
        require_services();
        Self {
            basic: None,
            name: format!("bt-test/{}", unique(test)),
            host: registry(),
        }
    }

    /// A repository in another registry (e.g. an `OwnRegistry`).
    pub fn in_registry(test: &str, host: &str) -> Self {
        Self {
            host: host.to_string(),
            ..Self::new(test)
        }
    }

    /// `host/name`.
    pub fn image(&self) -> String {
        format!("{}/{}", self.host, self.name)
    }

    /// Builds and pushes a version (and its extra tags); returns the pushed digest.
    pub fn push(&self, app: &AppImage) -> String {
        base_image();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), app.dockerfile()).unwrap();
        if app.filler_bytes > 0 {
            let mut data = vec![0u8; app.filler_bytes];
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ app.version.len() as u64;
            for b in data.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            std::fs::write(dir.path().join("filler"), data).unwrap();
        }
        let main = format!("{}:{}", self.image(), app.version);
        docker_ok(&["build", "-q", "-t", &main, dir.path().to_str().unwrap()]);
        let digest = push_and_digest(&main);
        for t in &app.tags {
            let other = format!("{}:{t}", self.image());
            docker_ok(&["tag", &main, &other]);
            push_and_digest(&other);
        }
        digest
    }

    /// The digest a tag points to in the registry, by asking it directly.
    pub fn tag_digest(&self, tag: &str) -> Option<String> {
        let url = format!("http://{}/v2/{}/manifests/{tag}", self.host, self.name);
        let mut request = reqwest::blocking::Client::new().head(url);
        if let Some((user, password)) = &self.basic {
            request = request.basic_auth(user, Some(password));
        }
        let resp = request
            .header(
                "Accept",
                "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, \
                 application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json",
            )
            .send()
            .unwrap();
        resp.status()
            .is_success()
            .then(|| resp.headers()["docker-content-digest"].to_str().unwrap().to_string())
    }

    pub fn tags(&self) -> Vec<String> {
        let url = format!("http://{}/v2/{}/tags/list", self.host, self.name);
        let v: serde_json::Value = reqwest::blocking::get(url).unwrap().json().unwrap();
        let mut tags: Vec<String> = v["tags"]
            .as_array()
            .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        tags.sort();
        tags
    }
}

fn push_and_digest(reference: &str) -> String {
    let out = docker_ok(&["push", reference]);
    out.lines()
        .find_map(|l| l.split_whitespace().skip_while(|w| *w != "digest:").nth(1))
        .unwrap_or_else(|| panic!("no digest in push output of {reference}: {out}"))
        .to_string()
}

/// Runs `image` the way a user would (`docker run -d -p 127.0.0.1:PORT:8080 ... image`) under a
/// fresh name, labelled for cleanup, and waits until it answers; returns (name, port).
pub fn run_app(image: &str, containers: &Containers, extra: &[&str]) -> (String, u16) {
    let name = unique("bt-app");
    let port = free_port();
    let label = containers.label();
    let publish = format!("127.0.0.1:{port}:8080");
    let mut args = vec!["run", "-d", "--name", &name, "--label", &label, "-p", &publish];
    args.extend_from_slice(extra);
    args.push(image);
    docker_ok(&args);
    wait_http(&format!("http://127.0.0.1:{port}/health"), Duration::from_secs(10));
    (name, port)
}

/// Containers (and their backups) a test made, removed when it ends.
pub struct Containers {
    label: String,
}

impl Containers {
    pub fn new() -> Self {
        Self { label: unique("bt") }
    }

    /// The label to put on containers so they are cleaned up.
    pub fn label(&self) -> String {
        format!("backtrack-test={}", self.label)
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let ids = docker_ok(&["ps", "-aq", "--filter", &format!("label={}", self.label())]);
        for id in ids.lines().filter(|l| !l.is_empty()) {
            docker(&["rm", "-f", id]);
        }
    }
}

/// Runs `backtrack` in a sandbox: its own config, state dir, cache dir and docker config.
pub struct Test {
    pub dir: tempfile::TempDir,
    config: Option<String>,
    args: Vec<String>,
    env: BTreeMap<String, String>,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn success(self) -> Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn code(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "wrong exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

impl Test {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            config: None,
            args: vec![],
            env: BTreeMap::new(),
        }
    }

    /// A config for `repo` (plus any more TOML, e.g. a [target] section).
    pub fn repo(self, repo: &Repo, more: &str) -> Self {
        let toml = format!(
            "[registry]\nurl = \"{}\"\nrepository = \"{}\"\n{more}",
            repo.host, repo.name
        );
        self.config(&toml)
    }

    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.args = args.into_iter().map(|a| a.as_ref().to_string()).collect();
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }

    pub fn without_env(mut self, k: &str) -> Self {
        self.env.remove(k);
        self
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The state folder of a container target on the local engine (journal, lock).
    pub fn target_state_dir(&self, container: &str) -> PathBuf {
        self.state_dir()
            .join("targets")
            .join(format!("local_container_{container}"))
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("backtrack.toml")
    }

    pub fn command(&self) -> Command {
        if let Some(c) = &self.config {
            std::fs::write(self.config_path(), c).unwrap();
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_backtrack"));
        cmd.current_dir(self.dir.path())
            .env_remove("BACKTRACK_CONFIG")
            .env("BACKTRACK_STATE_DIR", self.state_dir())
            .env("BACKTRACK_CACHE_DIR", self.dir.path().join("cache"))
            .env("DOCKER_CONFIG", self.dir.path().join("docker-config"))
            .env("NO_COLOR", "1")
            .envs(&self.env);
        cmd
    }

    /// Runs `backtrack ARGS` in this sandbox (the builder's own args are ignored).
    pub fn exec<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.spawn_with(args.into_iter().map(|a| a.as_ref().to_string()).collect())
    }

    pub fn run(&self) -> Run {
        self.spawn_with(self.args.clone())
    }

    fn spawn_with(&self, args: Vec<String>) -> Run {
        let mut cmd = self.command();
        cmd.args(&args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn backtrack");
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }
}

/// GETs `url` and returns the body, or `None` when it does not answer 2xx.
pub fn http_get(url: &str) -> Option<String> {
    let resp = reqwest::blocking::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .ok()?;
    resp.status().is_success().then(|| resp.text().unwrap_or_default())
}

/// Waits (bounded) until `url` answers 2xx; returns the body.
pub fn wait_http(url: &str, within: Duration) -> String {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(body) = http_get(url) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{url} did not answer within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP proxy in front of the registry that counts the bytes clients send through it, and can be
/// shut to play a registry that went down (without stopping the one other tests share).
pub struct CountingProxy {
    pub addr: String,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CountingProxy {
    pub fn start() -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let sent = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicBool::new(true));
        let (sent2, open2) = (sent.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !open2.load(Ordering::SeqCst) {
                    drop(client); // the "registry" is down: connections die at once
                    continue;
                }
                let Ok(upstream) = std::net::TcpStream::connect(registry()) else {
                    continue;
                };
                let (mut c_read, mut c_write) = (client.try_clone().unwrap(), client);
                let (mut u_read, mut u_write) = (upstream.try_clone().unwrap(), upstream);
                let counter = sent2.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    loop {
                        match std::io::Read::read(&mut c_read, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                counter.fetch_add(n as u64, Ordering::SeqCst);
                                if std::io::Write::write_all(&mut u_write, &buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = u_write.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut u_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Self { addr, sent, open }
    }

    /// Bytes sent by clients to the registry so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// From now on the registry behind this address is unreachable.
    pub fn shut(&self) {
        self.open.store(false, Ordering::SeqCst);
    }
}

impl Repo {
    /// Pushes a small image straight over the registry API (no Docker): one shared layer, a config
    /// of its own (so a distinct digest) with `labels` and `created`. Returns the manifest digest.
    /// Not runnable: for catalog and retention tests that need many versions fast.
    pub fn push_synthetic(&self, tags: &[&str], created: &str) -> String {
        let http = reqwest::blocking::Client::new();
        let authed = |r: reqwest::blocking::RequestBuilder| match &self.basic {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        };
        let base = format!("http://{}/v2/{}", self.host, self.name);
        let upload = |bytes: &[u8]| -> String {
            use sha2::Digest as _;
            let digest = format!("sha256:{:x}", sha2::Sha256::digest(bytes));
            let start = authed(http.post(format!("{base}/blobs/uploads/"))).send().unwrap();
            assert_eq!(start.status().as_u16(), 202, "start upload: {:?}", start.text());
            let location = start.headers()["location"].to_str().unwrap().to_string();
            let url = if location.starts_with("http") {
                location
            } else {
                format!("http://{}{location}", self.host)
            };
            let sep = if url.contains('?') { '&' } else { '?' };
            let put = authed(http.put(format!("{url}{sep}digest={digest}")))
                .body(bytes.to_vec())
                .send()
                .unwrap();
            assert_eq!(put.status().as_u16(), 201, "finish upload: {:?}", put.text());
            digest
        };
        let layer = b"backtrack synthetic layer";
        let layer_digest = upload(layer);
        let version = tags.iter().find_map(|t| t.strip_prefix('v')).unwrap_or("none");
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux", "created": created,
            "config": {"Labels": {"org.opencontainers.image.version": version, "test.tags": tags.join(",")}},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        })
        .to_string();
        let config_digest = upload(config.as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": config.len(), "digest": config_digest},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": layer.len(), "digest": layer_digest}],
        })
        .to_string();
        let mut digest = String::new();
        for tag in tags {
            let resp = authed(http.put(format!("{base}/manifests/{tag}")))
                .header("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
                .body(manifest.clone())
                .send()
                .unwrap();
            assert_eq!(resp.status().as_u16(), 201, "put manifest {tag}: {:?}", resp.text());
            digest = resp.headers()["docker-content-digest"].to_str().unwrap().to_string();
        }
        digest
    }
}

/// A Distribution registry of the test's own, on a free loopback port (for configurations the
/// shared one does not have, such as deletes disabled). Stopped when dropped.
pub struct OwnRegistry {
    pub addr: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl OwnRegistry {
    pub fn start(deletes: bool) -> Self {
        Self::start_with(deletes, None)
    }

    /// With `htpasswd` (a line `user:bcrypt-hash`), the registry wants basic credentials.
    pub fn start_with(deletes: bool, htpasswd: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: {deletes}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some(line) = htpasswd {
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, format!("{line}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: backtrack-test\n    path: {}\n",
                path.display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", dir.path().join("config.yml").to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry, or scripts/test-env)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let up = |addr: &str| std::net::TcpStream::connect(addr).is_ok();
        while !up(&addr) {
            assert!(std::time::Instant::now() < deadline, "own registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { addr, child, _dir: dir }
    }
}

impl Drop for OwnRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Test {
    /// Runs `backtrack ARGS` on a real terminal (util-linux `script`), answering each step's text
    /// once the screen shows the step's prompt (an answer of "\x03" is Ctrl-C). Returns the
    /// screen, the exit code and how long the run took after the last answer.
    pub fn on_terminal(&self, args: &str, steps: &[(&str, &str)]) -> (String, i32, Duration) {
        use std::io::{Read, Write};
        let cmd = self.command();
        let program = format!("{} {args}", env!("CARGO_BIN_EXE_backtrack"));
        let mut script = Command::new("script");
        script
            .args(["-qec", &program, "/dev/null"])
            .current_dir(self.dir.path());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => script.env(k, v),
                None => script.env_remove(k),
            };
        }
        let mut child = script
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("script (util-linux)");
        let mut out = child.stdout.take().unwrap();
        let screen = std::sync::Arc::new(Mutex::new(String::new()));
        let reader = {
            let screen = screen.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    screen.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        };
        let mut stdin = child.stdin.take().unwrap();
        for (wait_for, answer) in steps {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !screen.lock().unwrap().contains(wait_for) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never saw {wait_for:?}: {}",
                    screen.lock().unwrap()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            // The prompt is on screen; backtrack waits for its line.
            std::thread::sleep(Duration::from_millis(100));
            stdin.write_all(answer.as_bytes()).unwrap();
            stdin.flush().unwrap();
            screen.lock().unwrap().push_str("\n<answered>\n");
        }
        let started = std::time::Instant::now();
        let status = child.wait().unwrap();
        drop(stdin);
        reader.join().unwrap();
        let text = screen.lock().unwrap().clone();
        (text, status.code().unwrap_or(-1), started.elapsed())
    }
}

/// A docker-compose project in a folder of its own, taken `down` when dropped.
pub struct ComposeProject {
    pub dir: tempfile::TempDir,
    pub name: String,
}

impl ComposeProject {
    /// Writes `docker-compose.yml` (and `.env` when given) under a fresh project name.
    pub fn new(prefix: &str, compose_yml: &str, env: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("docker-compose.yml"), compose_yml).unwrap();
        if let Some(env) = env {
            std::fs::write(dir.path().join(".env"), env).unwrap();
        }
        Self {
            dir,
            name: unique(prefix).replace('-', ""),
        }
    }

    /// Runs `docker-compose -p NAME ARGS` in the project's folder; it must succeed.
    pub fn run(&self, args: &[&str]) {
        let out = Command::new("docker-compose")
            .args(["-p", &self.name])
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("docker-compose (apt-get install docker-compose)");
        assert!(
            out.status.success(),
            "docker-compose {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let _ = Command::new("docker-compose")
            .args(["-p", &self.name, "down"])
            .current_dir(self.dir.path())
            .output();
    }
}

/// The Caddy image `scripts/test-env` builds (Debian's caddy in a scratch image).
pub fn caddy_image() -> String {
    let image = std::env::var("BACKTRACK_TEST_CADDY_IMAGE").unwrap_or_else(|_| "backtrack-test-caddy:2.6".into());
    assert!(
        docker(&["image", "inspect", &image]).status.success(),
        "no image {image}: run `scripts/test-env` (as root) first, it builds it"
    );
    image
}

/// The proxy's config: the README's (Caddy following Docker's DNS for the alias `web`, port 8080,
/// refreshed every second, short dial timeout, retries round robin).
pub const CADDYFILE: &str = "{\n\tadmin off\n\tauto_https off\n}\n:80 {\n\treverse_proxy {\n\t\tdynamic a web 8080 {\n\t\t\trefresh 1s\n\t\t}\n\
     \t\tlb_try_duration 5s\n\t\tlb_try_interval 50ms\n\t\tlb_policy round_robin\n\t\ttransport http {\n\t\t\tdial_timeout 100ms\n\t\t}\n\t}\n}\n";

/// A reverse proxy in front of containers, the way a small team runs one: Caddy on a user-defined
/// network of its own, following Docker's DNS for the alias `web` (port 8080), with a short dial
/// timeout and retries; published on a free loopback port of the engine's host. Removed with its
/// network, and whatever else is still on it, when dropped.
pub struct Proxy {
    pub network: String,
    pub port: u16,
    pub name: String,
    /// `docker` against the engine the proxy runs on (ours, or a remote host's).
    engine: fn(&[&str]) -> Output,
    _dir: tempfile::TempDir,
}

impl Proxy {
    pub fn start() -> Self {
        Self::start_on(docker)
    }

    /// On the engine `engine` reaches, which must have the Caddy image.
    pub fn start_on(engine: fn(&[&str]) -> Output) -> Self {
        let ok = |args: &[&str]| ok_on(engine, "docker", args);
        let image = caddy_image();
        let network = unique("bt-proxynet");
        ok(&["network", "create", &network]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Caddyfile"), CADDYFILE).unwrap();
        let name = unique("bt-proxy");
        let port = free_port();
        let mount = format!("{}/Caddyfile:/etc/caddy/Caddyfile:ro", dir.path().display());
        ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &network,
            "-p",
            &format!("127.0.0.1:{port}:80"),
            "-v",
            &mount,
            &image,
            "run",
            "--config",
            "/etc/caddy/Caddyfile",
            "--adapter",
            "caddyfile",
        ]);
        Self {
            network,
            port,
            name,
            engine,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/health", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let engine = self.engine;
        engine(&["rm", "-f", &self.name]);
        // Whatever else is still on the network (a test that failed halfway) goes with it.
        let left = engine(&["ps", "-aq", "--filter", &format!("network={}", self.network)]);
        for id in String::from_utf8_lossy(&left.stdout).lines().filter(|l| !l.is_empty()) {
            engine(&["rm", "-f", id]);
        }
        engine(&["network", "rm", &self.network]);
    }
}

/// What a client saw while it sent GET requests every 10 ms.
#[derive(Debug, Default, Clone)]
pub struct Traffic {
    pub requests: usize,
    /// Requests that got no 2xx answer within 3 s, with when they were sent (ms after the start)
    /// and what happened.
    pub failures: Vec<(u128, String)>,
    pub longest: Duration,
    /// The bodies seen, in order, each once per run of equal answers.
    pub bodies: Vec<String>,
}

/// GETs a URL every 10 ms on a thread of its own until stopped.
pub struct Poller {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Traffic>>,
}

impl Poller {
    pub fn start(url: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (url, flag) = (url.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .unwrap();
            let started = std::time::Instant::now();
            let mut t = Traffic::default();
            // Bounded whatever happens to the test.
            while !flag.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(180) {
                let sent = std::time::Instant::now();
                let answer = client.get(&url).send();
                let took = sent.elapsed();
                t.requests += 1;
                t.longest = t.longest.max(took);
                let at = sent.duration_since(started).as_millis();
                match answer {
                    Ok(r) if r.status().is_success() => {
                        let body = r.text().unwrap_or_default().trim().to_string();
                        if t.bodies.last() != Some(&body) {
                            t.bodies.push(body);
                        }
                    }
                    Ok(r) => t.failures.push((at, format!("HTTP {}", r.status().as_u16()))),
                    Err(e) => t.failures.push((at, e.to_string())),
                }
                std::thread::sleep(Duration::from_millis(10).saturating_sub(sent.elapsed()));
            }
            t
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> Traffic {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// A TCP relay on loopback that adds `rtt` of round-trip time (half each way, every chunk in
/// order) in front of `target_port`: a host across a network, for what backtrack does only when
/// a round trip costs more than starting a program on the host (the swap's gate, a `curl`
/// probe). Runs until the test ends.
pub struct Latency {
    pub port: u16,
}

impl Latency {
    pub fn in_front_of(target_port: u16, rtt: Duration) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || relay(from, to, rtt / 2));
                }
            }
        });
        Self { port }
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read (a reader thread and a writer
/// thread, so a chunk's delay does not add to the next one's).
fn relay(mut from: std::net::TcpStream, mut to: std::net::TcpStream, delay: Duration) {
    use std::io::{Read, Write};
    let _ = from.set_nodelay(true);
    let _ = to.set_nodelay(true);
    let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (due, chunk) in rx {
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = [0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || tx.send((std::time::Instant::now() + delay, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.join();
}
