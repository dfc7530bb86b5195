//! `tcp://` engines over TLS, against the third host `scripts/test-env` starts: its engine listens
//! with `--tlsverify` on 127.0.0.1:2376 in network namespace bt-h3 (bridged here), with a test CA,
//! its own server certificate and a client certificate in `h3/tls/client` (a ready
//! `DOCKER_CERT_PATH`). backtrack acts on that engine only; what the TLS setup lacks or gets
//! wrong is refused in one line with the fix, exit code 10.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{AppImage, Repo, Run, Test, docker, hosts, unique};

/// The engine's `tcp://` address here (this run's slot).
fn engine() -> &'static str {
    &hosts().h3_tls
}

fn h3_dir() -> PathBuf {
    hosts().h3_dir.clone()
}

fn tls_dir() -> PathBuf {
    h3_dir().join("tls")
}

/// `docker` against the third host's engine through its unix socket (the test's own view).
fn h3(args: &[&str]) -> Output {
    docker(
        &[
            &["-H", &format!("unix://{}", h3_dir().join("docker.sock").display())],
            args,
        ]
        .concat(),
    )
}

/// Fails loudly when the TLS engine is not there.
fn require_tls_engine() {
    let client = tls_dir().join("client");
    let ok = Command::new("docker")
        .args(["--tlsverify", "-H", engine()])
        .arg("--tlscacert")
        .arg(client.join("ca.pem"))
        .arg("--tlscert")
        .arg(client.join("cert.pem"))
        .arg("--tlskey")
        .arg(client.join("key.pem"))
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the TLS engine ({}, certificates in {}) does not answer: run `scripts/test-env` (as root) first",
        engine(),
        client.display()
    );
}

/// A container on the third host; removed (with whatever was set aside beside it) on drop.
struct TlsApp {
    name: String,
}

