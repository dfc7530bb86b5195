//! Remote hosts over SSH, against the "remote host" `scripts/test-env` starts: a second Docker
//! Engine and an sshd in network namespace bt-h2, reached only through ssh on 127.0.0.1:2222 (in
//! slot 0; `harness::hosts()` has this run's; user `bt-remote`, key and known_hosts in an
//! ssh_config of the test env's own; ~/.ssh is never used).
//! The engine, the health probe (the host's loopback, which this machine cannot reach) and the
//! target's journal and lock are all on that host; the local engine is never touched.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{AppImage, Proxy, Repo, Test, docker, free_port, hosts, unique};

/// Where test-env keeps the remote host (`scripts/test-env --print`).
pub(crate) fn remote_dir() -> PathBuf {
    crate::harness::hosts().h2_dir.clone()
}

pub(crate) fn ssh_config() -> PathBuf {
    remote_dir().join("client/ssh_config")
}

/// Fails loudly when the remote host is not there.
fn require_remote() {
    let ok = Command::new("ssh")
        .args([
            "-F",
            ssh_config().to_str().unwrap(),
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
        ])
        .args([
            "-p",
            &hosts().h2_ssh_port.to_string(),
            "bt-remote@127.0.0.1",
            "docker version --format '{{.Server.Version}}'",
        ])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the remote host ({} with {}) does not answer: run `scripts/test-env` (as root) first",
        hosts().h2,
        ssh_config().display()
    );
}

/// `docker` against the remote host's engine (the test's own view; backtrack goes through ssh).
pub(crate) fn h2(args: &[&str]) -> Output {
    docker(
        &[
            &["-H", &format!("unix://{}", remote_dir().join("docker.sock").display())],
            args,
        ]
        .concat(),
    )
}

pub(crate) fn h2_ok(args: &[&str]) -> String {
    crate::harness::ok_on(h2, "docker (remote host)", args)
}

