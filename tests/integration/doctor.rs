//! `backtrack doctor` against real services: a healthy setup passes every check, and each
//! failure this file provokes (registry down, deletes disabled, bad credentials, missing lkg
//! image, stale lock, unreachable health URL) is named on its own line with its fix.

use std::time::Duration;

use crate::harness::{AppImage, Containers, CountingProxy, OwnRegistry, Repo, Test, docker_ok, free_port, wait_http};

/// `s3cret`, hashed with bcrypt as htpasswd wants it.
const HTPASSWD: &str = "ci:$2b$12$osA6IjKEnVJDsMQ8YfiRQ.VID6VJ/Dinz2.BT8eZE39p/qUU/z1.O";

/// The finding of one check in `doctor --output json`.
fn check(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
        .clone()
}

#[track_caller]
fn assert_failed(report: &serde_json::Value, name: &str, detail: &str, fix: &str) {
    let c = check(report, name);
    assert_eq!(c["mark"], "fail", "{c}");
    assert!(c["detail"].as_str().unwrap().contains(detail), "{detail} in {c}");
    assert!(c["fix"].as_str().unwrap_or_default().contains(fix), "{fix} in {c}");
}

/// A container running `repo:tag` with a published port; returns (name, port).
fn run_app(repo: &Repo, tag: &str, containers: &Containers) -> (String, u16) {
    crate::harness::run_app(&format!("{}:{tag}", repo.image()), containers, &[])
}

fn target(name: &str, port: u16) -> String {
    format!(
        "[target]\nkind = \"container\"\nname = \"{name}\"\n[health]\nhttp = \"http://127.0.0.1:{port}/health\"\ntimeout = \"10s\"\n"
    )
}

#[test]
fn doctor_passes_a_healthy_setup_and_names_a_missing_lkg_image() {
    let repo = Repo::new("doctor");
    repo.push(&AppImage::new("v1.0.0"));
    let containers = Containers::new();
    let (name, port) = run_app(&repo, "v1.0.0", &containers);
    let t = Test::new().repo(&repo, &target(&name, port));
    t.exec(["mark-good"]).success(); // keeps backtrack/<repo>:lkg on this host

    let run = t.exec(["doctor", "--output", "json"]).success();
    let report = run.json();
    assert_eq!(report["healthy"], true);
    for name in [
        "engine",
        "disk",
        "registry",
        "credentials",
        "deletes",
        "version tags",
        "last known good",
        "lkg image",
        "target",
        "health url",
        "state",
        "lock",
        "clock",
        "swap order",
    ] {
        assert_eq!(check(&report, name)["mark"], "ok", "{name}: {report}");
    }
    // The app publishes its port: every swap is down for its boot, and doctor says so.
    let order = check(&report, "swap order")["detail"].as_str().unwrap().to_string();
    assert!(
        order.starts_with("stop-first: ") && order.contains("publishes host port") && order.contains("proxy"),
        "{order}"
    );
    assert_eq!(check(&report, "ssh")["mark"], "skipped");
    assert!(
        check(&report, "git fallback")["detail"]
            .as_str()
            .unwrap()
            .starts_with("skipped: ")
    );
    let table = t.exec(["doctor"]).success();
    assert!(table.stdout.contains("every check passed"), "{}", table.stdout);

    docker_ok(&["rmi", &format!("backtrack/{}:lkg", repo.name)]);
    let run = t.exec(["doctor", "--output", "json"]).code(1);
    let report = run.json();
    assert_eq!(report["healthy"], false);
    assert_failed(&report, "lkg image", "is not on", "docker tag");
    assert_eq!(check(&report, "last known good")["mark"], "ok");
    assert!(run.stderr.contains("1 of 16 failed"), "{}", run.stderr);
}

#[test]
fn doctor_names_a_registry_that_is_down() {
    let proxy = CountingProxy::start();
    proxy.shut();
    let t = Test::new().config(&format!("[registry]\nurl = \"{}\"\nrepository = \"app\"\n", proxy.addr));
    let report = t.exec(["doctor", "--output", "json"]).code(1).json();
    assert_failed(
        &report,
        "registry",
        &format!("reach registry {}", proxy.addr),
        "is the registry running",
    );
    for dependent in ["credentials", "deletes", "version tags", "last known good", "clock"] {
        assert_eq!(check(&report, dependent)["mark"], "skipped", "{dependent}: {report}");
    }
    assert_eq!(check(&report, "target")["mark"], "skipped");
}

