//! Two test runs at once on one machine: `scripts/test` gives each run a slot, and a slot's remote
//! hosts, swarm, network namespaces and ports are its own (see `scripts/test-env`). This brings a
//! second slot up beside the run's own, runs the same operation on the same names in both at
//! once, and takes the second slot down again without touching the first.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{AppImage, Repo, Test, TestHosts, docker, free_port, hosts, unique};

fn env_dir() -> PathBuf {
    std::env::var("BACKTRACK_TEST_ENV_DIR")
        .unwrap_or_else(|_| "/var/lib/backtrack-test-env".into())
        .into()
}

/// `scripts/test-env ARGS`, taken in turn with other runs' starts (as `scripts/test` does).
fn test_env(args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-env");
    Command::new("flock")
        .arg("-o")
        .arg(env_dir().join("services.lock"))
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/test-env")
}

/// A slot no run holds, held by this test (its flock) and brought down when the test ends.
struct OtherSlot {
    n: u8,
    _lock: File,
}

impl OtherSlot {
    fn take() -> Self {
        let ours: u8 = std::env::var("BACKTRACK_TEST_SLOT").map_or(0, |s| s.parse().expect("BACKTRACK_TEST_SLOT"));
        for n in (1..=9).rev().filter(|n| *n != ours) {
            let lock = OpenOptions::new()
                .create(true)
                .append(true)
                .open(env_dir().join(format!("slot{n}.lock")))
                .expect("open a slot's lock");
            if lock.try_lock().is_ok() {
                return Self { n, _lock: lock };
            }
        }
        panic!("every test slot is held by a run: nowhere to start a second set of hosts");
    }

