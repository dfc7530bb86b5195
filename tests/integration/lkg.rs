//! last_known_good on real services: `mark-good`, the `lkg` selector, `--mark-good`, and
//! `emergency` with the registry unreachable.

use std::time::Duration;

use crate::harness::{AppImage, Containers, CountingProxy, Repo, Test, docker_ok, http_get, wait_http};

fn manifest_bytes(repo: &Repo, reference: &str) -> Vec<u8> {
    let url = format!(
        "http://{}/v2/{}/manifests/{reference}",
        crate::harness::registry(),
        repo.name
    );
    reqwest::blocking::Client::new()
        .get(url)
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        )
        .send()
        .unwrap()
        .bytes()
        .unwrap()
        .to_vec()
}

struct App {
    name: String,
    port: u16,
}

fn run_app(repo: &Repo, tag: &str, containers: &Containers) -> App {
    let (name, port) = crate::harness::run_app(&format!("{}:{tag}", repo.image()), containers, &["-e", "SECRET=kept"]);
    App { name, port }
}

fn target(app: &App) -> String {
    format!(
        "[target]\nkind = \"container\"\nname = \"{}\"\n[health]\nhttp = \"http://127.0.0.1:{}/health\"\ntimeout = \"20s\"\n",
        app.name, app.port
    )
}

fn health(app: &App) -> String {
    http_get(&format!("http://127.0.0.1:{}/health", app.port))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn mark_good_moves_the_tag_to_the_same_manifest_bytes_and_rollback_lkg_returns_to_it() {
    let repo = Repo::new("markgood");
    let v1 = repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0"));
    let containers = Containers::new();
    let app = run_app(&repo, "v1.0.0", &containers);
    let t = Test::new().repo(&repo, &target(&app));

    let dry = t.exec(["mark-good", "--dry-run"]).success();
    assert!(dry.stdout.contains("would point last_known_good"), "{}", dry.stdout);
    assert_eq!(repo.tag_digest("last_known_good"), None, "a dry run moves nothing");

    let run = t.exec(["mark-good", "--reason", "ran all week"]).success();
    assert!(run.stdout.contains("now points at 1.0.0"), "{}", run.stdout);
    assert_eq!(repo.tag_digest("last_known_good").as_deref(), Some(v1.as_str()));
    assert_eq!(
        manifest_bytes(&repo, "last_known_good"),
        manifest_bytes(&repo, "v1.0.0"),
        "byte for byte"
    );

    let versions = t.exec(["versions", "--output", "json"]).success().json();
    let v1_row = versions["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tag"] == "v1.0.0")
        .unwrap()
        .clone();
    assert_eq!(v1_row["marks"], serde_json::json!(["deployed", "last_known_good"]));
    let status = t.exec(["status", "--output", "json"]).success().json();
    assert_eq!(status["last_known_good"]["version"], "1.0.0");

    // A deploy that validates but turns out bad later: back to the last known good.
    t.exec(["deploy", "v1.1.0"]).success();
    assert_eq!(health(&app), "1.1.0");
    t.exec(["rollback", "lkg"]).success();
    assert_eq!(health(&app), "1.0.0");
    let history = t.exec(["history", "--output", "json"]).success().json();
    let ops = history["operations"].as_array().unwrap();
    assert_eq!(ops[0]["op"], "mark-good");
    assert_eq!(ops[0]["reason"], "ran all week");
}

#[test]
fn retagging_a_large_image_sends_no_blobs() {
    let repo = Repo::new("bigretag");
    repo.push(&AppImage::new("v1.0.0"));
    let big = repo.push(&AppImage::new("v2.0.0").filler(20 * 1024 * 1024));
    let proxy = CountingProxy::start();
    let toml = format!("[registry]\nurl = \"{}\"\nrepository = \"{}\"\n", proxy.addr, repo.name);
    let t = Test::new().config(&toml);
    let before = proxy.sent();
    t.exec(["mark-good", "v2.0.0"]).success();
    let sent = proxy.sent() - before;
    assert!(
        sent < 64 * 1024,
        "retagging a 20 MiB image sent {sent} bytes: blobs moved"
    );
    assert_eq!(repo.tag_digest("last_known_good").as_deref(), Some(big.as_str()));
}

