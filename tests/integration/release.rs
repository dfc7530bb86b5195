//! A release of several services (`[target] names`) from two repositories: one version for all
//! of them or none, on plain containers and on compose, with one history entry per release.

use std::time::Duration;

use crate::harness::{
    AppImage, ComposeProject, Containers, Repo, Test, docker, docker_ok, free_port, unique, wait_http,
};

fn inspect(name: &str, format: &str) -> String {
    docker_ok(&["inspect", name, "--format", format])
}

/// The version the container's image says it is.
fn version_of(name: &str) -> String {
    inspect(name, "{{index .Config.Labels \"org.opencontainers.image.version\"}}")
}

/// Two repositories: the web app's and the worker's, with the same versions.
fn repositories(web: &[&str], worker: &[AppImage]) -> (Repo, Repo) {
    let (w, k) = (Repo::new("release-web"), Repo::new("release-worker"));
    for v in web {
        w.push(&AppImage::new(v));
    }
    // The worker's images differ from the web app's of the same version (own digests).
    for app in worker {
        k.push(&app.clone().label("io.test.role", "worker"));
    }
    (w, k)
}

/// A web container publishing a port and a worker container without one, both on `v`.
struct Release {
    web: String,
    worker: String,
    port: u16,
    _containers: Containers,
}

impl Release {
    fn run(web: &Repo, worker: &Repo, v: &str) -> Self {
        let containers = Containers::new();
        let (name, wname, port) = (unique("bt-rel-web"), unique("bt-rel-worker"), free_port());
        let (label, publish) = (containers.label(), format!("127.0.0.1:{port}:8080"));
        let (wimg, kimg) = (format!("{}:{v}", web.image()), format!("{}:{v}", worker.image()));
        docker_ok(&["run", "-d", "--name", &name, "--label", &label, "-p", &publish, &wimg]);
        docker_ok(&["run", "-d", "--name", &wname, "--label", &label, &kimg]);
        wait_http(&format!("http://127.0.0.1:{port}/health"), Duration::from_secs(10));
        Self {
            web: name,
            worker: wname,
            port,
            _containers: containers,
        }
    }

    fn test(&self, web: &Repo, worker: &Repo) -> Test {
        Test::new().repo(
            web,
            &format!(
                "[target]\nkind = \"container\"\nnames = [\"{}\", \"{}\"]\n[target.repositories]\n\"{}\" = \"{}\"\n\
                 [health]\nhttp = \"http://127.0.0.1:{}/health\"\ntimeout = \"15s\"\n",
                self.web, self.worker, self.worker, worker.name, self.port
            ),
        )
    }

    fn versions(&self) -> (String, String) {
        (version_of(&self.web), version_of(&self.worker))
    }
}