#[test]
fn doctor_names_a_registry_with_deletes_disabled() {
    let own = OwnRegistry::start(false);
    let repo = Repo::in_registry("doctor-nodelete", &own.addr);
    repo.push_synthetic(&["v1.0.0"], "2026-01-01T00:00:00Z");
    let report = Test::new()
        .repo(&repo, "")
        .exec(["doctor", "--output", "json"])
        .code(1)
        .json();
    assert_failed(
        &report,
        "deletes",
        "the registry has deletes disabled",
        "delete: enabled: true",
    );
    assert_eq!(check(&report, "registry")["mark"], "ok");
    assert_eq!(check(&report, "version tags")["mark"], "ok");
    assert_failed(&report, "last known good", "is not set", "mark-good");
}

#[test]
fn doctor_names_credentials_the_registry_refuses() {
    use base64::Engine as _;
    let own = OwnRegistry::start_with(true, Some(HTPASSWD));
    let mut repo = Repo::in_registry("doctor-auth", &own.addr);
    repo.basic = Some(("ci".into(), "s3cret".into()));
    repo.push_synthetic(&["v1.0.0"], "2026-01-01T00:00:00Z");
    let t = Test::new().repo(&repo, "");
    let wrong = base64::engine::general_purpose::STANDARD.encode("ci:wrong");
    let docker_config = t.dir.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    std::fs::write(
        docker_config.join("config.json"),
        format!("{{\"auths\":{{\"{}\":{{\"auth\":\"{wrong}\"}}}}}}", own.addr),
    )
    .unwrap();
    let report = t.exec(["doctor", "--output", "json"]).code(1).json();
    assert_eq!(check(&report, "registry")["mark"], "ok", "{report}");
    assert_failed(
        &report,
        "credentials",
        &format!("authenticate to registry {}", own.addr),
        "docker login",
    );
    assert_eq!(check(&report, "deletes")["mark"], "skipped");
}

#[test]
fn doctor_names_a_stale_lock_left_by_a_dead_backtrack() {
    let repo = Repo::new("doctor-lock");
    repo.push(&AppImage::new("v1.0.0"));
    let containers = Containers::new();
    let (name, port) = run_app(&repo, "v1.0.0", &containers);
    let t = Test::new().repo(&repo, &target(&name, port));
    // A backtrack that was killed holding the lock leaves its identity file behind.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let dir = t.target_state_dir(&name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("lock"), "").unwrap();
    std::fs::write(
        dir.join(format!("holder-{pid}.json")),
        serde_json::json!({
            "pid": pid, "user": "ops", "host": host.trim(),
            "command": "backtrack deploy v1.0.0", "since": "2026-01-01T00:00:00Z"
        })
        .to_string(),
    )
    .unwrap();
    let report = t.exec(["doctor", "--output", "json"]).code(1).json();
    assert_failed(
        &report,
        "lock",
        &format!("stale: pid {pid} of ops@"),
        "settles an interrupted operation",
    );
    assert!(
        check(&report, "lock")["detail"]
            .as_str()
            .unwrap()
            .contains("backtrack deploy v1.0.0")
    );
    // Reading is all doctor does: the stale holder is still there for the next run to settle.
    assert!(dir.join(format!("holder-{pid}.json")).exists());
}

#[test]
fn doctor_names_a_health_url_nothing_answers() {
    let repo = Repo::new("doctor-health");
    repo.push(&AppImage::new("v1.0.0"));
    let containers = Containers::new();
    let (name, port) = run_app(&repo, "v1.0.0", &containers);
    let nothing = free_port();
    let t = Test::new().repo(&repo, &target(&name, nothing));
    let report = t.exec(["doctor", "--output", "json"]).code(1).json();
    assert_failed(
        &report,
        "health url",
        &format!("GET http://127.0.0.1:{nothing}/health from this machine"),
        "[health] http",
    );
    assert_eq!(check(&report, "target")["mark"], "ok", "{report}");
    // The app itself is fine: only the configured address is wrong.
    wait_http(&format!("http://127.0.0.1:{port}/health"), Duration::from_secs(2));
}

#[test]
fn doctor_names_the_unset_pointer_of_another_environment_of_the_repository() {
    let repo = Repo::new("doctor-envs");
    repo.push_synthetic(&["v1.0.0", "last_known_good-prod"], "2026-01-01T00:00:00Z");
    let t = Test::new().repo(&repo, "");
    // Two other targets built from this repository keep their state on this machine.
    for (dir, env) in [
        ("local_container_web-prod", "prod"),
        ("local_container_web-staging", "staging"),
    ] {
        let state = t.state_dir().join("targets").join(dir);
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(
            state.join("target.json"),
            serde_json::json!({
                "target": format!("container {dir}"), "engine": "local",
                "repository": repo.image(), "environment": env
            })
            .to_string(),
        )
        .unwrap();
    }
    let report = t.exec(["doctor", "--output", "json"]).code(1).json();
    assert_eq!(
        check(&report, "last known good (last_known_good-prod)")["mark"],
        "ok",
        "{report}"
    );
    assert_failed(
        &report,
        "last known good (last_known_good-staging)",
        "last_known_good-staging is not set",
        "mark-good",
    );
}