/// What the app in container `name` on the remote host serves at /health (asked from inside it).
pub(crate) fn serves(name: &str) -> String {
    let out = h2(&["exec", name, "wget", "-qO-", "http://127.0.0.1:8080/health"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn containers_named(prefix: &str, engine: fn(&[&str]) -> Output) -> Vec<String> {
    let out = engine(&[
        "ps",
        "-a",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("name={prefix}"),
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// A container on the remote host, publishing 8080 on the host's loopback only; removed (with
/// whatever backtrack set aside beside it) when the test ends.
struct RemoteApp {
    name: String,
    port: u16,
}

impl RemoteApp {
    fn run(image: &str) -> Self {
        Self::run_with(image, &[])
    }

    /// `docker run` on the host with `extra` options before the image.
    fn run_with(image: &str, extra: &[&str]) -> Self {
        let name = unique("bt-remote-app");
        let port = free_port();
        let publish = format!("127.0.0.1:{port}:8080");
        h2_ok(&[&["run", "-d", "--name", &name, "-p", &publish][..], extra, &[image]].concat());
        let deadline = Instant::now() + Duration::from_secs(20);
        while serves(&name).is_empty() {
            assert!(Instant::now() < deadline, "{name} did not serve on the remote host");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { name, port }
    }

    /// The target's state folder on the remote host.
    fn state_dir(&self) -> PathBuf {
        remote_dir().join(format!(
            "home-bt-remote/.local/state/backtrack/targets/local_container_{}",
            self.name
        ))
    }

    fn journal(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("history.jsonl")).unwrap_or_default()
    }

    /// Waits until a swap is half done: its intent is on the host and the old container is set
    /// aside.
    fn wait_mid_swap(&self) {
        wait_until("the swap starts", Duration::from_secs(30), || {
            self.journal().contains("\"started\"")
                && !containers_named(&format!("{}-backtrack-prev", self.name), h2).is_empty()
        });
    }
}

impl Drop for RemoteApp {
    fn drop(&mut self) {
        for n in containers_named(&self.name, h2) {
            h2(&["rm", "-f", &n]);
        }
        let _ = std::fs::remove_dir_all(self.state_dir());
    }
}

/// A sandbox whose target is `app` on the remote host at `host` (an ssh:// address).
fn remote_test(repo: &Repo, app: &RemoteApp, host: &str, health_path: &str, timeout: &str) -> Test {
    Test::new()
        .repo(
            repo,
            &format!(
                "[target]\nkind = \"container\"\nname = \"{}\"\nhost = \"{host}\"\n[health]\nhttp = \"http://127.0.0.1:{}{health_path}\"\ntimeout = \"{timeout}\"\n",
                app.name, app.port
            ),
        )
        .env("BACKTRACK_SSH_CONFIG", ssh_config().to_str().unwrap())
}

/// The remote host's `ssh://` address (this run's slot).
pub(crate) fn host() -> &'static str {
    &hosts().h2
}

/// `remote_test` on the host reached through a 10 ms latency relay: across a network, where the
/// swap's steps go as one pipeline behind the gate. The relay lives as long as the second value.
fn far_remote_test(repo: &Repo, app: &RemoteApp) -> (Test, crate::harness::Latency) {
    let far = crate::harness::Latency::in_front_of(hosts().h2_ssh_port, Duration::from_millis(10));
    let address = format!("ssh://bt-remote@127.0.0.1:{}", far.port);
    (remote_test(repo, app, &address, "/health", "20s"), far)
}

fn pushed(test: &str, versions: &[&str]) -> Repo {
    crate::harness::require_services();
    require_remote();
    let repo = Repo::new(test);
    for v in versions {
        repo.push(&AppImage::new(v));
    }
    repo
}

#[test]
fn remote_deploy_rollback_emergency_and_status_act_on_the_host_only() {
    let repo = pushed("remote", &["v1.0.0", "v1.1.0"]);
    let app = RemoteApp::run(&format!("{}:v1.0.0", repo.image()));
    let t = remote_test(&repo, &app, host(), "/health", "20s");

    let status = t.exec(["status", "--output", "json"]).success().json();
    assert_eq!(status["containers"][0]["version"], "1.0.0", "{status}");
    t.exec(["deploy", "v1.1.0", "--yes"]).success();
    assert_eq!(serves(&app.name), "1.1.0");
    let versions = t.exec(["versions", "--output", "json"]).success();
    assert!(versions.stdout.contains("deployed"), "{}", versions.stdout);
    t.exec(["rollback", "--yes"]).success();
    assert_eq!(serves(&app.name), "1.0.0");
    t.exec(["mark-good", "--yes"]).success();
    t.exec(["validate"]).success();
    let run = t.exec(["emergency", "--yes"]).success();
    assert!(run.stdout.contains("1.0.0"), "{}", run.stdout);
    assert_eq!(serves(&app.name), "1.0.0");

    // Everything happened over there: the local engine has none of it, and the history is on
    // the host, not in this machine's state folder.
    assert!(containers_named(&app.name, docker).is_empty());
    let journal = app.journal();
    for op in ["\"deploy\"", "\"rollback\"", "\"mark-good\"", "\"emergency\""] {
        assert!(journal.contains(op), "{op} not in the host's journal:\n{journal}");
    }
    assert!(app.state_dir().join("target.json").is_file());
    assert!(!t.state_dir().join("targets").exists(), "local state was written");
    let h = t.exec(["history", "--output", "json"]).success().json();
    assert_eq!(h["operations"].as_array().unwrap().len(), 4, "{h}");
    // Only a cache here: the engine socket the host named (its DOCKER_HOST), forwarded from the
    // start of the next connection.
    let memo = t.state_dir().with_file_name("cache").join("ssh-engines");
    let named: Vec<String> = std::fs::read_dir(&memo)
        .unwrap_or_else(|e| panic!("{}: {e}", memo.display()))
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .collect();
    assert_eq!(named, [remote_dir().join("docker.sock").display().to_string()]);
}

/// The engine socket remembered from the last run is reached while the next run's session
/// starts; a memo the host no longer agrees with costs nothing but that early attempt.
#[test]
fn a_remembered_engine_socket_is_used_ahead_and_a_stale_one_is_corrected() {
    let repo = pushed("remotememo", &["v1.0.0"]);
    let app = RemoteApp::run(&format!("{}:v1.0.0", repo.image()));
    let t = remote_test(&repo, &app, host(), "/health", "20s").env("BACKTRACK_LOG", "backtrack=debug");
    let ahead = "was reached while the session started";
    let first = t.exec(["status"]).success();
    assert!(
        !first.stderr.contains(ahead),
        "nothing was remembered yet: {}",
        first.stderr
    );
    let second = t.exec(["status"]).success();
    assert!(second.stderr.contains(ahead), "{}", second.stderr);
    let memo = t.state_dir().with_file_name("cache").join("ssh-engines");
    let files: Vec<_> = std::fs::read_dir(&memo).unwrap().map(|f| f.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    std::fs::write(&files[0], "/var/run/nothing-here.sock").unwrap();
    let stale = t.exec(["status", "--output", "json"]).success();
    assert!(!stale.stderr.contains(ahead), "{}", stale.stderr);
    assert_eq!(stale.json()["containers"][0]["version"], "1.0.0");
    assert_eq!(
        std::fs::read_to_string(&files[0]).unwrap(),
        remote_dir().join("docker.sock").display().to_string()
    );
}

#[test]
fn remote_probe_reaches_the_hosts_loopback_not_ours() {
    let repo = pushed("remoteprobe", &["v1.0.0", "v1.1.0"]);
    let app = RemoteApp::run(&format!("{}:v1.0.0", repo.image()));
    // Nothing answers on this machine's loopback at that port: only the host's has the app.
    assert!(crate::harness::http_get(&format!("http://127.0.0.1:{}/health", app.port)).is_none());
    let t = remote_test(&repo, &app, host(), "/health", "20s");
    let run = t.exec(["validate", "--output", "json"]).success();
    assert!(
        run.stdout.contains(&format!("127.0.0.1:{}", app.port)),
        "{}",
        run.stdout
    );
    // A probe that fails on the host reverts the swap there.
    let bad = remote_test(&repo, &app, host(), "/missing", "3s");
    let run = bad.exec(["deploy", "v1.1.0", "--yes"]).code(6);
    assert!(run.stderr.contains("HTTP 404"), "{}", run.stderr);
    assert_eq!(serves(&app.name), "1.0.0");
}

/// Waits (bounded) until `cond` holds.
fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_operators_contend_for_the_remote_lock() {
    let repo = pushed("remotelock", &["v1.0.0", "v1.1.0"]);
    let app = RemoteApp::run(&format!("{}:v1.0.0", repo.image()));
    // Operator A's deploy validates against a path that is never healthy: it holds the lock
    // on the host for the whole timeout, then reverts.
    let a = remote_test(&repo, &app, host(), "/missing", "6s");
    let b = remote_test(&repo, &app, host(), "/health", "20s");
    assert_ne!(a.state_dir(), b.state_dir());
    let mut a_run = a
        .command()
        .args(["deploy", "v1.1.0", "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let holder = app.state_dir().join("holder.json");
    wait_until("operator A takes the lock", Duration::from_secs(20), || {
        std::fs::metadata(&holder).is_ok_and(|m| m.len() > 0)
    });
    let run = b.exec(["rollback", "v1.0.0", "--yes"]).code(5);
    assert!(
        run.stderr.contains("backtrack deploy v1.1.0") && run.stderr.contains(&format!("pid {}", a_run.id())),
        "the loser must name the holder: {}",
        run.stderr
    );
    // Another writer of the same journal (mark-good appends to it) is refused cleanly too.
    let mark = b.exec(["mark-good", "v1.0.0"]).code(5);
    assert!(mark.stderr.contains("backtrack deploy v1.1.0"), "{}", mark.stderr);
    assert_eq!(
        repo.tag_digest("last_known_good"),
        None,
        "the refused mark moved nothing"
    );
    let status = b.exec(["status"]).success();
    assert!(
        status.stdout.contains("in progress") || status.stderr.contains("in progress"),
        "{}{}",
        status.stdout,
        status.stderr
    );
    assert_eq!(a_run.wait().unwrap().code(), Some(6));
    // The journal on the host holds whole records only, and none of the refused mark.
    let journal = app.journal();
    assert!(
        journal
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{journal}"
    );
    assert!(!journal.contains("\"mark-good\""), "{journal}");
    // One history on the host: B sees A's reverted deploy, and may act now.
    let h = b.exec(["history", "--output", "json"]).success().json();
    assert_eq!(h["operations"].as_array().unwrap().len(), 1, "{h}");
    b.exec(["deploy", "v1.1.0", "--yes"]).success();
    assert_eq!(serves(&app.name), "1.1.0");
}

/// Regression (#29): a second appender to a remote journal while a process on the host holds its
/// lock (backtrack run on the host itself takes the same flock) is refused cleanly: exit 5 at
/// once, nothing moved, the journal byte for byte as it was; it acts once the lock is free.
#[test]
fn a_second_appender_to_a_remote_journal_is_refused_while_a_process_on_the_host_holds_the_lock() {
    let repo = pushed("remoteappend", &["v1.0.0", "v1.1.0"]);
    let app = RemoteApp::run(&format!("{}:v1.0.0", repo.image()));
    let t = remote_test(&repo, &app, host(), "/health", "20s");
    t.exec(["deploy", "v1.1.0", "--yes"]).success();
    let (journal, pointer) = (app.journal(), repo.tag_digest("last_known_good"));
    let lock = std::fs::OpenOptions::new()
        .append(true)
        .open(app.state_dir().join("lock"))
        .expect("the target's lock file on the host");
    lock.lock().unwrap();
    for (args, what) in [
        (&["mark-good", "v1.0.0"][..], "mark-good"),
        (&["rollback", "--yes"][..], "rollback"),
        (&["deploy", "v1.0.0", "--yes"][..], "deploy"),
    ] {
        let started = Instant::now();
        let run = t.exec(args.iter().copied()).code(5);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} waited {:?}",
            started.elapsed()
        );
        assert!(run.stderr.contains("lock"), "{what}: {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{what}: {}", run.stderr);
        assert_eq!(app.journal(), journal, "{what} wrote to the journal without the lock");
    }
    assert_eq!(serves(&app.name), "1.1.0");
    assert_eq!(
        repo.tag_digest("last_known_good"),
        pointer,
        "a refused mark moved the pointer"
    );
    drop(lock);
    t.exec(["rollback", "--yes"]).success();
    assert_eq!(serves(&app.name), "1.0.0");
    let after = app.journal();
    assert!(
        after.starts_with(&journal)
            && after
                .lines()
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{after}"
    );
    let h = t.exec(["history", "--output", "json"]).success().json();
    assert_eq!(h["operations"].as_array().unwrap().len(), 2, "{h}");
}

/// A TCP proxy in front of the remote host's sshd whose connections can be cut at once, as a
/// dropped network would.
pub(crate) struct CuttableProxy {
    pub(crate) port: u16,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl CuttableProxy {
    pub(crate) fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (upstream, streams) = (upstream.to_string(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                {
                    let mut s = streams.lock().unwrap();
                    s.push(client.try_clone().unwrap());
                    s.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { port, open }
    }

    pub(crate) fn cut(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn ssh_connection_dropped_mid_swap_is_settled_by_the_next_run() {
    let repo = pushed("remotedrop", &["v1.0.0", "v1.1.0"]);
    let app = RemoteApp::run(&format!("{}:v1.0.0", repo.image()));
    let proxy = CuttableProxy::start(&format!("127.0.0.1:{}", hosts().h2_ssh_port));
    let a = remote_test(
        &repo,
        &app,
        &format!("ssh://bt-remote@127.0.0.1:{}", proxy.port),
        "/missing",
        "30s",
    );
    let mut a_run = a
        .command()
        .args(["deploy", "v1.1.0", "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    app.wait_mid_swap();
    proxy.cut();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = a_run.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "backtrack did not notice the dropped connection"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    a_run.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");

    // The next run, from another machine (state folder), settles it from the host's journal.
    let b = remote_test(&repo, &app, host(), "/health", "20s");
    let st = b.exec(["status"]).success();
    assert!(
        format!("{}{}", st.stdout, st.stderr).contains("did not finish"),
        "{}{}",
        st.stdout,
        st.stderr
    );
    let run = b.exec(["deploy", "v1.1.0", "--yes"]).success();
    assert!(
        run.stderr.contains("settl") || run.stdout.contains("settl"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(serves(&app.name), "1.1.0");
    assert_eq!(containers_named(&app.name, h2), std::slice::from_ref(&app.name));
}

/// A Ctrl-C at a terminal goes to the whole foreground process group: backtrack's `ssh` children
/// must not be in it, or the interrupted swap loses the host it has to put back.
#[test]
fn ctrl_c_at_the_terminal_reaches_only_backtrack_which_puts_the_remote_version_back() {
    use std::os::unix::process::CommandExt;
    let repo = pushed("remotesigint", &["v1.0.0", "v1.1.0"]);
    let app = RemoteApp::run(&format!("{}:v1.0.0", repo.image()));
    let t = remote_test(&repo, &app, host(), "/missing", "60s");
    let mut run = t
        .command()
        .args(["deploy", "v1.1.0", "--yes"])
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    app.wait_mid_swap();
    // As the terminal does: SIGINT to every process of the group.
    let group = format!("-{}", run.id());
    let killed = std::process::Command::new("kill")
        .args(["-INT", "--", &group])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = run.wait().unwrap();
    let mut stderr = String::new();
    run.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(serves(&app.name), "1.0.0", "{stderr}");
    assert_eq!(containers_named(&app.name, h2), std::slice::from_ref(&app.name));
    let h = t.exec(["history", "--output", "json"]).success().json();
    assert_eq!(h["operations"][0]["result"], "reverted", "{h}");
}

#[test]
fn unknown_host_key_is_refused_and_never_added() {
    require_remote();
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("known_hosts");
    std::fs::write(&known, "").unwrap();
    let config = std::fs::read_to_string(ssh_config())
        .unwrap()
        .replace(
            &format!(
                "UserKnownHostsFile {}",
                remote_dir().join("client/known_hosts").display()
            ),
            &format!("UserKnownHostsFile {}", known.display()),
        )
        .replace("HostKeyAlias bt-h2-remote", "");
    let config_path = dir.path().join("ssh_config");
    std::fs::write(&config_path, config).unwrap();
    let t = Test::new()
        .config(&format!(
            "[registry]\nurl = \"{}\"\nrepository = \"none\"\n[target]\nkind = \"container\"\nname = \"web\"\nhost = \"{}\"\n",
            crate::harness::registry(),
            host()
        ))
        .env("BACKTRACK_SSH_CONFIG", config_path.to_str().unwrap());
    let start = Instant::now();
    let run = t.exec(["status"]).code(10);
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(run.stderr.contains("host key is not in known_hosts"), "{}", run.stderr);
    let keyscan = format!("ssh-keyscan -p {} 127.0.0.1", hosts().h2_ssh_port);
    assert!(run.stderr.contains(&keyscan), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&known).unwrap(), "", "a host key was accepted");
}

#[test]
fn remote_failures_are_one_line_with_the_fix_and_bounded() {
    require_remote();
    let config = |host: &str| {
        Test::new()
            .config(&format!(
                "[registry]\nurl = \"{}\"\nrepository = \"none\"\n[target]\nkind = \"container\"\nname = \"web\"\nhost = \"{host}\"\n",
                crate::harness::registry()
            ))
            .env("BACKTRACK_SSH_CONFIG", ssh_config().to_str().unwrap())
            .env("BACKTRACK_CONNECT_TIMEOUT", "2s")
    };
    // No docker permission for this user on the host.
    let run = config(&host().replace("bt-remote@", "bt-nodocker@"))
        .exec(["status"])
        .code(10);
    assert!(run.stderr.contains("permission denied on its socket"), "{}", run.stderr);
    assert!(run.stderr.contains("usermod -aG docker bt-nodocker"), "{}", run.stderr);
    // Nothing listens there.
    let closed = free_port();
    let run = config(&format!("ssh://bt-remote@127.0.0.1:{closed}"))
        .exec(["status"])
        .code(10);
    assert!(run.stderr.contains("Connection refused"), "{}", run.stderr);
    // Something accepts but never speaks: bounded by BACKTRACK_CONNECT_TIMEOUT.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let start = Instant::now();
    let run = config(&format!("ssh://bt-remote@127.0.0.1:{port}"))
        .exec(["status"])
        .code(10);
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    assert!(run.stderr.contains("127.0.0.1"), "{}", run.stderr);
    // A user the host refuses.
    let run = config(&host().replace("bt-remote@", "nobody-here@"))
        .exec(["status"])
        .code(10);
    assert!(run.stderr.contains("log in to"), "{}", run.stderr);
    for line in run.stderr.lines() {
        assert!(
            line.starts_with("error:") || line.starts_with("hint:"),
            "{}",
            run.stderr
        );
    }
    drop(silent);
}

#[test]
fn remote_drill_rehearses_on_the_host_and_probes_the_copy_there() {
    let repo = pushed("remotedrill", &["v1.0.0", "v1.1.0"]);
    let app = RemoteApp::run(&format!("{}:v1.1.0", repo.image()));
    let t = remote_test(&repo, &app, host(), "/health", "20s");
    let fingerprint = || {
        h2_ok(&[
            "inspect",
            &app.name,
            "--format",
            "{{.Id}} {{.State.StartedAt}} {{.RestartCount}}",
        ])
    };
    let before = fingerprint();

    let report = t.exec(["drill", "v1.0.0", "--output", "json"]).success().json();
    let row = &report["candidates"][0];
    assert_eq!(row["ready"], true, "{report}");
    let probe = row["probe"].as_str().unwrap();
    assert!(
        probe.ends_with(":8080/health") && !probe.contains("127.0.0.1"),
        "the copy's own address on the host: {probe}"
    );
    assert_eq!(fingerprint(), before, "production on the host is untouched");
    assert_eq!(serves(&app.name), "1.1.0");
    assert!(containers_named(&format!("{}-backtrack-drill", app.name), h2).is_empty());
    assert!(
        containers_named(&app.name, docker).is_empty(),
        "nothing ran on this machine"
    );
    assert!(
        app.journal().contains("\"drill\""),
        "journaled on the host:\n{}",
        app.journal()
    );

    // doctor reads the host's disk and state over the same connection (last_known_good is not
    // set, so it fails on that alone).
    let report = t.exec(["doctor", "--output", "json"]).code(1).json();
    let checks = report["checks"].as_array().unwrap();
    let failed: Vec<&serde_json::Value> = checks.iter().filter(|c| c["mark"] == "fail").collect();
    assert_eq!(failed.len(), 1, "{report}");
    assert_eq!(failed[0]["check"], "last known good");
    for ok in ["ssh", "engine", "disk", "target", "health url", "state", "lock"] {
        let c = checks.iter().find(|c| c["check"] == ok).unwrap();
        assert_eq!(c["mark"], "ok", "{ok}: {report}");
    }
}

#[test]
fn remote_doctor_names_a_host_out_of_reach_and_skips_what_depends_on_it() {
    require_remote();
    let closed = free_port();
    let t = Test::new()
        .config(&format!(
            "[registry]\nurl = \"{}\"\nrepository = \"none\"\n[target]\nkind = \"container\"\nname = \"web\"\nhost = \"ssh://bt-remote@127.0.0.1:{closed}\"\n",
            crate::harness::registry()
        ))
        .env("BACKTRACK_SSH_CONFIG", ssh_config().to_str().unwrap())
        .env("BACKTRACK_CONNECT_TIMEOUT", "2s");
    let report = t.exec(["doctor", "--output", "json"]).code(1).json();
    let check = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report}"))
            .clone()
    };
    let ssh = check("ssh");
    assert_eq!(ssh["mark"], "fail", "{ssh}");
    assert!(ssh["detail"].as_str().unwrap().contains("Connection refused"), "{ssh}");
    for dependent in ["engine", "disk", "target", "state", "lock"] {
        assert_eq!(check(dependent)["mark"], "skipped", "{dependent}: {report}");
    }
}

/// A proxy on the remote host, as the team runs it there (`harness::Proxy`, with the Caddy image
/// loaded onto the host's engine from ours), published on the host's loopback only.
fn remote_proxy() -> Proxy {
    let image = crate::harness::caddy_image();
    if !h2(&["image", "inspect", &image]).status.success() {
        let sock = format!("unix://{}", remote_dir().join("docker.sock").display());
        let status = Command::new("sh")
            .args([
                "-c",
                "docker save \"$1\" | docker -H \"$2\" load -q",
                "sh",
                &image,
                &sock,
            ])
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "could not load {image} onto the remote host's engine");
    }
    Proxy::start_on(h2)
}

/// A client on the host beside `proxy`: GETs it every 10 ms (busybox wget bounded by 3 s; its own
/// `-T` crashes in busybox 1.35, and it is sent to the proxy's address since the static busybox
/// cannot resolve names) and logs `ok BODY` or `fail WHY` per request until `stop_client`.
fn remote_client(proxy: &Proxy, image: &str) -> String {
    let name = unique("bt-rclient");
    let ip = h2_ok(&[
        "inspect",
        "--format",
        &format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            proxy.network
        ),
        &proxy.name,
    ]);
    let script = format!(
        "while [ ! -e /stop ]; do if b=$(timeout 3 wget -qO- http://{ip}/health 2>&1); then echo \"ok $b\"; \
         else echo \"fail $b\"; fi; usleep 10000; done; echo done"
    );
    h2_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        &proxy.network,
        "--entrypoint",
        "/bin/sh",
        image,
        "-c",
        &script,
    ]);
    name
}

/// Stops `client` and returns what it saw, one line per request.
fn stop_client(client: &str) -> Vec<String> {
    h2_ok(&["exec", client, "touch", "/stop"]);
    let mut lines = Vec::new();
    wait_until("the client stops", Duration::from_secs(10), || {
        lines = client_log(client);
        lines.last().is_some_and(|l| l == "done")
    });
    lines.pop();
    h2(&["rm", "-f", client]);
    lines
}

fn client_log(client: &str) -> Vec<String> {
    String::from_utf8_lossy(&h2(&["logs", client]).stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_start_first_swap_on_a_remote_host_is_validated_there_and_loses_no_request() {
    crate::harness::require_services();
    require_remote();
    let repo = Repo::new("remote-zd");
    for image in [
        AppImage::new("v1.0.0").boot(2),
        AppImage::new("v1.1.0").boot(2),
        AppImage::new("v1.2.0").boot(2).health_404(),
    ] {
        repo.push(&image);
    }
    let proxy = remote_proxy();
    let name = unique("bt-remote-zd");
    let v1 = format!("{}:v1.0.0", repo.image());
    h2_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        &proxy.network,
        "--network-alias",
        "web",
        &v1,
    ]);
    let _state = RemoveOnDrop(remote_dir().join(format!(
        "home-bt-remote/.local/state/backtrack/targets/local_container_{name}"
    )));
    // The health URL is the proxy on the host's loopback, which this machine cannot reach: the
    // probe of the new container goes over ssh, to its own address on the host.
    let t = Test::new()
        .repo(
            &repo,
            &format!(
                "[target]\nkind = \"container\"\nname = \"{name}\"\nhost = \"{}\"\n[health]\nhttp = \"http://127.0.0.1:{}/health\"\nport = 8080\ntimeout = \"8s\"\n",
                host(),
                proxy.port
            ),
        )
        .env("BACKTRACK_SSH_CONFIG", ssh_config().to_str().unwrap());

    let client = remote_client(&proxy, &v1);
    wait_until("the proxy serves 1.0.0", Duration::from_secs(30), || {
        client_log(&client).iter().any(|l| l == "ok 1.0.0")
    });
    let run = t.exec(["deploy", "v1.1.0", "--yes"]).success();
    std::thread::sleep(Duration::from_millis(300));
    let seen = stop_client(&client);
    assert!(
        run.stderr.contains("start-first")
            && run
                .stderr
                .contains(&format!("validating {name}-backtrack-next at its own address")),
        "{}",
        run.stderr
    );
    let failed: Vec<&String> = seen.iter().filter(|l| !l.starts_with("ok ")).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}\n{}",
        failed.len(),
        seen.len(),
        run.stderr
    );
    assert!(seen.len() > 100, "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("ok 1.1.0"));
    assert_eq!(serves(&name), "1.1.0");
    assert_eq!(
        containers_named(&format!("{name}-backtrack-next"), h2),
        Vec::<String>::new()
    );

    // A version that fails validation never gets a request; the one running keeps serving.
    let client = remote_client(&proxy, &v1);
    wait_until("the proxy serves 1.1.0", Duration::from_secs(30), || {
        client_log(&client).iter().any(|l| l == "ok 1.1.0")
    });
    let run = t.exec(["deploy", "v1.2.0", "--yes"]).code(6);
    let seen = stop_client(&client);
    assert!(
        run.stderr.contains("HTTP 404") && run.stderr.contains("kept serving"),
        "{}",
        run.stderr
    );
    let not_current: Vec<&String> = seen.iter().filter(|l| *l != "ok 1.1.0").collect();
    assert!(
        not_current.is_empty(),
        "{not_current:?} of {} requests\n{}",
        seen.len(),
        run.stderr
    );
    assert_eq!(serves(&name), "1.1.0");
    assert_eq!(
        containers_named(&format!("{name}-backtrack-next"), h2),
        Vec::<String>::new()
    );
}

/// A folder removed when the test ends, however it ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A remote target's journal holds its config snapshots: a restore reads them from the host, and
/// the journal there is readable by its owner only (the state shell's umask).
#[test]
fn a_remote_rollback_restores_the_config_from_the_hosts_journal_which_only_its_owner_reads() {
    use std::os::unix::fs::PermissionsExt as _;
    let repo = pushed("remotecfg", &["v1.0.0", "v1.1.0"]);
    let app = RemoteApp::run_with(&format!("{}:v1.0.0", repo.image()), &["-e", "MODE=old"]);
    let t = remote_test(&repo, &app, host(), "/health", "20s");
    t.exec(["deploy", "v1.1.0", "--yes"]).success();
    let mode = std::fs::metadata(app.state_dir().join("history.jsonl"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The release changes the env by hand on the host.
    let publish = format!("127.0.0.1:{}:8080", app.port);
    h2_ok(&["rm", "-f", &app.name]);
    h2_ok(&[
        "run",
        "-d",
        "--name",
        &app.name,
        "-p",
        &publish,
        "-e",
        "MODE=new",
        &format!("{}:v1.1.0", repo.image()),
    ]);
    wait_until("the release serves", Duration::from_secs(20), || {
        serves(&app.name) == "1.1.0"
    });
    t.exec(["rollback", "--restore-config", "--yes"]).success();
    assert_eq!(serves(&app.name), "1.0.0");
    let env = h2_ok(&["exec", &app.name, "sh", "-c", "echo \"$MODE\""]);
    assert_eq!(env.trim(), "old");
}

/// Over ssh a swap's steps go as one pipeline, all sent at once: a step that fails (here the
/// create: the config being restored bind-mounts a folder removed since) does not stop the ones
/// after it (the old container is stopped and set aside all the same), and the revert must still
/// find the very same container, restart policy and all, back under its name.
#[test]
fn a_pipelined_remote_swap_whose_create_fails_puts_the_same_container_back() {
    let repo = pushed("remote-pipefail", &["v1.0.0", "v1.1.0"]);
    let data = tempfile::tempdir().unwrap();
    let mount = format!("type=bind,source={},target=/data", data.path().display());
    let app = RemoteApp::run_with(&format!("{}:v1.0.0", repo.image()), &["--mount", &mount]);
    // Across a network: the steps go as one pipeline there.
    let (t, _far) = far_remote_test(&repo, &app);
    // The journal keeps 1.0.0's config, with the mount.
    t.exec(["deploy", "v1.1.0", "--yes"]).success();
    // By hand, 1.1.0 is run again without it, and the folder goes.
    let publish = format!("127.0.0.1:{}:8080", app.port);
    h2_ok(&["rm", "-f", &app.name]);
    let v11 = format!("{}:v1.1.0", repo.image());
    h2_ok(&[
        "run",
        "-d",
        "--name",
        &app.name,
        "-p",
        &publish,
        "--restart",
        "unless-stopped",
        &v11,
    ]);
    drop(data);
    let deadline = Instant::now() + Duration::from_secs(20);
    while serves(&app.name) != "1.1.0" {
        assert!(Instant::now() < deadline, "{} does not serve 1.1.0", app.name);
        std::thread::sleep(Duration::from_millis(100));
    }
    let id_before = h2_ok(&["inspect", "--format", "{{.Id}}", &app.name]);
    let started_before = h2_ok(&["inspect", "--format", "{{.State.StartedAt}}", &app.name]);

    let run = t.exec(["-vv", "rollback", "--restore-config", "--yes"]).code(6);
    assert!(run.stderr.contains("calls, pipelined"), "{}", run.stderr);
    assert!(run.stderr.contains("bind source path does not exist"), "{}", run.stderr);
    assert!(run.stderr.contains("create container"), "{}", run.stderr);
    assert!(
        run.stderr.contains("the previous version was restored"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("round trips to ssh://"),
        "-v tells the round trips: {}",
        run.stderr
    );
    assert_eq!(h2_ok(&["inspect", "--format", "{{.Id}}", &app.name]), id_before);
    // The steps after the failing create still ran (it was stopped and set aside), and the
    // revert started it again, restart policy restored.
    assert_ne!(
        h2_ok(&["inspect", "--format", "{{.State.StartedAt}}", &app.name]),
        started_before
    );
    assert_eq!(
        h2_ok(&[
            "inspect",
            "--format",
            "{{.State.Running}} {{.HostConfig.RestartPolicy.Name}}",
            &app.name
        ]),
        "true unless-stopped"
    );
    assert_eq!(
        containers_named(&app.name, h2),
        std::slice::from_ref(&app.name),
        "nothing left beside it"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while serves(&app.name) != "1.1.0" {
        assert!(Instant::now() < deadline, "{} does not serve 1.1.0 again", app.name);
        std::thread::sleep(Duration::from_millis(100));
    }
    let history = t.exec(["history", "--output", "json"]).success().json();
    let last = history["operations"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["result"], "reverted", "{history}");
}

/// What a remote swap's plan reads (the container, its backup, the host's images of the
/// repository) goes out beside the lock request as the session starts, so the plan waits on no
/// round trip of its own (#30); but only when the target's journal was left alone before the
/// lock: right after another operation, another run may have changed the target between those
/// reads and the lock, so the plan reads again once it holds the lock.
#[test]
fn a_remote_plan_trusts_what_it_read_beside_the_lock_only_when_the_journal_was_left_alone() {
    let repo = pushed("remote-ahead", &["v1.0.0", "v1.1.0"]);
    let app = RemoteApp::run(&format!("{}:v1.0.0", repo.image()));
    let (t, _far) = far_remote_test(&repo, &app);
    t.exec(["deploy", "v1.1.0", "--yes"]).success();
    let inspect = format!("-> GET /containers/{}/json", app.name);
    // Where, in a run's timed requests, the lock was answered and the swap's calls went.
    let between_lock_and_swap = |stderr: &str| -> Vec<String> {
        let lines: Vec<&str> = stderr.lines().collect();
        let locked = lines.iter().position(|l| l.contains(": LOCKED ")).expect("the lock");
        let swap = lines
            .iter()
            .position(|l| l.contains("calls, pipelined"))
            .expect("the swap");
        lines[locked..swap].iter().map(|l| l.to_string()).collect()
    };

    // Right after the deploy wrote the journal: the plan reads the container again.
    let soon = t.exec(["-vv", "rollback", "--yes"]).success();
    assert!(
        between_lock_and_swap(&soon.stderr).iter().any(|l| l.contains(&inspect)),
        "{}",
        soon.stderr
    );
    assert_eq!(serves(&app.name), "1.0.0");

    // Left alone for longer than the quiet time: what was read beside the lock is the plan's.
    std::thread::sleep(Duration::from_secs(6));
    let quiet = t.exec(["-vv", "deploy", "v1.1.0", "--yes"]).success();
    let lines: Vec<&str> = quiet.stderr.lines().collect();
    let read = lines.iter().position(|l| l.contains(&inspect)).expect("read ahead");
    let locked = lines.iter().position(|l| l.contains(": LOCKED ")).unwrap();
    assert!(read < locked, "read beside the lock request: {}", quiet.stderr);
    assert!(
        !between_lock_and_swap(&quiet.stderr)
            .iter()
            .any(|l| l.contains("-> GET") || l.contains("-> probe")),
        "nothing asked between the lock and the swap: {}",
        quiet.stderr
    );
    assert_eq!(serves(&app.name), "1.1.0");
    let history = t.exec(["history", "--output", "json"]).success().json();
    let last = history["operations"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["result"], "ok", "{history}");
}

/// The gate writes a remote swap's intent before it lets the swap's calls through to the engine
/// (both in one round trip): when the journal cannot be written, no call runs at all.
#[test]
fn a_remote_swap_whose_intent_cannot_be_written_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let repo = pushed("remote-gate", &["v1.0.0", "v1.1.0"]);
    let app = RemoteApp::run(&format!("{}:v1.0.0", repo.image()));
    // Across a network (the gate is used where a round trip costs more than its programs).
    let (t, _far) = far_remote_test(&repo, &app);
    t.exec(["deploy", "v1.1.0", "--yes"]).success();
    let journal = app.state_dir().join("history.jsonl");
    let before = std::fs::read(&journal).unwrap();
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o400)).unwrap();
    let id = h2_ok(&["inspect", "--format", "{{.Id}} {{.State.StartedAt}}", &app.name]);

    let run = t.exec(["-vv", "rollback", "--yes"]);
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(
        run.stderr.contains("calls, pipelined, behind the intent"),
        "through the gate: {}",
        run.stderr
    );
    assert_eq!(run.code, 10, "the journal failed: {}", run.stderr);
    assert!(run.stderr.contains("append to the journal"), "{}", run.stderr);
    assert!(
        run.stderr.to_lowercase().contains("permission denied"),
        "{}",
        run.stderr
    );
    assert_eq!(
        h2_ok(&["inspect", "--format", "{{.Id}} {{.State.StartedAt}}", &app.name]),
        id,
        "untouched"
    );
    assert_eq!(
        containers_named(&app.name, h2),
        std::slice::from_ref(&app.name),
        "nothing created"
    );
    assert_eq!(serves(&app.name), "1.1.0");
    assert_eq!(std::fs::read(&journal).unwrap(), before, "the journal as it was");
}