#[test]
fn a_release_of_two_services_deploys_and_rolls_back_together_with_one_history_entry() {
    let (web, worker) = repositories(
        &["v1.0.0", "v1.1.0"],
        &[AppImage::new("v1.0.0"), AppImage::new("v1.1.0")],
    );
    let r = Release::run(&web, &worker, "v1.0.0");
    let t = r.test(&web, &worker);
    let run = t.exec(["deploy", "v1.1.0", "--yes"]).success();
    assert!(run.stdout.contains("release"), "{}", run.stdout);
    assert_eq!(r.versions(), ("1.1.0".into(), "1.1.0".into()));
    // Each container runs its own repository's image of the version, pinned by digest.
    let worker_digest = worker.tag_digest("v1.1.0").unwrap();
    assert_eq!(
        inspect(&r.worker, "{{.Config.Image}}"),
        format!("{}@{worker_digest}", worker.image())
    );
    let h = t.exec(["history", "--output", "json"]).success().json();
    let ops = h["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 1, "one entry for the release: {h}");
    assert_eq!(ops[0]["services"][&r.worker]["digest"], worker_digest, "{h}");
    assert_ne!(web.tag_digest("v1.1.0").unwrap(), worker_digest, "two images, not one");
    let shown = t.exec(["history", "show", "1"]).success();
    assert!(
        shown
            .stdout
            .contains(&format!("{} -> 1.1.0 ({worker_digest}): ok", r.worker)),
        "{}",
        shown.stdout
    );

    let status = t.exec(["status", "--output", "json"]).success().json();
    let rows = status["containers"].as_array().unwrap();
    let services: Vec<&str> = rows.iter().map(|c| c["service"].as_str().unwrap()).collect();
    assert_eq!(services, [r.web.as_str(), r.worker.as_str()], "{status}");
    assert!(status["release_drift"].is_null(), "{status}");

    t.exec(["rollback", "--yes"]).success();
    assert_eq!(r.versions(), ("1.0.0".into(), "1.0.0".into()));
    let h = t.exec(["history", "--output", "json"]).success().json();
    assert_eq!(h["operations"].as_array().unwrap().len(), 2, "{h}");
    wait_http(&format!("http://127.0.0.1:{}/health", r.port), Duration::from_secs(5));

    // One pointer per repository, moved together, each to its own image of the version.
    let mark = t.exec(["mark-good", "--yes"]).success();
    assert!(mark.stdout.contains(&worker.name), "{}", mark.stdout);
    assert_eq!(web.tag_digest("last_known_good"), web.tag_digest("v1.0.0"));
    assert_eq!(worker.tag_digest("last_known_good"), worker.tag_digest("v1.0.0"));
    // doctor checks every service's repository and pointer.
    let doctor = t.exec(["doctor", "--output", "json"]).json();
    let check = format!("service {}", r.worker);
    let found = doctor["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("{doctor}"))
        .iter()
        .find(|c| c["check"] == check.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no {check} in {doctor}"));
    assert_eq!(found["mark"], "ok", "{found}");
    // Warm puts every service's image of each candidate on the host.
    let warm = t.exec(["warm", "v1.1.0", "--output", "json"]).success().json();
    let rows = warm["candidates"].as_array().unwrap_or_else(|| panic!("{warm}"));
    let labels: Vec<&str> = rows.iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert_eq!(labels.len(), 2, "{warm}");
    assert!(labels[0].contains(&r.web) && labels[1].contains(&r.worker), "{warm}");
    assert!(rows[1]["reference"].as_str().unwrap().contains(&worker.name), "{warm}");
    assert!(rows.iter().all(|r| r["error"].is_null()), "{warm}");
    // Emergency runs every service's last known good image directly.
    t.exec(["deploy", "v1.1.0", "--yes"]).success();
    let run = t.exec(["emergency", "--yes"]).success();
    assert!(run.stdout.contains("1.0.0"), "{}", run.stdout);
    assert_eq!(r.versions(), ("1.0.0".into(), "1.0.0".into()));
    assert_eq!(
        inspect(&r.worker, "{{.Config.Image}}"),
        format!("{}@{}", worker.image(), worker.tag_digest("v1.0.0").unwrap())
    );
    let h = t.exec(["history", "--output", "json"]).success().json();
    let last = h["operations"].as_array().unwrap().last().cloned().unwrap();
    assert_eq!(last["op"], "emergency", "{h}");
    assert_eq!(
        last["services"][&r.worker]["digest"],
        worker.tag_digest("v1.0.0").unwrap(),
        "{h}"
    );
    // A drill rehearses each service's image beside its production container.
    let drill = t.exec(["drill", "v1.1.0", "--output", "json"]).success().json();
    let rows = drill["candidates"].as_array().unwrap_or_else(|| panic!("{drill}"));
    let selectors: Vec<String> = rows.iter().map(|r| r["selectors"].to_string()).collect();
    assert_eq!(rows.len(), 2, "{drill}");
    assert!(
        selectors[0].contains(&r.web) && selectors[1].contains(&r.worker),
        "{drill}"
    );
    assert!(rows.iter().all(|r| r["ready"] == true), "{drill}");
    // prune --local looks at every service's repository on the host, and keeps what runs.
    let local = t
        .exec(["prune", "--local", "--dry-run", "--output", "json"])
        .success()
        .json();
    let refs = local["decisions"].to_string();
    assert!(refs.contains(&web.name) && refs.contains(&worker.name), "{local}");
    assert_eq!(r.versions(), ("1.0.0".into(), "1.0.0".into()));
}

#[test]
fn a_release_whose_worker_fails_validation_puts_the_web_app_back_too() {
    let (web, worker) = repositories(
        &["v1.0.0", "v1.1.0"],
        &[AppImage::new("v1.0.0"), AppImage::new("v1.1.0").crash(3)],
    );
    let r = Release::run(&web, &worker, "v1.0.0");
    let web_id = inspect(&r.web, "{{.Id}}");
    let t = r.test(&web, &worker);
    let run = t.exec(["deploy", "v1.1.0", "--yes"]).code(6);
    assert!(
        run.stderr.contains(&r.worker),
        "the failing service is named: {}",
        run.stderr
    );
    // Both are back on 1.0.0: the web app, which validated, went back too, as the same container.
    assert_eq!(r.versions(), ("1.0.0".into(), "1.0.0".into()));
    assert_eq!(inspect(&r.web, "{{.Id}}"), web_id);
    assert_eq!(inspect(&r.worker, "{{.State.Running}}"), "true");
    let leftovers = docker_ok(&[
        "ps",
        "-a",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("name={}-prev", r.web),
    ]);
    assert_eq!(leftovers, "", "nothing set aside is left");
    let h = t.exec(["history", "--output", "json"]).success().json();
    let ops = h["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 1, "{h}");
    assert_eq!(ops[0]["result"], "reverted", "{h}");
    // A result per service: the worker failed, the web app (which validated) was put back.
    assert_eq!(ops[0]["results"][&r.web], "reverted", "{h}");
    let worker_result = ops[0]["results"][&r.worker].as_str().unwrap_or_default();
    assert!(
        worker_result.starts_with("failed: ") && worker_result.contains("exited"),
        "{h}"
    );
}

#[test]
fn a_version_missing_from_one_repository_is_refused_with_nothing_changed() {
    let (web, worker) = repositories(&["v1.0.0", "v1.1.0"], &[AppImage::new("v1.0.0")]);
    let r = Release::run(&web, &worker, "v1.0.0");
    let ids = (inspect(&r.web, "{{.Id}}"), inspect(&r.worker, "{{.Id}}"));
    let t = r.test(&web, &worker);
    let run = t.exec(["deploy", "v1.1.0", "--yes"]).code(4);
    assert!(
        run.stderr.contains(&r.worker) && run.stderr.contains(&worker.name) && run.stderr.contains("1.1.0"),
        "names the service and the repository that lack it: {}",
        run.stderr
    );
    assert_eq!((inspect(&r.web, "{{.Id}}"), inspect(&r.worker, "{{.Id}}")), ids);
    let h = t.exec(["history", "--output", "json"]).success().json();
    assert!(h["operations"].as_array().unwrap().is_empty(), "{h}");
    // `versions` marks what every service has.
    let versions = t.exec(["versions", "--output", "json"]).success().json();
    let row = |v: &str| {
        versions["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == v)
            .cloned()
            .unwrap_or_else(|| panic!("{v} in {versions}"))
    };
    assert!(row("1.0.0")["marks"].to_string().contains("release"), "{versions}");
    assert!(!row("1.1.0")["marks"].to_string().contains("release"), "{versions}");
}

#[test]
fn a_compose_release_of_two_services_moves_both_and_status_tells_drift() {
    let (web, worker) = repositories(
        &["v1.0.0", "v1.1.0"],
        &[AppImage::new("v1.0.0"), AppImage::new("v1.1.0")],
    );
    let port = free_port();
    let compose = ComposeProject::new(
        "btrel",
        &format!(
            "version: \"3\"\nservices:\n  web:\n    image: {}:v1.0.0\n    ports:\n      - \"127.0.0.1:{port}:8080\"\n  \
             worker:\n    image: {}:v1.0.0\n",
            web.image(),
            worker.image()
        ),
        None,
    );
    compose.run(&["up", "-d"]);
    let project = compose.name.clone();
    let t = Test::new().repo(
        &web,
        &format!(
            "[target]\nkind = \"compose\"\nproject = \"{project}\"\nnames = [\"web\", \"worker\"]\n\
             [target.repositories]\nworker = \"{}\"\n[health]\nhttp = \"http://127.0.0.1:{port}/health\"\n\
             timeout = \"20s\"\n",
            worker.name
        ),
    );
    let (wc, kc) = (format!("{project}_web_1"), format!("{project}_worker_1"));
    t.exec(["deploy", "v1.1.0", "--yes"]).success();
    assert_eq!((version_of(&wc), version_of(&kc)), ("1.1.0".into(), "1.1.0".into()));
    assert_eq!(
        inspect(&kc, "{{index .Config.Labels \"com.docker.compose.service\"}}"),
        "worker"
    );
    t.exec(["rollback", "--yes"]).success();
    assert_eq!((version_of(&wc), version_of(&kc)), ("1.0.0".into(), "1.0.0".into()));
    // The worker moved by hand: status says the release's services run different versions.
    compose.run(&["up", "-d", "--no-deps", "worker"]);
    docker(&["rm", "-f", &kc]);
    let moved = format!(
        "version: \"3\"\nservices:\n  web:\n    image: {}:v1.0.0\n    ports:\n      - \"127.0.0.1:{port}:8080\"\n  \
         worker:\n    image: {}:v1.1.0\n",
        web.image(),
        worker.image()
    );
    std::fs::write(compose.dir.path().join("docker-compose.yml"), moved).unwrap();
    compose.run(&["up", "-d", "--no-deps", "worker"]);
    let status = t.exec(["status", "--output", "json"]).success().json();
    let drift = status["release_drift"].as_str().unwrap_or_else(|| panic!("{status}"));
    assert!(
        drift.contains("1.0.0: web") && drift.contains("1.1.0: worker"),
        "{drift}"
    );
    let table = t.exec(["status"]).success();
    assert!(table.stdout.contains("different versions"), "{}", table.stdout);
    let h = t.exec(["history", "--output", "json"]).success().json();
    assert_eq!(h["operations"].as_array().unwrap().len(), 2, "{h}");
}

#[test]
fn prune_on_a_release_keeps_what_each_service_runs_in_its_own_repository() {
    let (web, worker) = repositories(
        &["v1.0.0", "v1.1.0"],
        &[AppImage::new("v1.0.0"), AppImage::new("v1.1.0")],
    );
    for repo in [&web, &worker] {
        repo.push_synthetic(&["v1.2.0"], "2026-01-01T00:00:00Z");
        repo.push_synthetic(&["v1.3.0"], "2026-02-01T00:00:00Z");
    }
    let r = Release::run(&web, &worker, "v1.0.0");
    let t = r.test(&web, &worker);
    std::fs::write(
        t.dir.path().join("policy.toml"),
        "description = \"newest and what runs\"\n[protect]\nhistory = 1\n[[keep]]\nnewest = 1\n",
    )
    .unwrap();
    t.exec(["deploy", "v1.1.0", "--yes"]).success();
    let plan = t
        .exec(["prune", "--policy", "policy.toml", "--dry-run", "--output", "json"])
        .success()
        .json();
    let repos = plan["repositories"].as_array().unwrap_or_else(|| panic!("{plan}"));
    let names: Vec<&str> = repos.iter().map(|r| r["repository"].as_str().unwrap()).collect();
    assert_eq!(names, [web.image(), worker.image()], "{plan}");
    t.exec(["prune", "--policy", "policy.toml", "--yes"]).success();
    for repo in [&web, &worker] {
        let mut tags = repo.tags();
        tags.sort();
        // The newest, and what the release runs (the worker's from its own container and history).
        assert_eq!(tags, ["v1.1.0", "v1.3.0"], "{}", repo.name);
    }
    assert_eq!(r.versions(), ("1.1.0".into(), "1.1.0".into()));
}
