//! A registry that wants credentials (Distribution with htpasswd, bcrypt), end to end on the local
//! engine: backtrack reads the operator's docker config, lists, hands the engine the credentials
//! for each pull by digest, moves the pointer and plans a prune; a wrong password is one clear
//! error with the registry's exit code, and nothing changes.

use std::process::Command;

use crate::harness::{AppImage, Containers, OwnRegistry, Repo, Test, docker_ok, http_get, run_app};

/// `s3cret`, hashed with bcrypt as htpasswd wants it.
const HTPASSWD: &str = "ci:$2b$12$osA6IjKEnVJDsMQ8YfiRQ.VID6VJ/Dinz2.BT8eZE39p/qUU/z1.O";

/// A test sandbox whose docker config logs in to `registry` as `user:password`.
fn logged_in(repo: &Repo, more: &str, registry: &str, password: &str) -> Test {
    use base64::Engine as _;
    let t = Test::new().repo(repo, more);
    let config = t.dir.path().join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("ci:{password}"));
    std::fs::write(
        config.join("config.json"),
        format!("{{\"auths\": {{\"{registry}\": {{\"auth\": \"{auth}\"}}}}}}"),
    )
    .unwrap();
    t
}

/// The password registry `scripts/test-env` starts (reached under the same address from the
/// remote hosts and the swarm's nodes).
fn shared_auth_registry() -> String {
    let addr = std::env::var("BACKTRACK_TEST_AUTH_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5002".into());
    let code = reqwest::blocking::get(format!("http://{addr}/v2/")).map(|r| r.status().as_u16());
    assert_eq!(
        code.ok(),
        Some(401),
        "no password registry answers at {addr}: run `scripts/test-env` (as root) first"
    );
    addr
}

