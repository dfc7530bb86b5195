//! Swarm services on the real 2-node swarm `scripts/test-env` starts: engines in network
//! namespaces bt-s1 (manager) and bt-s2 (worker), joined over a bridge this namespace also sits
//! on (10.231.0.0/24), so host-mode published ports are reachable from here as from a machine on
//! the nodes' network. The main engine never joins a swarm (checked). Services publish in host
//! mode (the ingress mesh does not work on this kernel) and each test removes its own.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{AppImage, BASE_IMAGE, Repo, Test, base_image, docker, docker_ok, unique};

fn swarm_dir() -> PathBuf {
    crate::harness::hosts().swarm_dir.clone()
}

fn manager_socket() -> String {
    format!("unix://{}", swarm_dir().join("s1/docker.sock").display())
}

/// `docker` against the swarm's manager.
fn s1(args: &[&str]) -> Output {
    let socket = manager_socket();
    docker(&[&["-H", socket.as_str()], args].concat())
}

fn s1_ok(args: &[&str]) -> String {
    crate::harness::ok_on(s1, "docker (swarm manager)", args)
}

/// Fails loudly when the swarm is not there, and checks the main engine stays out of it.
fn require_swarm() {
    let nodes = s1(&["node", "ls", "--format", "{{.Hostname}} {{.Status}}"]);
    let listed = String::from_utf8_lossy(&nodes.stdout).to_string();
    assert!(
        nodes.status.success() && listed.matches("Ready").count() == 2,
        "no 2-node swarm answers at {} ({listed}{}): run `scripts/test-env` (as root) first",
        manager_socket(),
        String::from_utf8_lossy(&nodes.stderr)
    );
    let main = docker_ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    assert_eq!(main, "inactive", "the main engine must stay out of swarm mode");
}

/// A service on the swarm, removed when dropped.
pub(crate) struct Service {
    pub(crate) name: String,
    /// A stack it belongs to (removed with `docker stack rm`).
    stack: Option<String>,
}

impl Service {
    /// `docker service create` with `replicas` tasks, one per node, publishing 8080 in host mode.
    pub(crate) fn create(prefix: &str, image: &str, extra: &[&str]) -> Self {
        require_swarm();
        let name = unique(prefix);
        let mut args = vec![
            "service",
            "create",
            "--detach",
            "--quiet",
            "--name",
            &name,
            "--replicas",
            "2",
            "--replicas-max-per-node",
            "1",
            "--publish",
            "mode=host,target=8080",
            "--update-monitor",
            "1s",
            "--stop-grace-period",
            "2s",
        ];
        args.extend_from_slice(extra);
        args.push(image);
        s1_ok(&args);
        let s = Self { name, stack: None };
        s.wait_running(image, Duration::from_secs(90));
        s
    }

    /// `docker stack deploy` of a compose file with service `web` (2 replicas, host-mode port).
    fn stack(prefix: &str, image: &str) -> Self {
        require_swarm();
        let stack = unique(prefix);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stack.yml");
        std::fs::write(
            &file,
            format!(
                "version: \"3.8\"\nservices:\n  web:\n    image: {image}\n    ports:\n      - target: 8080\n        mode: host\n    \
                 stop_grace_period: 2s\n    deploy:\n      replicas: 2\n      update_config:\n        monitor: 1s\n"
            ),
        )
        .unwrap();
        s1_ok(&["stack", "deploy", "--compose-file", file.to_str().unwrap(), &stack]);
        let s = Self {
            name: format!("{stack}_web"),
            stack: Some(stack),
        };
        s.wait_running(image, Duration::from_secs(90));
        s
    }

    /// The digest each task Swarm wants running runs, with its node and state.
    pub(crate) fn tasks(&self) -> Vec<(String, String, String)> {
        tasks_of(&self.name)
    }

    /// The image the spec names.
    fn spec_image(&self) -> String {
        s1_ok(&[
            "service",
            "inspect",
            &self.name,
            "--format",
            "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
        ])
    }

