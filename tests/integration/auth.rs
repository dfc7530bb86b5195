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

/// Pushes `versions` of the test app into the password registry (with a docker config of its
/// own, so the daemon's default config never holds the password), then drops this daemon's
/// references to them there: a deploy must pull by digest, with credentials.
fn pushed_behind_a_password(own: &OwnRegistry, test: &str, versions: &[&str]) -> Repo {
    let source = Repo::new(test);
    let mut repo = Repo::in_registry(test, &own.addr);
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
        .args(["login", &own.addr, "-u", "ci", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    login_cmd.stdin.take().unwrap().write_all(b"s3cret").unwrap();
    assert!(login_cmd.wait().unwrap().success(), "docker login {}", own.addr);
    for v in versions {
        source.push(&AppImage::new(v).label("io.backtrack.test", &repo.name));
        let to = format!("{}:{v}", repo.image());
        docker(&["tag", &format!("{}:{v}", source.image()), &to]);
        docker(&["push", &to]);
    }
    repo
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