/// Pushes `versions` of the test app (built by `app`) into the password registry at `addr`
/// (with a docker config of its own, so the daemon's default config never holds the password);
/// returns that repository and the same images in the open registry.
fn pushed_behind_a_password_with(
    addr: &str,
    test: &str,
    versions: &[&str],
    app: impl Fn(&str) -> AppImage,
) -> (Repo, Repo) {
    let source = Repo::new(test);
    let mut repo = Repo::in_registry(test, addr);
    repo.basic = Some(("ci".into(), "s3cret".into()));
    let login = tempfile::tempdir().unwrap();
    let docker = |args: &[&str]| {
        let out = Command::new("docker")
            .arg("--config")
            .arg(login.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut login_cmd = Command::new("docker")
        .arg("--config")
        .arg(login.path())
        .args(["login", addr, "-u", "ci", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    login_cmd.stdin.take().unwrap().write_all(b"s3cret").unwrap();
    assert!(login_cmd.wait().unwrap().success(), "docker login {addr}");
    for v in versions {
        source.push(&app(v).label("io.backtrack.test", &repo.name));
        let to = format!("{}:{v}", repo.image());
        docker(&["tag", &format!("{}:{v}", source.image()), &to]);
        docker(&["push", &to]);
    }
    (repo, source)
}

fn pushed_behind_a_password(own: &OwnRegistry, test: &str, versions: &[&str]) -> Repo {
    pushed_behind_a_password_with(&own.addr, test, versions, AppImage::new).0
}

fn target(name: &str, port: u16) -> String {
    format!(
        "[target]\nkind = \"container\"\nname = \"{name}\"\n[health]\nhttp = \"http://127.0.0.1:{port}/health\"\ntimeout = \"20s\"\n"
    )
}

#[test]
fn a_password_registry_works_end_to_end_on_the_local_engine_and_a_wrong_password_changes_nothing() {
    let own = OwnRegistry::start_with(true, Some(HTPASSWD));
    let repo = pushed_behind_a_password(&own, "authswap", &["v1.0.0", "v1.1.0"]);
    let c = Containers::new();
    let (name, port) = run_app(&format!("{}:v1.0.0", repo.image()), &c, &[]);
    // The engine has no reference of v1.1.0 in that registry: the deploy pulls, with credentials.
    let v2 = repo.tag_digest("v1.1.0").unwrap();
    docker_ok(&["rmi", &format!("{}:v1.1.0", repo.image())]);
    let serves = || {
        http_get(&format!("http://127.0.0.1:{port}/health"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };

    // A wrong password: one clear line, the registry's exit code, nothing changed.
    let wrong = logged_in(&repo, &target(&name, port), &own.addr, "wrong");
    let run = wrong.exec(["deploy", "v1.1.0", "--yes"]).code(3);
    assert!(
        run.stderr.contains(&format!("authenticate to registry {}", own.addr)),
        "{}",
        run.stderr
    );
    assert_eq!(serves(), "1.0.0", "nothing changed");
    assert_eq!(
        wrong.exec(["history", "--output", "json"]).success().json()["operations"],
        serde_json::json!([])
    );

    let t = logged_in(&repo, &target(&name, port), &own.addr, "s3cret");
    let versions = t.exec(["versions", "--output", "json"]).success().json();
    assert_eq!(versions["tags"][0]["tag"], "v1.1.0", "{versions}");
    let run = t.exec(["deploy", "v1.1.0", "--yes"]).success();
    assert!(
        run.stderr.contains("pulled"),
        "the engine pulled by digest: {}",
        run.stderr
    );
    assert_eq!(serves(), "1.1.0");
    t.exec(["mark-good", "--reason", "behind a password"]).success();
    assert_eq!(repo.tag_digest("last_known_good").as_deref(), Some(v2.as_str()));
    t.exec(["rollback", "--yes"]).success();
    assert_eq!(serves(), "1.0.0");
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/retention-policies/default.toml");
    let plan = t
        .exec(["prune", "--policy", policy, "--dry-run", "--output", "json"])
        .success()
        .json();
    assert!(
        plan.to_string().contains("v1.1.0"),
        "prune plans behind the password: {plan}"
    );
}

/// A remote (ssh://) engine pulls from the password registry with the operator's credentials,
/// handed over for each pull and never written on the host; a wrong password changes nothing.
#[test]
fn a_remote_engine_pulls_from_a_password_registry_and_no_credential_is_left_on_the_host() {
    use crate::remote::{h2, h2_ok, host, remote_dir, serves, ssh_config};
    let addr = shared_auth_registry();
    let (repo, source) = pushed_behind_a_password_with(&addr, "authremote", &["v1.0.0", "v1.1.0"], AppImage::new);
    // The host starts on 1.0.0, pulled from the open registry and named as the password one's.
    let running = format!("{}:v1.0.0", repo.image());
    h2_ok(&["pull", &format!("{}:v1.0.0", source.image())]);
    h2_ok(&["tag", &format!("{}:v1.0.0", source.image()), &running]);
    let name = crate::harness::unique("bt-auth-remote");
    let port = crate::harness::free_port();
    h2_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        &running,
    ]);
    let config = format!(
        "[target]\nkind = \"container\"\nname = \"{name}\"\nhost = \"{}\"\n[health]\nhttp = \"http://127.0.0.1:{port}/health\"\ntimeout = \"20s\"\n",
        host()
    );
    let cleanup = || {
        for suffix in ["", "-backtrack-prev", "-backtrack-next"] {
            h2(&["rm", "-f", &format!("{name}{suffix}")]);
        }
    };
    let wait = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while serves(&name) != "1.0.0" {
        assert!(std::time::Instant::now() < wait, "{name} did not serve");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let wrong = logged_in(&repo, &config, &addr, "wrong").env("BACKTRACK_SSH_CONFIG", ssh_config().to_str().unwrap());
    let run = wrong.exec(["deploy", "v1.1.0", "--yes"]);
    let refused = run.code == 3 && run.stderr.contains(&format!("authenticate to registry {addr}"));
    let t = logged_in(&repo, &config, &addr, "s3cret").env("BACKTRACK_SSH_CONFIG", ssh_config().to_str().unwrap());
    let deployed = t.exec(["deploy", "v1.1.0", "--yes"]);
    let now = serves(&name);
    let host_files: Vec<String> = [
        "home-bt-remote/.docker/config.json",
        "home-bt-remote/.config/containers/auth.json",
    ]
    .iter()
    .filter_map(|f| std::fs::read_to_string(remote_dir().join(f)).ok())
    .collect();
    cleanup();
    assert!(
        refused,
        "a wrong password is refused with exit 3 naming the registry: {}",
        run.stderr
    );
    assert_eq!(deployed.code, 0, "{}", deployed.stderr);
    assert!(
        deployed.stderr.contains("pulled"),
        "the host's engine pulled by digest: {}",
        deployed.stderr
    );
    assert_eq!(now, "1.1.0");
    for f in host_files {
        assert!(
            !f.contains(&addr) && !f.contains("s3cret"),
            "a credential was written on the host: {f}"
        );
    }
}

/// A Swarm service updated onto an image in the password registry: the nodes pull with the
/// credentials backtrack sends with the update (`--with-registry-auth`).
#[test]
fn a_swarm_service_is_updated_from_a_password_registry_with_the_registry_auth() {
    use crate::swarm::{PROBE, Service};
    let addr = shared_auth_registry();
    let (repo, source) = pushed_behind_a_password_with(&addr, "authswarm", &["1.0.0", "1.1.0"], |v| {
        AppImage::new(v).healthcheck(true)
    });
    let d1 = source.tag_digest("1.0.0").unwrap();
    let d2 = repo.tag_digest("1.1.0").unwrap();
    let svc = Service::create("bt-auth-swarm", &format!("{}:1.0.0@{d1}", source.image()), &[]);
    let t = logged_in(&repo, &svc.target(PROBE), &addr, "s3cret");
    let run = t.exec(["deploy", "1.1.0", "--yes"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        svc.tasks().iter().all(|task| task.1 == d2),
        "every task on 1.1.0 from {addr}: {:?}",
        svc.tasks()
    );
}