    fn up(&self) -> TestHosts {
        let n = self.n.to_string();
        let up = test_env(&["--slot", &n]);
        assert!(
            up.status.success(),
            "slot {n} did not come up: {}",
            String::from_utf8_lossy(&up.stderr)
        );
        let print = test_env(&["--slot", &n, "--print"]);
        let vars: BTreeMap<String, String> = String::from_utf8_lossy(&print.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TestHosts::from_vars(|k| vars.get(k).cloned())
    }

    fn down(&self) {
        let down = test_env(&["--slot", &self.n.to_string(), "--down"]);
        assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    }

    /// The slot's network namespaces that exist now.
    fn namespaces(&self) -> Vec<String> {
        ["h2", "h3", "sw", "s1", "s2"]
            .iter()
            .map(|h| format!("bt{}-{h}", self.n))
            .filter(|ns| Path::new("/run/netns").join(ns).exists())
            .collect()
    }
}

impl Drop for OtherSlot {
    fn drop(&mut self) {
        if !self.namespaces().is_empty() {
            test_env(&["--slot", &self.n.to_string(), "--down"]);
        }
    }
}

/// `docker` against an engine's unix socket.
fn on(socket: &Path, args: &[&str]) -> Output {
    let host = format!("unix://{}", socket.display());
    docker(&[&["-H", host.as_str()], args].concat())
}

fn serves(h: &TestHosts, name: &str) -> String {
    let out = on(
        &h.h2_dir.join("docker.sock"),
        &["exec", name, "wget", "-qO-", "http://127.0.0.1:8080/health"],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn swarm_cluster(h: &TestHosts) -> (String, usize) {
    let s1 = h.swarm_dir.join("s1/docker.sock");
    let id = on(&s1, &["info", "--format", "{{.Swarm.Cluster.ID}}"]);
    let nodes = on(&s1, &["node", "ls", "--format", "{{.Status}}"]);
    (
        String::from_utf8_lossy(&id.stdout).trim().to_string(),
        String::from_utf8_lossy(&nodes.stdout)
            .lines()
            .filter(|l| *l == "Ready")
            .count(),
    )
}

/// Removes the test's containers from a slot's bt-h2 (whatever backtrack set aside too).
struct Containers<'a>(Vec<&'a TestHosts>, String);

impl Drop for Containers<'_> {
    fn drop(&mut self) {
        for h in &self.0 {
            for suffix in ["", "-backtrack-prev", "-backtrack-next"] {
                on(
                    &h.h2_dir.join("docker.sock"),
                    &["rm", "-f", &format!("{}{suffix}", self.1)],
                );
            }
        }
    }
}

#[test]
fn a_second_test_run_gets_remote_hosts_a_swarm_and_ports_of_its_own() {
    crate::harness::require_services();
    let ours = hosts();
    let slot = OtherSlot::take();
    let theirs = slot.up();
    assert_eq!(slot.namespaces().len(), 5, "{:?}", slot.namespaces());
    for (a, b) in [
        (ours.h2_ssh_port, theirs.h2_ssh_port),
        (ours.h3_ssh_port, theirs.h3_ssh_port),
        (ours.h3_tls_port, theirs.h3_tls_port),
    ] {
        assert_ne!(a, b, "a port on this machine is shared");
    }
    assert_ne!(ours.h2_dir, theirs.h2_dir);
    assert_ne!(ours.swarm_manager, theirs.swarm_manager);
    // Two swarms, not one: each has its own two nodes.
    let (our_swarm, their_swarm) = (swarm_cluster(ours), swarm_cluster(&theirs));
    assert_eq!(our_swarm.1, 2, "{our_swarm:?}");
    assert_eq!(their_swarm.1, 2, "{their_swarm:?}");
    assert_ne!(our_swarm.0, their_swarm.0, "the slots' nodes joined one swarm");

    // The same container name, published on the same port of each host's loopback, and the same
    // operation on both at once: each run sees only its own host and journal.
    let repo = Repo::new("isolation");
    for v in ["v1.0.0", "v1.1.0"] {
        repo.push(&AppImage::new(v));
    }
    let name = unique("bt-iso");
    let port = free_port();
    let _ours_left = Containers(vec![ours], name.clone());
    let theirs_left = Containers(vec![&theirs], name.clone());
    for h in [ours, &theirs] {
        let run = on(
            &h.h2_dir.join("docker.sock"),
            &[
                "run",
                "-d",
                "--name",
                &name,
                "-p",
                &format!("127.0.0.1:{port}:8080"),
                &format!("{}:v1.0.0", repo.image()),
            ],
        );
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while serves(ours, &name) != "1.0.0" || serves(&theirs, &name) != "1.0.0" {
        assert!(Instant::now() < deadline, "{name} does not serve 1.0.0 on both hosts");
        std::thread::sleep(Duration::from_millis(100));
    }
    let test = |h: &TestHosts| {
        Test::new()
            .repo(
                &repo,
                &format!(
                    "[target]\nkind = \"container\"\nname = \"{name}\"\nhost = \"{}\"\n[health]\nhttp = \"http://127.0.0.1:{port}/health\"\ntimeout = \"20s\"\n",
                    h.h2
                ),
            )
            .env("BACKTRACK_SSH_CONFIG", h.h2_dir.join("client/ssh_config").to_str().unwrap())
    };
    let (t_ours, t_theirs) = (test(ours), test(&theirs));
    let runs: Vec<_> = [&t_ours, &t_theirs]
        .iter()
        .map(|t| {
            t.command()
                .args(["deploy", "v1.1.0", "--yes"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for run in runs {
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for (h, t) in [(ours, &t_ours), (&theirs, &t_theirs)] {
        assert_eq!(serves(h, &name), "1.1.0", "{}", h.h2);
        let history = t.exec(["history", "--output", "json"]).success().json();
        assert_eq!(
            history["operations"].as_array().unwrap().len(),
            1,
            "{}: {history}",
            h.h2
        );
        let journal = h.h2_dir.join(format!(
            "home-bt-remote/.local/state/backtrack/targets/local_container_{name}/history.jsonl"
        ));
        assert!(
            journal.exists(),
            "the journal is in the slot's own home: {}",
            journal.display()
        );
    }

    // Taking the second slot down leaves this run's hosts and swarm as they were.
    drop(theirs_left);
    slot.down();
    assert_eq!(slot.namespaces(), Vec::<String>::new());
    assert_eq!(swarm_cluster(ours), our_swarm);
    assert_eq!(serves(ours, &name), "1.1.0");
    t_ours.exec(["status"]).success();
}