impl TlsApp {
    fn run(image: &str) -> Self {
        let name = unique("bt-tls-app");
        let out = h3(&["run", "-d", "--name", &name, image]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Self { name }
    }

    /// The version label of what the container runs now.
    fn version(&self) -> String {
        let out = h3(&[
            "inspect",
            "--format",
            "{{index .Config.Labels \"org.opencontainers.image.version\"}}",
            &self.name,
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for TlsApp {
    fn drop(&mut self) {
        let out = h3(&[
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            &format!("name={}", self.name),
        ]);
        for n in String::from_utf8_lossy(&out.stdout).lines() {
            h3(&["rm", "-f", n]);
        }
    }
}

fn pushed(test: &str, versions: &[&str]) -> Repo {
    crate::harness::require_services();
    require_tls_engine();
    let repo = Repo::new(test);
    for v in versions {
        repo.push(&AppImage::new(v));
    }
    repo
}

/// A sandbox whose target is `name` on the TLS engine, with `cert_path` as DOCKER_CERT_PATH.
fn tls_test(repo: &Repo, name: &str, cert_path: &Path) -> Test {
    Test::new()
        .repo(
            repo,
            &format!(
                "[target]\nkind = \"container\"\nname = \"{name}\"\nhost = \"{}\"\n[health]\ntimeout = \"20s\"\n",
                engine()
            ),
        )
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", cert_path.to_str().unwrap())
}

/// A DOCKER_CERT_PATH holding `files` as (name there, file of the test env).
fn cert_dir(files: &[(&str, PathBuf)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, from) in files {
        std::fs::copy(from, dir.path().join(name)).unwrap();
    }
    dir
}

/// A refused run: exit code 10, one error line saying `says`, one hint line, quickly.
#[track_caller]
fn refused(run: Run, took: Duration, says: &str) {
    let run = run.code(10);
    let errors: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(errors[0].contains(says), "want {says:?} in:\n{}", run.stderr);
    assert!(run.stderr.lines().any(|l| l.starts_with("hint:")), "{}", run.stderr);
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn tls_deploy_rollback_and_status_act_on_the_tls_engine_only() {
    let repo = pushed("tls", &["v1.0.0", "v1.1.0"]);
    let app = TlsApp::run(&format!("{}:v1.0.0", repo.image()));
    let t = tls_test(&repo, &app.name, &tls_dir().join("client"));

    let status = t.exec(["status", "--output", "json"]).success().json();
    assert_eq!(status["containers"][0]["version"], "1.0.0", "{status}");
    t.exec(["deploy", "v1.1.0", "--yes"]).success();
    assert_eq!(app.version(), "1.1.0");
    let run = t.exec(["rollback", "--yes"]).success();
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    assert_eq!(app.version(), "1.0.0");
    let status = t.exec(["status", "--output", "json"]).success().json();
    assert_eq!(status["containers"][0]["version"], "1.0.0", "{status}");

    // The local engine has none of it; a tcp:// target keeps its state on this machine.
    let here = docker(&[
        "ps",
        "-a",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("name={}", app.name),
    ]);
    assert!(String::from_utf8_lossy(&here.stdout).trim().is_empty());
    let journal = std::fs::read_to_string(
        t.state_dir()
            .join("targets")
            .join(format!(
                "tcp___127.0.0.1_{}_container_{}",
                hosts().h3_tls_port,
                app.name
            ))
            .join("history.jsonl"),
    )
    .unwrap();
    assert!(journal.contains("\"rollback\""), "{journal}");
}

#[test]
fn a_docker_context_with_tls_files_is_used_as_the_docker_cli_uses_it() {
    use sha2::Digest as _;
    let repo = pushed("tlsctx", &["v1.0.0"]);
    let app = TlsApp::run(&format!("{}:v1.0.0", repo.image()));
    let t = Test::new().repo(
        &repo,
        &format!("[target]\nkind = \"container\"\nname = \"{}\"\n", app.name),
    );
    // The context as `docker context create bt-tls --docker host=…,ca=…,cert=…,key=…` stores it,
    // in the sandbox's DOCKER_CONFIG.
    let config = t.dir.path().join("docker-config");
    let hash: String = sha2::Sha256::digest(b"bt-tls")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let meta = config.join("contexts/meta").join(&hash);
    let tls = config.join("contexts/tls").join(&hash).join("docker");
    std::fs::create_dir_all(&meta).unwrap();
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::write(
        meta.join("meta.json"),
        format!(
            r#"{{"Name":"bt-tls","Metadata":{{}},"Endpoints":{{"docker":{{"Host":"{}","SkipTLSVerify":false}}}}}}"#,
            engine()
        ),
    )
    .unwrap();
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        std::fs::copy(tls_dir().join("client").join(f), tls.join(f)).unwrap();
    }
    std::fs::write(config.join("config.json"), r#"{"currentContext":"bt-tls"}"#).unwrap();
    let status = t.exec(["status", "--output", "json"]).success().json();
    assert_eq!(status["containers"][0]["version"], "1.0.0", "{status}");
}

#[test]
fn tls_mistakes_are_refused_in_one_line_with_the_fix() {
    let repo = pushed("tlsbad", &["v1.0.0"]);
    let app = TlsApp::run(&format!("{}:v1.0.0", repo.image()));
    let client = tls_dir().join("client");
    let timed = |t: &Test, args: &[&str]| {
        let start = Instant::now();
        let run = t.exec(args);
        (run, start.elapsed())
    };

    // The engine's certificate is signed by another CA than ours.
    let wrong_ca = cert_dir(&[
        ("ca.pem", tls_dir().join("other-ca/ca.pem")),
        ("cert.pem", client.join("cert.pem")),
        ("key.pem", client.join("key.pem")),
    ]);
    let (run, took) = timed(&tls_test(&repo, &app.name, wrong_ca.path()), &["status"]);
    refused(run, took, "its certificate is not signed by");

    // No client certificate: the engine (--tlsverify) wants one.
    let no_cert = cert_dir(&[("ca.pem", client.join("ca.pem"))]);
    let (run, took) = timed(&tls_test(&repo, &app.name, no_cert.path()), &["status"]);
    refused(run, took, "it wants a client certificate, and");

    // A client certificate from a CA the engine does not trust.
    let foreign = cert_dir(&[
        ("ca.pem", client.join("ca.pem")),
        ("cert.pem", tls_dir().join("other-ca/ca.pem")),
        ("key.pem", tls_dir().join("other-ca/ca-key.pem")),
    ]);
    let (run, took) = timed(&tls_test(&repo, &app.name, foreign.path()), &["status"]);
    refused(run, took, "it refused the client certificate");

    // A key without its certificate, and no folder at all: the missing file, by path.
    let half = cert_dir(&[("ca.pem", client.join("ca.pem")), ("key.pem", client.join("key.pem"))]);
    let (run, took) = timed(&tls_test(&repo, &app.name, half.path()), &["status"]);
    refused(
        run,
        took,
        &format!("{}: no such file", half.path().join("cert.pem").display()),
    );
    let none = half.path().join("nothing-here");
    let (run, took) = timed(&tls_test(&repo, &app.name, &none), &["status"]);
    refused(run, took, &format!("{}: no such file", none.join("ca.pem").display()));

    // TLS to a plain-HTTP port (the registry), and plain HTTP to the TLS port.
    let (run, took) = timed(
        &tls_test(&repo, &app.name, &client),
        &["--host", &format!("tcp://{}", crate::harness::registry()), "status"],
    );
    refused(run, took, "answered in plain HTTP");
    let plain = tls_test(&repo, &app.name, &client).without_env("DOCKER_TLS_VERIFY");
    let (run, took) = timed(&plain, &["status"]);
    refused(run, took, "it wants TLS");
}

#[test]
fn plain_tcp_off_this_machine_is_allowed_with_a_warning() {
    crate::harness::require_services();
    // TEST-NET-1: never routed, so the engine does not answer; the warning comes first.
    let t = Test::new().config(&format!(
        "[registry]\nurl = \"{}\"\nrepository = \"none\"\n[target]\nkind = \"container\"\nname = \"web\"\nhost = \"tcp://192.0.2.1:2375\"\n",
        crate::harness::registry()
    ));
    let start = Instant::now();
    let run = t.exec(["status"]).code(9);
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    assert!(
        run.stderr.contains(
            "warning: tcp://192.0.2.1:2375 is plain HTTP: anyone on the network path can run containers as root"
        ),
        "{}",
        run.stderr
    );
}