#[test]
fn mark_good_refuses_a_version_whose_validation_failed_unless_forced() {
    let repo = Repo::new("refuse");
    repo.push(&AppImage::new("v1.0.0"));
    let bad = repo.push(&AppImage::new("v1.1.0").crash(1));
    let containers = Containers::new();
    let app = run_app(&repo, "v1.0.0", &containers);
    let t = Test::new().repo(&repo, &target(&app));
    t.exec(["deploy", "v1.1.0"]).code(6);
    let run = t.exec(["mark-good", "v1.1.0"]).code(1);
    assert!(run.stderr.contains("its last validation failed"), "{}", run.stderr);
    assert!(run.stderr.contains("--force"), "{}", run.stderr);
    assert_eq!(repo.tag_digest("last_known_good"), None);
    t.exec(["mark-good", "v1.1.0", "--force"]).success();
    assert_eq!(repo.tag_digest("last_known_good").as_deref(), Some(bad.as_str()));
}

#[test]
fn deploy_with_mark_good_and_soak_marks_only_after_staying_healthy() {
    let repo = Repo::new("soak");
    repo.push(&AppImage::new("v1.0.0"));
    let v11 = repo.push(&AppImage::new("v1.1.0"));
    let containers = Containers::new();
    let app = run_app(&repo, "v1.0.0", &containers);
    let t = Test::new().repo(&repo, &target(&app));
    let start = std::time::Instant::now();
    t.exec(["deploy", "v1.1.0", "--mark-good", "--soak", "2s"]).success();
    assert!(start.elapsed() >= Duration::from_secs(2), "the soak was waited for");
    assert_eq!(repo.tag_digest("last_known_good").as_deref(), Some(v11.as_str()));
}

#[test]
fn emergency_runs_the_last_known_good_image_with_the_registry_down() {
    let repo = Repo::new("emergency");
    let v1 = repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0"));
    let containers = Containers::new();
    let app = run_app(&repo, "v1.0.0", &containers);
    let proxy = CountingProxy::start();
    let toml = format!(
        "[registry]\nurl = \"{}\"\nrepository = \"{}\"\n{}",
        proxy.addr,
        repo.name,
        target(&app)
    );
    let t = Test::new().config(&toml);
    t.exec(["mark-good"]).success(); // keeps backtrack/<repo>:lkg on this host
    t.exec(["deploy", "v1.1.0"]).success();
    assert_eq!(health(&app), "1.1.0");
    // The image is gone from the proxy's point of view, and the pinned reference is removed
    // locally: only the local last-known-good tag keeps it.
    docker_ok(&["rmi", "-f", &format!("{}:v1.0.0", repo.image())]);
    proxy.shut();

    let refused = t.exec(["emergency"]).code(2);
    assert!(
        refused.stderr.contains("pass --yes"),
        "no terminal, no --yes: {}",
        refused.stderr
    );
    let env_file = t.dir.path().join("emergency.env");
    std::fs::write(&env_file, "# from the seed's --env-file\nMODE=emergency\n").unwrap();
    let run = t
        .exec([
            "emergency",
            "--yes",
            "--reason",
            "registry down, 1.1 broken",
            "--env-file",
            env_file.to_str().unwrap(),
        ])
        .success();
    assert!(run.stderr.contains("registry unreachable"), "{}", run.stderr);
    assert!(run.stdout.contains("EMERGENCY"), "{}", run.stdout);
    assert_eq!(
        wait_http(
            &format!("http://127.0.0.1:{}/health", app.port),
            Duration::from_secs(10)
        )
        .trim(),
        "1.0.0"
    );
    let env = docker_ok(&["inspect", &app.name, "--format", "{{json .Config.Env}}"]);
    assert!(env.contains("SECRET=kept") && env.contains("MODE=emergency"), "{env}");
    let status = t.exec(["status", "--output", "json"]).success().json();
    assert_eq!(status["containers"][0]["emergency"], true);
    assert_eq!(status["containers"][0]["digest"], v1.as_str());
    let warnings = status["warnings"].to_string();
    assert!(
        warnings.contains("EMERGENCY") && warnings.contains("registry"),
        "{warnings}"
    );
    let history = t.exec(["history", "--output", "json"]).success().json();
    let last = history["operations"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["op"], "emergency");
    assert_eq!(last["result"], "ok");
}