    fn wait_running(&self, image: &str, within: Duration) {
        let start = Instant::now();
        loop {
            let tasks = self.tasks();
            if tasks.len() == 2 && tasks.iter().all(|(_, _, state)| state == "Running") {
                return;
            }
            assert!(
                start.elapsed() < within,
                "service {} ({image}) did not get 2 running tasks: {tasks:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The config of a test on this service.
    pub(crate) fn test(&self, repo: &Repo, health: &str) -> Test {
        Test::new().repo(repo, &self.target(health))
    }

    /// The `[target]` and `[health]` of a config on this service.
    pub(crate) fn target(&self, health: &str) -> String {
        let stack = match &self.stack {
            Some(s) => format!("stack = \"{s}\"\nname = \"web\"\n"),
            None => format!("name = \"{}\"\n", self.name),
        };
        format!(
            "[target]\nkind = \"swarm\"\n{stack}host = \"{}\"\n[health]\n{health}\n",
            manager_socket()
        )
    }

    /// What each task serves at /health, asked at its node's address and host port.
    fn served(&self) -> Vec<String> {
        let ids = s1_ok(&["service", "ps", &self.name, "--filter", "desired-state=running", "-q"]);
        let mut out = Vec::new();
        for id in ids.lines() {
            let node = s1_ok(&["inspect", id, "--format", "{{.NodeID}}"]);
            let addr = s1_ok(&["node", "inspect", &node, "--format", "{{.Status.Addr}}"]);
            let port = s1_ok(&[
                "inspect",
                id,
                "--format",
                "{{range .Status.PortStatus.Ports}}{{.PublishedPort}} {{end}}",
            ]);
            // Docker 20.10 may publish IPv4 and IPv6 on different random ports: the first that answers.
            let body = port
                .split_whitespace()
                .find_map(|port| crate::harness::http_get(&format!("http://{addr}:{port}/health")))
                .unwrap_or_default();
            out.push(body.trim().to_string());
        }
        out.sort();
        out
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        match &self.stack {
            Some(stack) => drop(s1(&["stack", "rm", stack])),
            None => drop(s1(&["service", "rm", &self.name])),
        }
    }
}

/// The digest each running task of service `name` runs, with its node and state.
fn tasks_of(name: &str) -> Vec<(String, String, String)> {
    let out = s1_ok(&[
        "service",
        "ps",
        name,
        "--filter",
        "desired-state=running",
        "--no-trunc",
        "--format",
        "{{.Node}} {{.Image}} {{.CurrentState}}",
    ]);
    out.lines()
        .map(|l| {
            let mut parts = l.split_whitespace();
            let node = parts.next().unwrap_or_default().to_string();
            let image = parts.next().unwrap_or_default().to_string();
            let digest = image.rsplit_once('@').map_or(image.clone(), |(_, d)| d.to_string());
            (node, digest, parts.next().unwrap_or_default().to_string())
        })
        .collect()
}

/// Pushes a custom image to `repo` as `tag` (a Dockerfile over the busybox base); returns its digest.
fn push_custom(repo: &Repo, tag: &str, dockerfile: &str) -> String {
    base_image();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile.replace("BASE", BASE_IMAGE)).unwrap();
    let image = format!("{}:{tag}", repo.image());
    docker_ok(&["build", "-q", "-t", &image, dir.path().to_str().unwrap()]);
    docker_ok(&["push", "-q", &image]);
    repo.tag_digest(tag).expect("pushed tag has a digest")
}

/// A repository with 1.0.0 and 1.1.0, both with a passing HEALTHCHECK; their digests.
fn two_healthy_versions(test: &str) -> (Repo, String, String) {
    let repo = Repo::new(test);
    let d1 = repo.push(&AppImage::new("1.0.0").healthcheck(true));
    let d2 = repo.push(&AppImage::new("1.1.0").healthcheck(true));
    (repo, d1, d2)
}

pub(crate) const PROBE: &str = "http = \"http://127.0.0.1:8080/health\"\ntimeout = \"60s\"";

#[test]
fn swarm_deploy_and_rollback_move_both_nodes_tasks_and_keep_the_main_engine_out() {
    let (repo, d1, d2) = two_healthy_versions("swarm-roll");
    let svc = Service::create("bt-swarm-roll", &format!("{}:1.0.0@{d1}", repo.image()), &[]);
    let t = svc.test(&repo, PROBE);

    // --parallelism overrides the service's own update config (1 at a time).
    let run = t.exec(["deploy", "1.1.0", "--yes", "--parallelism", "2"]).success();
    assert!(run.stdout.contains("deployed swarm service"), "{}", run.stdout);
    let tasks = svc.tasks();
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    let nodes: std::collections::BTreeSet<_> = tasks.iter().map(|t| t.0.clone()).collect();
    assert_eq!(nodes.len(), 2, "one task per node: {tasks:?}");
    assert!(tasks.iter().all(|t| t.1 == d2), "every task on 1.1.0: {tasks:?}");
    assert_eq!(svc.served(), vec!["1.1.0", "1.1.0"]);
    assert!(
        svc.spec_image().ends_with(&d2),
        "pinned by digest: {}",
        svc.spec_image()
    );
    let parallelism = s1_ok(&[
        "service",
        "inspect",
        &svc.name,
        "--format",
        "{{.Spec.UpdateConfig.Parallelism}}",
    ]);
    assert_eq!(parallelism, "2");

    t.exec(["rollback", "--yes"]).success();
    let tasks = svc.tasks();
    assert!(tasks.iter().all(|t| t.1 == d1), "every task back on 1.0.0: {tasks:?}");
    assert_eq!(svc.served(), vec!["1.0.0", "1.0.0"]);

    let status = t.exec(["status", "--output", "json"]).success().json();
    let rows = status["tasks"].as_array().unwrap();
    let on: std::collections::BTreeSet<_> = rows.iter().map(|r| r["node"].as_str().unwrap().to_string()).collect();
    assert_eq!(on, ["bt-s1".to_string(), "bt-s2".to_string()].into(), "{status}");
    assert!(
        rows.iter().all(|r| r["version"] == "1.0.0" && r["state"] == "running"),
        "{status}"
    );
    assert_eq!(status["running"], 2);
    assert_eq!(status["replicas"], 2);
    assert!(status["warnings"].as_array().unwrap().is_empty(), "{status}");

    let history = t.exec(["history", "--output", "json"]).success().json();
    let ops: Vec<_> = history["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["op"].as_str().unwrap().to_string(),
                o["result"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        vec![("deploy".into(), "ok".into()), ("rollback".into(), "ok".into())],
        "{history}"
    );
    let versions = t.exec(["versions", "--output", "json"]).success().json();
    let deployed: Vec<_> = versions["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["marks"].as_array().unwrap().iter().any(|m| m == "deployed"))
        .map(|v| v["tag"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deployed, vec!["1.0.0"], "{versions}");
    // Retention keeps what the service runs, with the reason.
    std::fs::write(t.dir.path().join("p.toml"), "[[keep]]\nnewest = 1\n").unwrap();
    let plan = t
        .exec(["prune", "--policy", "p.toml", "--dry-run", "--output", "json"])
        .success()
        .json();
    let kept = plan["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["digest"] == d1.as_str())
        .unwrap_or_else(|| panic!("1.0.0 in the plan: {plan}"));
    assert_eq!(kept["action"], "keep", "{plan}");
    assert!(
        kept["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains("the target runs it now")),
        "{plan}"
    );
    require_swarm();
}

#[test]
fn the_first_swarm_rollback_after_adopting_goes_back_to_what_ran_before() {
    let repo = Repo::new("swarm-adopt");
    let d1 = repo.push(&AppImage::new("1.0.0").healthcheck(true));
    repo.push(&AppImage::new("1.1.0").healthcheck(true));
    repo.push(&AppImage::new("1.2.0").healthcheck(true));
    // Created by hand on 1.0.0 (by tag, as `docker service create` resolves it).
    let svc = Service::create("bt-swarm-adopt", &format!("{}:1.0.0", repo.image()), &[]);
    let t = svc.test(&repo, PROBE);
    t.exec(["deploy", "1.2.0", "--yes"]).success();
    let plan = t.exec(["rollback", "--dry-run", "--output", "json"]).success().json();
    assert_eq!(plan["to"]["version"], "1.0.0", "{plan}");
    assert_eq!(plan["to"]["digest"], d1.as_str(), "{plan}");
}

#[test]
fn swarm_failing_healthcheck_is_reverted_and_recorded() {
    let repo = Repo::new("swarm-hc");
    let d1 = repo.push(&AppImage::new("1.0.0").healthcheck(true));
    repo.push(&AppImage::new("1.1.0").healthcheck(false));
    let svc = Service::create("bt-swarm-hc", &format!("{}:1.0.0@{d1}", repo.image()), &[]);
    let t = svc.test(&repo, PROBE);
    let run = t.exec(["deploy", "1.1.0", "--yes"]).code(6);
    // Swarm's verdict (paused) or the failed task, whichever backtrack saw first.
    assert!(
        run.stderr.contains("Swarm paused the update") || run.stderr.contains("failed: "),
        "{}",
        run.stderr
    );
    assert!(
        svc.spec_image().ends_with(&d1),
        "spec back on 1.0.0: {}",
        svc.spec_image()
    );
    svc.wait_running(&d1, Duration::from_secs(60));
    assert!(svc.tasks().iter().all(|t| t.1 == d1), "{:?}", svc.tasks());
    let history = t.exec(["history", "--output", "json"]).success().json();
    let last = history["operations"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["result"], "reverted", "{history}");
    assert_eq!(last["to"]["version"], "1.1.0", "{history}");
    let versions = t.exec(["versions", "--output", "json"]).success().json();
    let v110 = versions["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["tag"] == "1.1.0")
        .unwrap()
        .clone();
    assert!(
        v110["marks"].as_array().unwrap().iter().any(|m| m == "failed"),
        "{versions}"
    );
}

#[test]
fn swarm_probe_failing_on_one_task_reverts_naming_that_task() {
    let repo = Repo::new("swarm-probe");
    let d1 = repo.push(&AppImage::new("1.0.0"));
    // 1.1.0 serves /health everywhere but on node bt-s2 (Swarm fills NODE_HOST per task).
    push_custom(
        &repo,
        "1.1.0",
        "FROM BASE\nLABEL org.opencontainers.image.version=\"1.1.0\"\nCMD [\"/bin/sh\",\"-c\",\"mkdir -p /www; \
         [ \\\"$NODE_HOST\\\" = bt-s2 ] || echo 1.1.0 > /www/health; trap 'kill $pid; exit 0' TERM; \
         httpd -f -p 8080 -h /www & pid=$!; wait $pid\"]\n",
    );
    let svc = Service::create(
        "bt-swarm-probe",
        &format!("{}:1.0.0@{d1}", repo.image()),
        &["--env", "NODE_HOST={{.Node.Hostname}}"],
    );
    let t = svc.test(&repo, "http = \"http://127.0.0.1:8080/health\"\ntimeout = \"30s\"");
    let run = t.exec(["deploy", "1.1.0", "--yes"]).code(6);
    assert!(
        run.stderr.contains("on bt-s2") && run.stderr.contains("HTTP 404"),
        "{}",
        run.stderr
    );
    svc.wait_running(&d1, Duration::from_secs(60));
    assert!(svc.tasks().iter().all(|t| t.1 == d1), "{:?}", svc.tasks());
    assert_eq!(svc.served(), vec!["1.0.0", "1.0.0"]);
    let history = t.exec(["history", "--output", "json"]).success().json();
    assert_eq!(
        history["operations"].as_array().unwrap().last().unwrap()["result"],
        "reverted",
        "{history}"
    );
}

#[test]
fn swarm_stack_service_is_found_by_its_stack_name() {
    let (repo, d1, d2) = two_healthy_versions("swarm-stack");
    let svc = Service::stack("bt-stack", &format!("{}:1.0.0@{d1}", repo.image()));
    let t = svc.test(&repo, PROBE);
    let status = t.exec(["status", "--output", "json"]).success().json();
    assert_eq!(status["service"], svc.name.as_str(), "{status}");
    let stack = svc.stack.clone().unwrap();
    assert_eq!(status["target"], format!("swarm service {stack}/web"), "{status}");
    // start-first: the new task runs before the old one stops (a host-mode port is dynamic, so
    // both fit on one node). --mark-good --soak mean on a service what they mean on containers.
    let run = t
        .exec([
            "deploy",
            "1.1.0",
            "--yes",
            "--order",
            "start-first",
            "--mark-good",
            "--soak",
            "1s",
        ])
        .success();
    assert!(svc.tasks().iter().all(|t| t.1 == d2), "{:?}", svc.tasks());
    assert!(run.stderr.contains("stayed healthy"), "{}", run.stderr);
    assert_eq!(
        repo.tag_digest("last_known_good").as_deref(),
        Some(d2.as_str()),
        "the pointer moved"
    );
    let order = s1_ok(&[
        "service",
        "inspect",
        &svc.name,
        "--format",
        "{{.Spec.UpdateConfig.Order}}",
    ]);
    assert_eq!(order, "start-first");
    // What a Swarm service cannot do says so, naming the kind and the alternative, as a usage
    // error (never "not built yet").
    for cmd in [&["warm"][..], &["drill"], &["prune", "--local"]] {
        let run = t.exec(cmd).code(2);
        assert!(
            run.stderr.contains("Swarm") && !run.stderr.contains("not built"),
            "{cmd:?}: {}",
            run.stderr
        );
    }
    // Without the stack, the name means another service: refused as a usage error.
    let wrong = Test::new().repo(
        &repo,
        &format!(
            "[target]\nkind = \"swarm\"\nname = \"web\"\nhost = \"{}\"\n",
            manager_socket()
        ),
    );
    let run = wrong.exec(["status"]).code(2);
    assert!(run.stderr.contains("no such service"), "{}", run.stderr);
}

#[test]
fn swarm_emergency_forces_last_known_good_onto_every_task() {
    let (repo, d1, d2) = two_healthy_versions("swarm-emergency");
    let svc = Service::create(
        "bt-swarm-em",
        &format!("{}:1.1.0@{d2}", repo.image()),
        &["--update-parallelism", "2"],
    );
    let t = svc.test(&repo, PROBE);
    t.exec(["mark-good", "1.0.0"]).success();
    assert!(svc.tasks().iter().all(|t| t.1 == d2), "{:?}", svc.tasks());
    // doctor probes each task at its node and does not ask for an lkg image on the manager.
    let doctor = t.exec(["doctor"]).success();
    assert!(
        doctor.stdout.contains("GET http://127.0.0.1:8080/health: 2xx"),
        "{}",
        doctor.stdout
    );
    let plan = t.exec(["emergency", "--dry-run"]).success();
    assert!(plan.stdout.contains("--force"), "{}", plan.stdout);
    assert!(
        svc.tasks().iter().all(|t| t.1 == d2),
        "a dry run changes nothing: {:?}",
        svc.tasks()
    );
    let run = t.exec(["emergency", "--yes", "--reason", "pager"]).success();
    assert!(run.stdout.contains("EMERGENCY"), "{}", run.stdout);
    assert!(svc.tasks().iter().all(|t| t.1 == d1), "{:?}", svc.tasks());
    let status = t.exec(["status", "--output", "json"]).success().json();
    assert!(
        status["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().starts_with("EMERGENCY")),
        "{status}"
    );
    // A deploy leaves emergency mode.
    t.exec(["deploy", "1.1.0", "--yes"]).success();
    let status = t.exec(["status", "--output", "json"]).success().json();
    assert!(status["warnings"].as_array().unwrap().is_empty(), "{status}");
    let history = t.exec(["history", "--output", "json"]).success().json();
    let ops: Vec<_> = history["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["op"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ops, vec!["mark-good", "emergency", "deploy"], "{history}");
}

#[test]
fn swarm_update_interrupted_by_a_crash_is_put_back_by_the_next_run() {
    let (repo, d1, _) = two_healthy_versions("swarm-crash");
    let svc = Service::create("bt-swarm-crash", &format!("{}:1.0.0@{d1}", repo.image()), &[]);
    let t = svc.test(&repo, PROBE);
    let mut child = t
        .command()
        .args(["deploy", "1.1.0", "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once the update is under way (the spec names 1.1.0), before its verdict.
    let start = Instant::now();
    while svc.spec_image().ends_with(&d1) {
        assert!(start.elapsed() < Duration::from_secs(30), "the update never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let status = t.exec(["status", "--output", "json"]).success().json();
    assert!(
        status["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("did not finish")),
        "{status}"
    );
    // The next run settles it first (the previous image goes back), then does its own work.
    let run = t.exec(["rollback", "1.0.0", "--yes"]).success();
    assert!(
        run.stderr.contains("putting the previous version back"),
        "{}",
        run.stderr
    );
    assert!(svc.spec_image().ends_with(&d1), "{}", svc.spec_image());
    assert!(svc.tasks().iter().all(|t| t.1 == d1), "{:?}", svc.tasks());
    let history = t.exec(["history", "--output", "json"]).success().json();
    assert_eq!(
        history["operations"][0]["result"], "rolled-back-after-crash",
        "{history}"
    );
}

#[test]
fn swarm_manager_over_ssh_keeps_journal_and_lock_on_the_manager() {
    let (repo, d1, d2) = two_healthy_versions("swarm-ssh");
    let svc = Service::create(
        "bt-swarm-ssh",
        &format!("{}:1.0.0@{d1}", repo.image()),
        &["--update-parallelism", "2"],
    );
    let ssh_config = crate::harness::hosts().h2_dir.join("client/ssh_config");
    let t = Test::new()
        .repo(
            &repo,
            &format!(
                "[target]\nkind = \"swarm\"\nname = \"{}\"\nhost = \"ssh://bt-remote@{}\"\n[health]\n{PROBE}\n",
                svc.name,
                crate::harness::hosts().swarm_manager
            ),
        )
        .env("BACKTRACK_SSH_CONFIG", ssh_config.to_str().unwrap());
    t.exec(["deploy", "1.1.0", "--yes"]).success();
    assert!(svc.tasks().iter().all(|t| t.1 == d2), "{:?}", svc.tasks());
    t.exec(["rollback", "--yes"]).success();
    assert!(svc.tasks().iter().all(|t| t.1 == d1), "{:?}", svc.tasks());
    // The journal is on the manager's host, not here.
    let remote_journal = swarm_dir()
        .join("s1/state/backtrack/targets")
        .join(format!("local_swarm_{}", svc.name))
        .join("history.jsonl");
    let text = std::fs::read_to_string(&remote_journal)
        .unwrap_or_else(|e| panic!("no journal at {}: {e}", remote_journal.display()));
    assert_eq!(text.matches("\"phase\":\"finished\"").count(), 2, "{text}");
    assert!(!t.state_dir().join("targets").exists() || walk_has_no_journal(&t.state_dir()));
}

fn walk_has_no_journal(dir: &std::path::Path) -> bool {
    let out = Command::new("find")
        .args([dir.to_str().unwrap(), "-name", "journal*"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// The env each running task's container sees, read on the manager's node (one task per node).
fn task_env_on_manager(svc: &Service, var: &str) -> String {
    let ids = s1_ok(&[
        "service",
        "ps",
        &svc.name,
        "--filter",
        "desired-state=running",
        "--filter",
        "node=bt-s1",
        "-q",
    ]);
    let id = ids.lines().next().expect("a task on the manager's node");
    let container = s1_ok(&["inspect", id, "--format", "{{.Status.ContainerStatus.ContainerID}}"]);
    s1_ok(&["exec", &container, "sh", "-c", &format!("echo \"${{{var}}}\"")])
}

#[test]
fn a_swarm_rollback_with_restore_config_puts_back_the_task_template_the_version_ran_with() {
    let (repo, d1, _) = two_healthy_versions("swarm-cfg");
    let svc = Service::create(
        "bt-swarm-cfg",
        &format!("{}:1.0.0@{d1}", repo.image()),
        &["--env", "MODE=old", "--env", "API_TOKEN=tok-old-value"],
    );
    let t = svc.test(&repo, PROBE);
    t.exec(["deploy", "1.1.0", "--yes", "--parallelism", "2"]).success();
    assert_eq!(
        task_env_on_manager(&svc, "MODE"),
        "old",
        "a deploy keeps the spec's env"
    );
    // The release changes the spec by hand: a new variable, another value, a new secret.
    s1_ok(&[
        "service",
        "update",
        "--quiet",
        "--detach=false",
        "--update-parallelism",
        "2",
        "--env-add",
        "MODE=new",
        "--env-add",
        "NEW_FLAG=1",
        "--env-add",
        "API_TOKEN=tok-new-value",
        &svc.name,
    ]);
    assert_eq!(task_env_on_manager(&svc, "MODE"), "new");

    let plan = t
        .exec(["rollback", "--dry-run", "--restore-config", "--output", "json"])
        .success();
    let changes = plan.json()["config_changes"].clone();
    assert!(
        changes
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"key": "env.MODE", "now": "new", "then": "old"})),
        "{changes}"
    );
    let run = t
        .exec(["rollback", "--restore-config", "--yes", "--parallelism", "2"])
        .success();
    for out in [&plan, &run] {
        assert!(
            !out.stdout.contains("tok-") && !out.stderr.contains("tok-"),
            "{}{}",
            out.stdout,
            out.stderr
        );
    }
    assert_eq!(svc.served(), vec!["1.0.0", "1.0.0"]);
    let env = s1_ok(&[
        "service",
        "inspect",
        &svc.name,
        "--format",
        "{{json .Spec.TaskTemplate.ContainerSpec.Env}}",
    ]);
    assert!(env.contains("MODE=old") && !env.contains("NEW_FLAG"), "{env}");
    assert_eq!(task_env_on_manager(&svc, "MODE"), "old");
    assert_eq!(task_env_on_manager(&svc, "NEW_FLAG"), "");
    assert!(svc.spec_image().ends_with(&d1), "{}", svc.spec_image());
}

/// The running tasks' digests of a service.
fn task_digests(service: &str) -> Vec<String> {
    tasks_of(service).into_iter().map(|t| t.1).collect()
}

/// Waits (bounded) until every running task of `service` runs `digest`.
fn wait_tasks_on(service: &str, digest: &str) {
    let start = Instant::now();
    loop {
        let tasks = task_digests(service);
        if !tasks.is_empty() && tasks.iter().all(|t| t == digest) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{service}: {tasks:?}, not all on {digest}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A stack of two services from two repositories, `web` (probed) and `worker`, updated as one
/// release: both move, a broken worker puts the web app back too, and a rollback moves both.
#[test]
fn a_swarm_stack_release_of_two_services_moves_and_reverts_together() {
    require_swarm();
    let (web, w1, w2) = two_healthy_versions("swarm-rel-web");
    let w3 = web.push(&AppImage::new("1.2.0").healthcheck(true));
    let worker = Repo::new("swarm-rel-worker");
    let worker_of = |v: &str| AppImage::new(v).healthcheck(true).label("io.test.role", "worker");
    let k1 = worker.push(&worker_of("1.0.0"));
    let k2 = worker.push(&worker_of("1.1.0"));
    worker.push(&AppImage::new("1.2.0").crash(3).label("io.test.role", "worker"));
    // Both services update start-first: a node never runs out of the stack's tasks (Swarm 20.10
    // races removing a node's network attachment with the next task's start: "unknown network").
    let stack = unique("bt-relstack");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stack.yml");
    std::fs::write(
        &file,
        format!(
            "version: \"3.8\"\nservices:\n  web:\n    image: {}:1.0.0@{w1}\n    ports:\n      - target: 8080\n        mode: host\n    \
             stop_grace_period: 2s\n    deploy:\n      replicas: 2\n      update_config:\n        monitor: 1s\n        \
             order: start-first\n  worker:\n    image: {}:1.0.0@{k1}\n    stop_grace_period: 2s\n    deploy:\n      \
             replicas: 1\n      update_config:\n        monitor: 1s\n        order: start-first\n",
            web.image(),
            worker.image()
        ),
    )
    .unwrap();
    s1_ok(&["stack", "deploy", "--compose-file", file.to_str().unwrap(), &stack]);
    let _removed = Service {
        name: format!("{stack}_web"),
        stack: Some(stack.clone()),
    };
    let (ws, ks) = (format!("{stack}_web"), format!("{stack}_worker"));
    wait_tasks_on(&ws, &w1);
    wait_tasks_on(&ks, &k1);
    let t = Test::new().repo(
        &web,
        &format!(
            "[target]\nkind = \"swarm\"\nstack = \"{stack}\"\nnames = [\"web\", \"worker\"]\nhost = \"{}\"\n\
             [target.repositories]\nworker = \"{}\"\n[health]\n{PROBE}\n",
            manager_socket(),
            worker.name
        ),
    );
    let run = t.exec(["deploy", "1.1.0", "--yes"]).success();
    assert!(run.stdout.contains("release"), "{}", run.stdout);
    wait_tasks_on(&ws, &w2);
    wait_tasks_on(&ks, &k2);
    let status = t.exec(["status", "--output", "json"]).success().json();
    assert!(status["release_drift"].is_null(), "{status}");
    let services: std::collections::BTreeSet<&str> = status["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["service"].as_str().unwrap())
        .collect();
    assert_eq!(services, ["web", "worker"].into(), "{status}");
    // With `stack` alone, the release is every service of the stack whose image comes from the
    // registry, each from the repository its image names.
    let whole = Test::new().repo(
        &web,
        &format!(
            "[target]\nkind = \"swarm\"\nstack = \"{stack}\"\nhost = \"{}\"\n[health]\n{PROBE}\n",
            manager_socket()
        ),
    );
    let status = whole.exec(["status", "--output", "json"]).success().json();
    assert!(status["target"].as_str().unwrap().contains("release"), "{status}");
    assert!(status["release_drift"].is_null(), "{status}");
    let plan = whole
        .exec(["deploy", "1.0.0", "--dry-run", "--output", "json"])
        .success()
        .json();
    let planned: Vec<&str> = plan["plans"]
        .as_array()
        .unwrap_or_else(|| panic!("{plan}"))
        .iter()
        .map(|p| p["image"].as_str().unwrap())
        .collect();
    assert!(
        planned.len() == 2 && planned[1].starts_with(&worker.image()) && planned[1].ends_with(&k1),
        "{plan}"
    );

    // 1.2.0's worker never starts: the web app, which converged, goes back to 1.1.0 too.
    t.exec(["deploy", "1.2.0", "--yes"]).code(6);
    wait_tasks_on(&ws, &w2);
    wait_tasks_on(&ks, &k2);
    assert!(task_digests(&ws).iter().all(|d| *d != w3));

    t.exec(["rollback", "--yes"]).success();
    wait_tasks_on(&ws, &w1);
    wait_tasks_on(&ks, &k1);
    let h = t.exec(["history", "--output", "json"]).success().json();
    let results: Vec<&str> = h["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["result"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(results, ["ok", "reverted", "ok"], "one entry per release: {h}");
    let failed = &h["operations"][1]["results"];
    assert_eq!(failed["web"], "reverted", "{h}");
    assert!(
        failed["worker"].as_str().unwrap_or_default().starts_with("failed: "),
        "{h}"
    );
    // --mark-good --soak soaks every service on its own image (regression: it looked for one
    // service named after the whole release), then moves both pointers.
    let run = t
        .exec(["deploy", "1.1.0", "--yes", "--mark-good", "--soak", "1s"])
        .success();
    assert!(run.stderr.contains("stayed healthy"), "{}", run.stderr);
    wait_tasks_on(&ws, &w2);
    wait_tasks_on(&ks, &k2);
    // Emergency forces every service onto its own last known good image, in one entry.
    t.exec(["mark-good", "1.1.0", "--yes"]).success();
    assert_eq!(worker.tag_digest("last_known_good"), Some(k2.clone()));
    let run = t.exec(["emergency", "--yes"]).success();
    assert!(run.stdout.contains("worker to its"), "{}", run.stdout);
    wait_tasks_on(&ws, &w2);
    wait_tasks_on(&ks, &k2);
    let h = t.exec(["history", "--output", "json"]).success().json();
    let last = h["operations"].as_array().unwrap().last().cloned().unwrap();
    assert_eq!(last["op"], "emergency", "{h}");
    assert_eq!(last["services"]["worker"]["digest"], k2.as_str(), "{h}");
}
