//! `backtrack drill` on a real engine and registry: a good and a failing candidate are told
//! apart on a scratch copy, and production is untouched (same container id, start time and
//! restart count, still serving, no copy left behind).

use std::time::Duration;

use crate::harness::{AppImage, Containers, Repo, Test, docker, docker_ok, free_port, wait_http};

/// A named volume of the test's, removed when the test ends with the containers using it.
struct Volume(String);

impl Drop for Volume {
    fn drop(&mut self) {
        let users = docker(&["ps", "-aq", "--filter", &format!("volume={}", self.0)]);
        for id in String::from_utf8_lossy(&users.stdout).split_whitespace() {
            docker(&["rm", "-f", id]);
        }
        docker(&["volume", "rm", "-f", &self.0]);
    }
}

/// A container of `repo:tag` started the way a user would, with a published port, a bind mount
/// and a named volume; returns (name, port, the bind-mounted folder, the volume).
fn run_production(repo: &Repo, tag: &str, containers: &Containers) -> (String, u16, tempfile::TempDir, Volume) {
    let name = crate::harness::unique("bt-drill");
    let port = free_port();
    let bind = tempfile::tempdir().unwrap();
    std::fs::write(bind.path().join("config.txt"), "production").unwrap();
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &containers.label(),
        "-e",
        "DATABASE_URL=postgres://db/app",
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        "-v",
        &format!("{}:/config", bind.path().display()),
        "-v",
        &format!("{name}-data:/data"),
        "--restart",
        "unless-stopped",
        &format!("{}:{tag}", repo.image()),
    ]);
    wait_http(&format!("http://127.0.0.1:{port}/health"), Duration::from_secs(10));
    let volume = Volume(format!("{name}-data"));
    (name, port, bind, volume)
}

fn fingerprint(name: &str) -> String {
    docker_ok(&[
        "inspect",
        name,
        "--format",
        "{{.Id}} {{.State.StartedAt}} {{.RestartCount}} {{.Config.Image}}",
    ])
}

fn config(name: &str, port: u16) -> String {
    format!(
        "[target]\nkind = \"container\"\nname = \"{name}\"\n[health]\nhttp = \"http://127.0.0.1:{port}/health\"\ntimeout = \"15s\"\n"
    )
}

#[test]
fn drill_tells_a_good_candidate_from_a_failing_one_and_leaves_production_untouched() {
    let repo = Repo::new("drill");
    repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0").crash(3));
    repo.push(&AppImage::new("v1.2.0"));
    let containers = Containers::new();
    let (name, port, bind, _volume) = run_production(&repo, "v1.2.0", &containers);
    let t = Test::new().repo(&repo, &config(&name, port));
    let before = fingerprint(&name);

    let run = t.exec(["drill", "v1.0.0", "v1.1.0", "--output", "json"]).code(11);
    let report = run.json();
    assert_eq!(report["ready"], false);
    let rows = report["candidates"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{report}");
    let good = &rows[0];
    assert_eq!(good["selectors"][0], "v1.0.0");
    assert_eq!(good["ready"], true, "{good}");
    assert!(good["pull_ms"].as_u64().is_some(), "{good}");
    assert!(good["healthy_ms"].as_u64().is_some(), "{good}");
    let probe = good["probe"].as_str().unwrap();
    assert!(
        probe.ends_with(":8080/health") && !probe.contains("127.0.0.1"),
        "the probe is aimed at the copy's own address: {probe}"
    );
    let differences = good["differences"].to_string();
    for said in ["no published host ports", "read-only", "replaced by an empty one"] {
        assert!(differences.contains(said), "{said} in {differences}");
    }
    let bad = &rows[1];
    assert_eq!(bad["ready"], false);
    assert!(bad["failed"].as_str().unwrap().contains("exit"), "{bad}");
    assert!(bad["logs"].to_string().contains("boom"), "the copy's last lines: {bad}");
    assert!(
        run.stderr.contains("1 of 2 candidate(s) would not roll back"),
        "{}",
        run.stderr
    );

    // Production: the same container, never restarted, still on v1.2.0 and serving.
    assert_eq!(fingerprint(&name), before);
    assert_eq!(
        wait_http(&format!("http://127.0.0.1:{port}/health"), Duration::from_secs(2)).trim(),
        "1.2.0"
    );
    assert!(
        !docker(&["inspect", &format!("{name}-backtrack-drill")])
            .status
            .success(),
        "the scratch copy is removed"
    );
    // The bind mount was read-only to the copy: production's file is as it was.
    assert_eq!(
        std::fs::read_to_string(bind.path().join("config.txt")).unwrap(),
        "production"
    );

    // Journaled as drills, which are not deploys: v1.1.0 failing its drill does not mark it
    // failed, so `previous` (the next lower version, with no deploy in the journal) is still it.
    let history = t.exec(["history", "--output", "json"]).success().json();
    let ops = history["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 2, "{history}");
    assert!(ops.iter().all(|o| o["op"] == "drill"), "{history}");
    assert_eq!(ops[1]["result"], "failed");
    let plan = t.exec(["rollback", "--dry-run", "--output", "json"]).success().json();
    assert_eq!(plan["to"]["version"], "1.1.0", "{plan}");
}

#[test]
fn drill_defaults_to_previous_and_last_known_good_and_rehearses_one_image_once() {
    let repo = Repo::new("drill-default");
    repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0"));
    let containers = Containers::new();
    let (name, port, _bind, _volume) = run_production(&repo, "v1.1.0", &containers);
    let t = Test::new().repo(&repo, &config(&name, port));
    t.exec(["mark-good", "v1.0.0"]).success();
    let before = fingerprint(&name);

    let run = t.exec(["drill"]).success();
    assert!(run.stdout.contains("previous, last-known-good"), "{}", run.stdout);
    assert!(run.stdout.contains("every candidate would roll back"), "{}", run.stdout);
    assert_eq!(fingerprint(&name), before);
}

#[test]
fn drill_interrupted_removes_its_copy_and_leaves_production_untouched() {
    let repo = Repo::new("drill-int");
    repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0"));
    let containers = Containers::new();
    let (name, port, _bind, _volume) = run_production(&repo, "v1.1.0", &containers);
    // A probe path nothing serves: the copy never validates, so the drill waits until Ctrl-C.
    let toml = config(&name, port).replace("/health", "/missing").replace("15s", "60s");
    let t = Test::new().repo(&repo, &toml);
    let before = fingerprint(&name);
    let child = t
        .command()
        .args(["drill", "v1.0.0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let copy = format!("{name}-backtrack-drill");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !docker(&["inspect", &copy]).status.success() {
        assert!(std::time::Instant::now() < deadline, "the copy never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("removing the scratch copy"), "{stderr}");
    assert!(!docker(&["inspect", &copy]).status.success(), "the copy is removed");
    assert_eq!(fingerprint(&name), before);
}