#[test]
fn deploy_lkg_uses_the_pointer_digest_even_when_the_version_tag_moved() {
    let repo = Repo::new("lkgdigest");
    let good = repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0"));
    let containers = Containers::new();
    let app = run_app(&repo, "v1.0.0", &containers);
    let t = Test::new().repo(&repo, &target(&app));
    t.exec(["mark-good"]).success();
    t.exec(["deploy", "v1.1.0"]).success();
    // v1.0.0 is pushed again with other content: the pointer still names what validated.
    let moved = repo.push(&AppImage::new("v1.0.0").revision("0ther"));
    assert_ne!(moved, good);
    t.exec(["rollback", "lkg"]).success();
    let image = docker_ok(&["inspect", &app.name, "--format", "{{.Config.Image}}"]);
    assert_eq!(image, format!("{}@{good}", repo.image()));
}

#[test]
fn a_second_emergency_keeps_the_original_container_and_a_deploy_leaves_emergency_mode() {
    let repo = Repo::new("emergency2");
    repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0"));
    let containers = Containers::new();
    let app = run_app(&repo, "v1.0.0", &containers);
    let t = Test::new().repo(&repo, &target(&app));
    t.exec(["mark-good"]).success();
    t.exec(["deploy", "v1.1.0"]).success();
    let original = docker_ok(&["inspect", &app.name, "--format", "{{.Id}}"]);
    let aside = format!("{}-backtrack-pre-emergency", app.name);
    t.exec(["emergency", "--yes"]).success();
    assert_eq!(docker_ok(&["inspect", &aside, "--format", "{{.Id}}"]), original);
    t.exec(["emergency", "--yes"]).success();
    assert_eq!(
        docker_ok(&["inspect", &aside, "--format", "{{.Id}}"]),
        original,
        "still the original"
    );
    assert_eq!(health(&app), "1.0.0");
    // The same version again, but out of emergency mode: not "already runs".
    let run = t.exec(["deploy", "lkg"]).success();
    assert!(run.stdout.contains("deployed"), "{}", run.stdout);
    let status = t.exec(["status", "--output", "json"]).success().json();
    assert_eq!(status["containers"][0]["emergency"], false, "{status}");
    assert!(
        !crate::harness::docker(&["inspect", &aside]).status.success(),
        "the set-aside original is removed"
    );
}

/// How often the registry was asked for `repo`'s manifest `reference` (HEAD or GET), from the
/// test registry's own access log (`scripts/test-env` writes it).
fn manifest_requests(repo: &Repo, reference: &str) -> usize {
    let log = std::env::var("BACKTRACK_TEST_REGISTRY_LOG")
        .unwrap_or_else(|_| "/var/lib/backtrack-test-env/registry.log".into());
    let log = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("read the registry's log {log}: {e}"));
    let path = format!("/v2/{}/manifests/{reference} ", repo.name);
    log.lines()
        .filter(|l| (l.contains("\"HEAD ") || l.contains("\"GET ")) && l.contains(&path))
        .count()
}

/// Regression (#29): `status` asked the registry for the last_known_good pointer twice, once for
/// the rollback candidates and once for what it shows.
#[test]
fn status_asks_the_registry_for_the_pointer_once() {
    let repo = Repo::new("statusonce");
    for v in ["v1.0.0", "v1.1.0", "v1.2.0"] {
        repo.push(&AppImage::new(v));
    }
    let containers = Containers::new();
    let app = run_app(&repo, "v1.0.0", &containers);
    let t = Test::new().repo(&repo, &target(&app));
    t.exec(["mark-good"]).success();
    t.exec(["deploy", "v1.1.0"]).success();
    t.exec(["deploy", "v1.2.0"]).success();
    let before = manifest_requests(&repo, "last_known_good");
    let status = t.exec(["status", "--output", "json"]).success().json();
    assert_eq!(status["last_known_good"]["version"], "1.0.0", "{status}");
    let labels: Vec<&str> = status["rollback"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        ["previous", "last_known_good"],
        "both candidates are still told: {status}"
    );
    assert_eq!(manifest_requests(&repo, "last_known_good") - before, 1, "{status}");
}
