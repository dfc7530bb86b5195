//! Many hosts, one rollback: a fleet of the two remote hosts `scripts/test-env` starts (bt-h2 on
//! 127.0.0.1:2222 and bt-h3 on 127.0.0.1:2223, each a Docker Engine and an sshd in a network
//! namespace of its own, reached only over ssh) and, for three hosts, this machine's engine over
//! its unix socket. Each host's journal and lock are on that host.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{AppImage, Repo, Test, docker, free_port, hosts, unique};

const LOCAL: &str = "unix:///var/run/docker.sock";

/// bt-h2's `ssh://` address (this run's slot).
fn h2() -> &'static str {
    &hosts().h2
}

/// bt-h3's `ssh://` address.
fn h3() -> &'static str {
    &hosts().h3
}

fn h2_dir() -> PathBuf {
    hosts().h2_dir.clone()
}

fn h3_dir() -> PathBuf {
    hosts().h3_dir.clone()
}

/// `docker` against one host's engine (the test's own view; backtrack goes through ssh).
fn on(host: &str, args: &[&str]) -> Output {
    let socket = if host == h2() {
        format!("unix://{}", h2_dir().join("docker.sock").display())
    } else if host == h3() {
        format!("unix://{}", h3_dir().join("docker.sock").display())
    } else {
        LOCAL.to_string()
    };
    docker(&[&["-H", socket.as_str()], args].concat())
}

/// The target's state folder on a host (the journal and lock backtrack keeps there).
fn state_dir(host: &str, name: &str, t: &Test) -> PathBuf {
    let rel = format!("backtrack/targets/local_container_{name}");
    if host == h2() {
        h2_dir().join("home-bt-remote/.local/state").join(rel)
    } else if host == h3() {
        h3_dir().join("state").join(rel)
    } else {
        t.state_dir()
            .join("targets")
            .join(format!("unix____var_run_docker.sock_container_{name}"))
    }
}

/// What the app answers at /health inside `name` on `host`.
fn serves(host: &str, name: &str) -> String {
    let out = on(host, &["exec", name, "wget", "-qO-", "http://127.0.0.1:8080/health"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn require_fleet() {
    crate::harness::require_services();
    for (port, dir) in [(hosts().h2_ssh_port, h2_dir()), (hosts().h3_ssh_port, h3_dir())] {
        let ok = std::process::Command::new("ssh")
            .args(["-F", h2_dir().join("client/ssh_config").to_str().unwrap()])
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-p", &port.to_string()])
            .args(["bt-remote@127.0.0.1", "docker info --format '{{.Name}}'"])
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok && dir.join("docker.sock").exists(),
            "the remote host on 127.0.0.1:{port} does not answer: run `scripts/test-env` (as root) first"
        );
    }
}

/// The same container on each host, publishing `port` on that host's loopback (or `published`
/// for a host listed there, to make its probe fail); removed from every host at the end.
struct FleetApp {
    name: String,
    port: u16,
    hosts: Vec<&'static str>,
}

impl FleetApp {
    fn run(image: &str, hosts: &[&'static str], broken: &[&'static str]) -> Self {
        let name = unique("bt-fleet-app");
        let port = free_port();
        for h in hosts {
            let published = if broken.contains(h) { free_port() } else { port };
            let publish = format!("127.0.0.1:{published}:8080");
            let out = on(h, &["run", "-d", "--name", &name, "-p", &publish, image]);
            assert!(out.status.success(), "{h}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let app = Self {
            name,
            port,
            hosts: hosts.to_vec(),
        };
        for h in hosts {
            app.wait_serving(h);
        }
        app
    }

    fn wait_serving(&self, host: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while serves(host, &self.name).is_empty() {
            assert!(Instant::now() < deadline, "{} did not serve on {host}", self.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn test(&self, repo: &Repo, hosts: &[&str], health_path: &str, timeout: &str) -> Test {
        self.test_with(repo, hosts, health_path, timeout, "")
    }

    /// The same config with `more` TOML after it (hooks, notify).
    fn test_with(&self, repo: &Repo, hosts: &[&str], health_path: &str, timeout: &str, more: &str) -> Test {
        let list = hosts.iter().map(|h| format!("\"{h}\"")).collect::<Vec<_>>().join(", ");
        Test::new()
            .repo(
                repo,
                &format!(
                    "[target]\nkind = \"container\"\nname = \"{}\"\nhosts = [{list}]\n[health]\nhttp = \"http://127.0.0.1:{}{health_path}\"\ntimeout = \"{timeout}\"\n{more}",
                    self.name, self.port
                ),
            )
            .env(
                "BACKTRACK_SSH_CONFIG",
                h2_dir().join("client/ssh_config").to_str().unwrap(),
            )
    }

    fn journal(&self, host: &str, t: &Test) -> String {
        std::fs::read_to_string(state_dir(host, &self.name, t).join("history.jsonl")).unwrap_or_default()
    }
}

impl Drop for FleetApp {
    fn drop(&mut self) {
        for h in &self.hosts {
            for suffix in ["", "-backtrack-prev", "-backtrack-next", "-backtrack-pre-emergency"] {
                on(h, &["rm", "-f", &format!("{}{suffix}", self.name)]);
            }
            if *h != LOCAL {
                let _ = std::fs::remove_dir_all(state_dir(h, &self.name, &Test::new()));
            }
        }
    }
}

fn pushed(test: &str) -> Repo {
    require_fleet();
    let repo = Repo::new(test);
    for v in ["v1.0.0", "v1.1.0"] {
        repo.push(&AppImage::new(v));
    }
    repo
}

#[test]
fn the_first_fleet_rollback_after_adopting_goes_back_to_what_ran_before() {
    require_fleet();
    let repo = Repo::new("fleetadopt");
    for v in ["v1.0.0", "v1.1.0", "v1.2.0"] {
        repo.push(&AppImage::new(v));
    }
    let hosts = [h2(), h3()];
    let app = FleetApp::run(&format!("{}:v1.0.0", repo.image()), &hosts, &[]);
    let t = app.test(&repo, &hosts, "/health", "20s");
    t.exec(["deploy", "v1.2.0", "--yes"]).success();
    // `previous` comes from the first host's journal, whose deploy recorded what it replaced.
    let plan = t.exec(["rollback", "--dry-run", "--output", "json"]).success().json();
    assert_eq!(plan["to"]["version"], "1.0.0", "{plan}");
    t.exec(["rollback", "--yes"]).success();
    for h in hosts {
        assert_eq!(serves(h, &app.name), "1.0.0", "{h}");
    }
}

#[test]
fn fleet_parallel_rollback_over_ssh_on_three_hosts() {
    let repo = pushed("fleetpar");
    let hosts = [h2(), h3(), LOCAL];
    let app = FleetApp::run(&format!("{}:v1.0.0", repo.image()), &hosts, &[]);
    let t = app.test(&repo, &hosts, "/health", "20s");

    t.exec(["deploy", "v1.1.0", "--yes"]).success();
    for h in hosts {
        assert_eq!(serves(h, &app.name), "1.1.0", "{h}");
    }
    let run = t.exec(["rollback", "--yes", "--output", "json"]).success().json();
    assert_eq!(run["strategy"], "parallel", "{run}");
    assert_eq!(run["hosts"].as_array().unwrap().len(), 3, "{run}");
    for h in hosts {
        assert_eq!(serves(h, &app.name), "1.0.0", "{h}");
    }
    // One fleet operation: every host's journal (on that host) has it under one id.
    let id = |j: &str| {
        j.lines()
            .filter(|l| l.contains("\"rollback\""))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|r| r["id"].as_str().unwrap_or_default().to_string())
            .next()
            .unwrap_or_default()
    };
    let ids: Vec<String> = hosts.iter().map(|h| id(&app.journal(h, &t))).collect();
    assert!(ids[0].starts_with("fleet-"), "{ids:?}");
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let status = t.exec(["status"]).success();
    assert!(
        status.stdout.contains("every host runs the same digest"),
        "{}",
        status.stdout
    );
}

#[test]
fn fleet_rolling_deploy_where_the_second_host_fails_reverts_the_first_too() {
    let repo = pushed("fleetfail");
    let hosts = [h2(), h3()];
    // On bt-h3 the app is published on another port: its probe never answers there.
    let app = FleetApp::run(&format!("{}:v1.0.0", repo.image()), &hosts, &[h3()]);
    let t = app.test(&repo, &hosts, "/health", "5s");

    let run = t.exec(["deploy", "v1.1.0", "--yes"]).code(6);
    assert!(run.stderr.contains(h3()), "the failed host is named: {}", run.stderr);
    assert!(run.stdout.contains("reverted"), "{}", run.stdout);
    for h in hosts {
        assert_eq!(serves(h, &app.name), "1.0.0", "{h} must run its previous version");
        let leftovers = on(h, &["inspect", &format!("{}-backtrack-prev", app.name)]);
        assert!(!leftovers.status.success(), "{h} kept a set-aside container");
    }
    assert!(app.journal(h2(), &t).contains("put back"), "{}", app.journal(h2(), &t));
    // Status names the drift when hosts differ: not here, both are back on 1.0.0.
    let status = t.exec(["status"]).success();
    assert!(!status.stdout.contains("fleet drift"), "{}", status.stdout);
}

#[test]
fn fleet_host_unreachable_at_the_start_is_refused_by_name_unless_skipped() {
    let repo = pushed("fleetdown");
    let app = FleetApp::run(&format!("{}:v1.0.0", repo.image()), &[h2()], &[]);
    let gone = format!("ssh://bt-remote@127.0.0.1:{}", free_port());
    let t = app.test(&repo, &[h2(), &gone], "/health", "20s");

    let run = t.exec(["deploy", "v1.1.0", "--yes"]).code(10);
    assert!(
        run.stderr.contains(&gone),
        "the unreachable host is named: {}",
        run.stderr
    );
    assert_eq!(
        serves(h2(), &app.name),
        "1.0.0",
        "nothing changed on the reachable host"
    );

    let run = t.exec(["deploy", "v1.1.0", "--yes", "--skip-unreachable"]).success();
    assert!(
        run.stdout.contains(&gone) && run.stdout.contains("skipped"),
        "{}",
        run.stdout
    );
    assert_eq!(serves(h2(), &app.name), "1.1.0");
    assert!(
        app.journal(h2(), &t)
            .contains(&format!("without unreachable host(s): {gone}")),
        "{}",
        app.journal(h2(), &t)
    );
}

#[test]
fn two_fleet_runs_contending_for_locks_do_not_deadlock() {
    let repo = pushed("fleetlock");
    let hosts = [h2(), h3()];
    let app = FleetApp::run(&format!("{}:v1.0.0", repo.image()), &hosts, &[]);
    // A holds every lock while its deploy waits for a path that never answers; B lists the hosts
    // the other way round. B is refused at once (never waits), A ends reverted, then B may act.
    let a = app.test(&repo, &hosts, "/missing", "6s");
    let b = app.test(&repo, &[h3(), h2()], "/health", "20s");
    let mut a_run = a
        .command()
        .args(["deploy", "v1.1.0", "--yes", "--strategy", "parallel"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let holder = state_dir(h3(), &app.name, &a).join("holder.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::metadata(&holder).is_ok_and(|m| m.len() > 0) {
        assert!(Instant::now() < deadline, "A never took the lock on bt-h3");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let run = b.exec(["rollback", "v1.0.0", "--yes"]).code(5);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "B waited: {:?}",
        started.elapsed()
    );
    assert!(run.stderr.contains("(fleet)"), "the holder is named: {}", run.stderr);
    assert_eq!(a_run.wait().unwrap().code(), Some(6));
    b.exec(["deploy", "v1.1.0", "--yes"]).success();
    for h in hosts {
        assert_eq!(serves(h, &app.name), "1.1.0", "{h}");
    }
}

/// Another run's hold on a host's lock of a target: flock(1) holds the lock file (as the state
/// shell does) and names its holder beside it, until `release`.
struct HeldLock(std::process::Child);

impl HeldLock {
    fn take(lock: &std::path::Path, command: &str) -> Self {
        let held = lock.with_extension("held-by-test");
        let _ = std::fs::remove_file(&held);
        // `-o`: the lock is flock's own, not its shell's; the shell waits for its input to end.
        let child = std::process::Command::new("flock")
            .arg("-o")
            .arg(lock)
            .args(["-c", &format!("touch '{}'; read -r _ || true", held.display())])
            .stdin(Stdio::piped())
            .spawn()
            .expect("flock(1) runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !held.exists() {
            assert!(Instant::now() < deadline, "flock never took {}", lock.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        // Written in place: the file stays the remote user's, as the state shell writes it.
        let holder = format!(
            r#"{{"pid":1,"user":"someone","host":"elsewhere","command":"{command}","since":"2026-01-01T00:00:00Z"}}"#
        );
        std::fs::write(lock.with_file_name("holder.json"), holder + "\n").unwrap();
        Self(child)
    }

    fn release(mut self) {
        drop(self.0.stdin.take());
        assert!(self.0.wait().unwrap().success(), "flock(1) failed");
    }
}

#[test]
fn a_fleet_run_holding_the_first_host_asks_again_for_a_lock_another_run_is_giving_back() {
    use std::io::BufRead as _;
    let repo = pushed("fleetrace");
    let hosts = [h2(), h3()];
    let app = FleetApp::run(&format!("{}:v1.0.0", repo.image()), &hosts, &[]);
    let t = app.test(&repo, &hosts, "/health", "20s");
    t.exec(["deploy", "v1.1.0", "--yes"]).success();
    // Every host's lock is asked for at once; the first in lock order (by address) decides.
    let (first, other) = if h2() < h3() { (h2(), h3()) } else { (h3(), h2()) };
    let lock = state_dir(other, &app.name, &t).join("lock");

    // Another run holds the other host, as a run that lost at the first host does until it
    // gives its locks back: this run, holding the first, asks again, and goes on once it is free.
    let holder = HeldLock::take(&lock, "backtrack rollback (fleet), losing");
    let mut run = t
        .command()
        .args(["-vv", "rollback", "v1.0.0", "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let asked_again = format!("{other}: the lock is held elsewhere; asking again");
    let mut seen = String::new();
    let mut lines = std::io::BufReader::new(run.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(&asked_again) {
            break;
        }
    }
    assert!(seen.contains(&asked_again), "{seen}");
    holder.release();
    for line in lines {
        seen.push_str(&line.unwrap());
        seen.push('\n');
    }
    assert!(run.wait().unwrap().success(), "{seen}");
    for h in hosts {
        assert_eq!(serves(h, &app.name), "1.0.0", "{h}");
    }

    // Held for longer than a losing run takes to give back: refused, naming the host and its
    // holder, with nothing changed anywhere and the first host's lock given back.
    let holder = HeldLock::take(&lock, "backtrack deploy (fleet), slow");
    let run = t.exec(["deploy", "v1.1.0", "--yes"]).code(5);
    assert!(
        run.stderr.contains(&format!("lock the target on {other}"))
            && run.stderr.contains("backtrack deploy (fleet), slow"),
        "{}",
        run.stderr
    );
    for h in hosts {
        assert_eq!(serves(h, &app.name), "1.0.0", "{h}");
    }
    let first_lock = state_dir(first, &app.name, &t).join("lock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::process::Command::new("flock")
        .arg("-n")
        .arg(&first_lock)
        .arg("true")
        .status()
        .unwrap()
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "the first host's lock was kept after the refusal"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    holder.release();
}

/// When `-vv` last says `host` sent (`->`) or heard the answer to (`<-`) `what`: milliseconds
/// since that host's connection started (each host's clock starts within moments of the others').
fn logged_at(stderr: &str, host: &str, arrow: &str, what: &str) -> u64 {
    stderr
        .lines()
        .rev()
        .find_map(|l| {
            let rest = l.split_once(&format!("{host} +"))?.1;
            let (ms, said) = rest.split_once(" ms: ")?;
            said.starts_with(&format!("{arrow} {what}")).then(|| ms.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no '{arrow} {what}' from {host} in:\n{stderr}"))
}

/// A fleet's hosts commit at once across a network: every host's journal append is on its way
/// before any is answered, so the commit costs the fleet one round trip, not one per host (each
/// append blocks for its round trip, and the hosts' commits share one task).
#[test]
fn a_fleets_hosts_commit_at_once_across_a_network() {
    let repo = pushed("fleetcommit");
    let app = FleetApp::run(&format!("{}:v1.0.0", repo.image()), &[h2(), h3()], &[]);
    let rtt = Duration::from_millis(100);
    let far2 = crate::harness::Latency::in_front_of(hosts().h2_ssh_port, rtt);
    let far3 = crate::harness::Latency::in_front_of(hosts().h3_ssh_port, rtt);
    let far = [
        format!("ssh://bt-remote@127.0.0.1:{}", far2.port),
        format!("ssh://bt-remote@127.0.0.1:{}", far3.port),
    ];
    let t = app.test(&repo, &[&far[0], &far[1]], "/health", "20s");
    let run = t
        .exec(["-vv", "deploy", "v1.1.0", "--yes", "--strategy", "parallel"])
        .success();
    let append = "append to the journal";
    let sent_last = far.iter().map(|h| logged_at(&run.stderr, h, "->", append)).max();
    let answered_first = far.iter().map(|h| logged_at(&run.stderr, h, "<-", append)).min();
    // Sent together, both are answered a round trip later; one after the other, the second is
    // sent as the first is answered.
    let half = u64::try_from(rtt.as_millis() / 2).unwrap();
    assert!(
        sent_last.unwrap() + half <= answered_first.unwrap(),
        "one host's append waited for the other's answer:\n{}",
        run.stderr
    );
    for h in [h2(), h3()] {
        assert_eq!(serves(h, &app.name), "1.1.0", "{h}");
    }
}

/// The marks `versions --output json` gives a tag.
fn marks(versions: &serde_json::Value, tag: &str) -> Vec<String> {
    versions["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tag"] == tag)
        .map(|r| {
            r["marks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn fleet_versions_and_the_picker_count_hosts_and_history_shows_one_operation_per_fleet_run() {
    let repo = pushed("fleetviews");
    let hosts = [h2(), h3()];
    let app = FleetApp::run(&format!("{}:v1.0.0", repo.image()), &hosts, &[]);
    let t = app.test(&repo, &hosts, "/health", "20s");

    t.exec(["deploy", "v1.1.0", "--yes"]).success();
    t.exec(["rollback", "v1.0.0", "--yes", "--hosts", h2()]).success();
    assert_eq!(serves(h2(), &app.name), "1.0.0");
    assert_eq!(serves(h3(), &app.name), "1.1.0");

    let versions = t.exec(["versions", "--output", "json"]).success().json();
    assert_eq!(marks(&versions, "v1.1.0"), ["deployed 1/2 hosts"], "{versions}");
    assert_eq!(marks(&versions, "v1.0.0"), ["deployed 1/2 hosts"], "{versions}");
    // A host that does not answer is said, and counted as not running anything.
    let gone = format!("ssh://bt-remote@127.0.0.1:{}", free_port());
    let partial = app.test(&repo, &[h2(), h3(), &gone], "/health", "20s");
    let run = partial.exec(["versions", "--output", "json"]).success();
    assert!(run.stderr.contains(&gone), "the silent host is named: {}", run.stderr);
    let versions = run.json();
    assert_eq!(versions["unreachable"][0], gone.as_str(), "{versions}");
    assert_eq!(marks(&versions, "v1.1.0"), ["deployed 1/3 hosts"], "{versions}");

    // History: the deploy is one operation with a result on each host; the rollback on one.
    let history = t.exec(["history", "--output", "json"]).success().json();
    let ops = history["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 2, "{history}");
    assert_eq!(ops[0]["op"], "deploy", "{history}");
    let per_host: Vec<(&str, &str)> = ops[0]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["address"].as_str().unwrap(), h["result"].as_str().unwrap()))
        .collect();
    assert_eq!(per_host, [(h2(), "ok"), (h3(), "ok")], "{history}");
    assert!(ops[0]["id"].as_str().unwrap().starts_with("fleet-"), "{history}");
    assert_eq!(ops[1]["hosts"].as_array().unwrap().len(), 1, "{history}");
    let table = t.exec(["history"]).success();
    assert!(table.stdout.contains("ok on 2/2 hosts"), "{}", table.stdout);
    assert!(table.stdout.contains("ok on 1/2 hosts"), "{}", table.stdout);
    let one = t.exec(["history", "show", "1"]).success();
    assert!(one.stdout.contains(h2()) && one.stdout.contains(h3()), "{}", one.stdout);

    // mark-good with no selector needs one digest on every host: it names where they differ.
    let run = t.exec(["mark-good"]).code(1);
    assert!(
        run.stderr.contains("different images") && run.stderr.contains(h3()),
        "{}",
        run.stderr
    );
    assert_eq!(repo.tag_digest("last_known_good"), None, "the pointer did not move");

    // The rollback picker on a terminal counts hosts too, and asks before the fleet moves.
    let (screen, code, _) = t.on_terminal("rollback", &[("[previous", "1\n"), ("[y/n]", "y\n")]);
    assert_eq!(code, 0, "{screen}");
    assert!(
        screen
            .lines()
            .any(|l| l.contains("v1.1.0") && l.contains("deployed 1/2 hosts")),
        "{screen}"
    );
    assert!(screen.contains("on 2 host(s) to 1.1.0? [y/n]"), "{screen}");
    for h in hosts {
        assert_eq!(serves(h, &app.name), "1.1.0", "{h}");
    }
}

#[test]
fn fleet_validate_names_the_failing_host_and_mark_good_moves_the_pointer_once() {
    let repo = pushed("fleetgood");
    let hosts = [h2(), h3()];
    // On bt-h3 the app is published on another port: its probe fails there.
    let app = FleetApp::run(&format!("{}:v1.0.0", repo.image()), &hosts, &[h3()]);
    let t = app.test(&repo, &hosts, "/health", "5s");

    let run = t.exec(["validate"]).code(1);
    assert!(run.stderr.contains(h3()), "the failing host is named: {}", run.stderr);
    assert!(!run.stderr.contains(h2()), "the healthy host is not: {}", run.stderr);
    assert!(run.stdout.contains("UNHEALTHY on"), "{}", run.stdout);

    // Both hosts run v1.0.0: mark-good with no selector points last_known_good at it, once.
    t.exec(["mark-good", "--reason", "fleet soak"]).success();
    assert_eq!(repo.tag_digest("last_known_good"), repo.tag_digest("v1.0.0"));
    let id = |j: &str| {
        j.lines()
            .filter(|l| l.contains("\"mark-good\""))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|r| r["id"].as_str().unwrap_or_default().to_string())
            .next()
            .unwrap_or_default()
    };
    let ids: Vec<String> = hosts.iter().map(|h| id(&app.journal(h, &t))).collect();
    assert!(ids[0].starts_with("fleet-") && ids[0] == ids[1], "{ids:?}");
    let kept = format!("backtrack/{}:lkg", repo.name);
    for h in hosts {
        let image = on(h, &["image", "inspect", &kept]);
        assert!(image.status.success(), "{h} keeps {kept} for emergency");
        on(h, &["rmi", &kept]);
    }
}

#[test]
fn fleet_emergency_is_all_or_nothing_across_hosts() {
    require_fleet();
    let repo = Repo::new("fleetemerg");
    repo.push(&AppImage::new("v1.0.0"));
    // Only v1.1.0 knows the user the app runs as on bt-h3: the emergency copy cannot start there.
    repo.push(&AppImage::new("v1.1.0").user("appuser"));
    let image = format!("{}:v1.1.0", repo.image());
    let mut app = FleetApp::run(&image, &[h2()], &[]);
    app.hosts.push(h3());
    let publish = format!("127.0.0.1:{}:8080", app.port);
    let run_on_h3 = |extra: &[&str]| {
        on(h3(), &["rm", "-f", &app.name]);
        let out = on(
            h3(),
            &[
                &["run", "-d", "--name", &app.name, "-p", &publish][..],
                extra,
                &[&image],
            ]
            .concat(),
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        app.wait_serving(h3());
    };
    run_on_h3(&["--user", "appuser"]);
    let t = app.test(&repo, &[h2(), h3()], "/health", "20s");
    t.exec(["mark-good", "v1.0.0"]).success();

    let plan = t.exec(["emergency", "--dry-run"]).success();
    assert!(
        plan.stdout.contains(h2()) && plan.stdout.contains(h3()) && plan.stdout.contains("docker run"),
        "a plan per host: {}",
        plan.stdout
    );
    assert!(plan.stdout.contains("dry run: nothing was changed"), "{}", plan.stdout);

    let run = t.exec(["emergency", "--yes"]).code(6);
    assert!(run.stderr.contains(h3()), "the failing host is named: {}", run.stderr);
    for h in [h2(), h3()] {
        assert_eq!(serves(h, &app.name), "1.1.0", "{h} runs its original again");
        let aside = on(h, &["inspect", &format!("{}-backtrack-pre-emergency", app.name)]);
        assert!(!aside.status.success(), "{h} kept a set-aside container");
    }
    assert!(app.journal(h2(), &t).contains("put back"), "{}", app.journal(h2(), &t));

    // Without the user, every host takes the emergency, under one fleet id.
    run_on_h3(&[]);
    let run = t.exec(["emergency", "--yes", "--output", "json"]).success().json();
    assert_eq!(run["hosts"].as_array().unwrap().len(), 2, "{run}");
    for h in [h2(), h3()] {
        assert_eq!(serves(h, &app.name), "1.0.0", "{h} runs last known good");
    }
    let history = t.exec(["history", "--output", "json"]).success().json();
    let last = history["operations"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["op"], "emergency", "{history}");
    assert_eq!(last["hosts"].as_array().unwrap().len(), 2, "{history}");
    assert!(last["id"].as_str().unwrap().starts_with("fleet-"), "{history}");
    for h in [h2(), h3()] {
        on(h, &["rmi", &format!("backtrack/{}:lkg", repo.name)]);
    }
}

#[test]
fn fleet_canary_that_fails_its_soak_is_reverted_and_the_others_never_start() {
    let repo = pushed("fleetcanary");
    let hosts = [h2(), h3()];
    let app = FleetApp::run(&format!("{}:v1.0.0", repo.image()), &hosts, &[]);
    let list = hosts.iter().map(|h| format!("\"{h}\"")).collect::<Vec<_>>().join(", ");
    let t = Test::new()
        .repo(
            &repo,
            &format!(
                "[target]\nkind = \"container\"\nname = \"{}\"\nhosts = [{list}]\nstrategy = \"canary\"\ncanary_soak = \"30s\"\n[health]\nhttp = \"http://127.0.0.1:{}/health\"\ntimeout = \"20s\"\n",
                app.name, app.port
            ),
        )
        .env("BACKTRACK_SSH_CONFIG", h2_dir().join("client/ssh_config").to_str().unwrap());
    let id_of = |h: &str| {
        String::from_utf8_lossy(&on(h, &["inspect", "--format", "{{.Id}}", &app.name]).stdout)
            .trim()
            .to_string()
    };
    let other_before = id_of(h3());
    let child = t
        .command()
        .args(["deploy", "v1.1.0", "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The canary (the first host) validates on 1.1.0, then dies during its soak.
    let deadline = Instant::now() + Duration::from_secs(40);
    while serves(h2(), &app.name) != "1.1.0" {
        assert!(Instant::now() < deadline, "the canary never ran 1.1.0");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(on(h2(), &["kill", &app.name]).status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("canary"), "{stderr}");
    // The canary is back on its previous version; the other host was never touched.
    app.wait_serving(h2());
    assert_eq!(serves(h2(), &app.name), "1.0.0");
    assert_eq!(id_of(h3()), other_before);
    assert_eq!(serves(h3(), &app.name), "1.0.0");
}

#[test]
fn fleet_hooks_run_once_for_the_whole_fleet_and_a_failing_post_puts_every_host_back() {
    let repo = pushed("fleethooks");
    let hosts = [h2(), h3()];
    let app = FleetApp::run(&format!("{}:v1.0.0", repo.image()), &hosts, &[]);
    let (hook_port, got) = crate::hooks::receiver();
    let more = format!(
        "[hooks]\npre = [\"/bin/sh\", \"-c\", \"test -f fail-pre && exit 3; echo \\\"pre $BACKTRACK_OP $BACKTRACK_TO_VERSION $BACKTRACK_HOSTS\\\" >> hooks.log\"]\n\
         post = [\"/bin/sh\", \"-c\", \"test -f fail-post && exit 4; echo post >> hooks.log\"]\n\
         on_revert = [\"/bin/sh\", \"-c\", \"echo \\\"on_revert $BACKTRACK_RESULT\\\" >> hooks.log\"]\n\
         [notify]\nwebhook = \"http://127.0.0.1:{hook_port}/fleet\"\n"
    );
    let t = app.test_with(&repo, &hosts, "/health", "20s", &more);
    let log = || std::fs::read_to_string(t.dir.path().join("hooks.log")).unwrap_or_default();

    t.exec(["deploy", "v1.1.0", "--yes"]).success();
    assert_eq!(
        log(),
        format!("pre deploy 1.1.0 {},{}\npost\n", h2(), h3()),
        "once for the fleet"
    );
    for h in hosts {
        assert_eq!(serves(h, &app.name), "1.1.0", "{h}");
    }

    // The post hook fails once every host validated: every host goes back, on_revert is told.
    std::fs::write(t.dir.path().join("fail-post"), "").unwrap();
    let run = t.exec(["rollback", "v1.0.0", "--yes"]).code(6);
    assert!(run.stderr.contains("post hook"), "{}", run.stderr);
    for h in hosts {
        assert_eq!(serves(h, &app.name), "1.1.0", "{h} is back on its previous version");
    }
    assert!(log().ends_with("on_revert reverted\n"), "{}", log());

    // One notification per fleet operation, naming the hosts.
    let bodies = got.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    let first: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(first["result"], "ok", "{first}");
    assert_eq!(first["hosts"], serde_json::json!([h2(), h3()]), "{first}");
    let second: serde_json::Value = serde_json::from_str(&bodies[1]).unwrap();
    assert_eq!(second["result"], "reverted", "{second}");
    assert!(second["why"].as_str().unwrap().contains("post hook"), "{second}");
    // The pre hook failing stops the fleet before any host changes, recorded on every host.
    std::fs::remove_file(t.dir.path().join("fail-post")).unwrap();
    std::fs::write(t.dir.path().join("fail-pre"), "").unwrap();
    let run = t.exec(["rollback", "v1.0.0", "--yes"]).code(1);
    assert!(run.stderr.contains("nothing was changed on any host"), "{}", run.stderr);
    for h in hosts {
        assert_eq!(serves(h, &app.name), "1.1.0", "{h}");
        assert!(app.journal(h, &t).contains("pre hook"), "{h}: {}", app.journal(h, &t));
    }
}

#[test]
fn fleet_host_lost_mid_run_is_named_for_a_person_and_settled_by_its_next_run() {
    let repo = pushed("fleetlost");
    // On bt-h3 the probe never answers, so its swap is still validating when its link drops.
    let app = FleetApp::run(&format!("{}:v1.0.0", repo.image()), &[h2(), h3()], &[h3()]);
    let proxy = crate::remote::CuttableProxy::start(&format!("127.0.0.1:{}", hosts().h3_ssh_port));
    let h3_via_proxy = format!("ssh://bt-remote@127.0.0.1:{}", proxy.port);
    let t = app.test(&repo, &[h2(), &h3_via_proxy], "/health", "30s");
    let run = t
        .command()
        .args(["deploy", "v1.1.0", "--yes", "--strategy", "parallel"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let prev = format!("{}-backtrack-prev", app.name);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !on(h3(), &["inspect", &prev]).status.success() {
        assert!(Instant::now() < deadline, "the swap on bt-h3 never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    proxy.cut();
    let out = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains(&h3_via_proxy), "the lost host is named: {stderr}");
    // The host that validated is put back; the lost one is left for its next run.
    assert_eq!(serves(h2(), &app.name), "1.0.0");
    assert!(
        app.journal(h3(), &t).contains("\"started\""),
        "{}",
        app.journal(h3(), &t)
    );

    // The next run reaches bt-h3 again and settles it from its journal before anything else.
    let next = t.exec(["rollback", "v1.0.0", "--yes", "--strategy", "parallel"]);
    assert!(
        format!("{}{}", next.stdout, next.stderr).contains("putting the previous version back"),
        "{}{}",
        next.stdout,
        next.stderr
    );
    assert_eq!(next.code, 0, "{}{}", next.stdout, next.stderr);
    assert!(
        !on(h3(), &["inspect", &prev]).status.success(),
        "nothing set aside stays on bt-h3"
    );
    let image = on(h3(), &["inspect", "--format", "{{.Config.Image}}", &app.name]);
    assert!(
        !String::from_utf8_lossy(&image.stdout).contains(&repo.tag_digest("v1.1.0").unwrap()),
        "bt-h3 is back on its previous version"
    );
    assert!(
        app.journal(h3(), &t).contains("rolled-back-after-crash"),
        "{}",
        app.journal(h3(), &t)
    );
}

/// Regression: the migration guard was never checked on a fleet, so a rollback below a schema
/// migration went through on every host.
#[test]
fn fleet_rollback_below_the_migration_floor_is_refused_unless_forced_with_a_reason() {
    require_fleet();
    let repo = Repo::new("fleetguard");
    repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0").label("io.backtrack.min-rollback", "1.1.0"));
    let hosts = [h2(), h3()];
    let app = FleetApp::run(&format!("{}:v1.1.0", repo.image()), &hosts, &[]);
    let t = app.test(&repo, &hosts, "/health", "20s");

    let run = t.exec(["rollback", "v1.0.0", "--yes"]).code(2);
    assert!(
        run.stderr.contains("io.backtrack.min-rollback = \"1.1.0\"") && run.stderr.contains("--force --reason"),
        "{}",
        run.stderr
    );
    for h in hosts {
        assert_eq!(serves(h, &app.name), "1.1.0", "{h} must not move below the floor");
    }
    t.exec(["rollback", "v1.0.0", "--yes", "--force"]).code(2);
    let run = t
        .exec(["rollback", "v1.0.0", "--yes", "--force", "--reason", "schema verified"])
        .success();
    assert!(run.stderr.contains("going below the migration floor"), "{}", run.stderr);
    for h in hosts {
        assert_eq!(serves(h, &app.name), "1.0.0", "{h}");
        assert!(
            app.journal(h, &t).contains("schema verified"),
            "{h}: {}",
            app.journal(h, &t)
        );
    }
}

/// `--mark-good --soak`, `warm`, `drill` and `prune --local` act on every host of a fleet, as on
/// one host (they were ignored or refused as "not built yet").
#[test]
fn fleet_mark_good_warm_drill_and_prune_local_act_on_every_host() {
    require_fleet();
    let repo = Repo::new("fleetflags");
    // Images of their own (other tests' 1.0.0 is the same image): removing one from a host below
    // touches no other test's container.
    for v in ["v1.0.0", "v1.1.0"] {
        repo.push(&AppImage::new(v).label("io.backtrack.test", &repo.name));
    }
    let hosts = [h2(), h3()];
    let app = FleetApp::run(&format!("{}:v1.0.0", repo.image()), &hosts, &[]);
    let t = app.test(&repo, &hosts, "/health", "20s");

    let run = t
        .exec(["deploy", "v1.1.0", "--yes", "--mark-good", "--soak", "1s"])
        .success();
    assert!(run.stderr.contains("stayed healthy"), "{}", run.stderr);
    assert_eq!(
        repo.tag_digest("last_known_good"),
        repo.tag_digest("v1.1.0"),
        "the pointer moved"
    );
    let ids: Vec<String> = hosts
        .iter()
        .map(|h| {
            let journal = app.journal(h, &t);
            let line = journal
                .lines()
                .find(|l| l.contains("\"mark-good\""))
                .unwrap_or_default()
                .to_string();
            serde_json::from_str::<serde_json::Value>(&line)
                .map(|r| r["id"].to_string())
                .unwrap_or_default()
        })
        .collect();
    assert!(
        !ids[0].is_empty() && ids[0] == ids[1],
        "one mark-good in every host's journal: {ids:?}"
    );

    // warm: the previous version is gone from bt-h3; warm pulls it there, and finds it on bt-h2.
    let previous = format!("{}@{}", repo.image(), repo.tag_digest("v1.0.0").unwrap());
    let id = on(h3(), &["image", "inspect", "-f", "{{.Id}}", &previous]);
    let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
    assert!(
        on(h3(), &["rmi", "-f", &id]).status.success(),
        "remove {previous} from bt-h3"
    );
    let warm = t.exec(["warm", "--output", "json"]).success().json();
    let per_host = warm["hosts"].as_array().unwrap();
    assert_eq!(per_host.len(), 2, "{warm}");
    for h in per_host {
        let previous = h["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["label"] == "previous")
            .unwrap_or_else(|| panic!("no previous candidate: {warm}"));
        assert_eq!(previous["image"]["version"], "1.0.0", "{warm}");
        let pulled = !previous["pulled_ms"].is_null();
        assert_eq!(pulled, h["host"] == h3(), "pulled only where it was missing: {warm}");
    }
    assert!(
        on(h3(), &["image", "inspect", &previous]).status.success(),
        "bt-h3 has it again"
    );

    // drill: each host rehearses beside its own production container.
    let drill = t.exec(["drill", "previous", "--output", "json"]).success().json();
    let per_host = drill["hosts"].as_array().unwrap();
    assert_eq!(per_host.len(), 2, "{drill}");
    for h in per_host {
        assert_eq!(h["ready"], true, "{drill}");
        assert_eq!(h["running"], "1.1.0", "{drill}");
    }
    for h in hosts {
        assert_eq!(serves(h, &app.name), "1.1.0", "{h}: production untouched by the drill");
    }

    // prune --local: a plan per host, keeping what runs and the candidates.
    let plan = t
        .exec(["prune", "--local", "--dry-run", "--output", "json"])
        .success()
        .json();
    let per_host = plan["hosts"].as_array().unwrap();
    assert_eq!(per_host.len(), 2, "{plan}");
    for h in per_host {
        let kept: Vec<String> = h["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["keep"] == true)
            .flat_map(|d| {
                d["refs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
            })
            .collect();
        for v in ["v1.0.0", "v1.1.0"] {
            let digest = repo.tag_digest(v).unwrap();
            assert!(
                kept.iter().any(|r| r.ends_with(&digest)),
                "{v} kept on {}: {plan}",
                h["host"]
            );
        }
    }
}

/// `doctor` on a fleet runs every check on each host (it refused: "not built yet").
#[test]
fn fleet_doctor_checks_each_host_and_names_the_one_that_is_down() {
    let repo = pushed("fleetdoctor");
    let app = FleetApp::run(&format!("{}:v1.0.0", repo.image()), &[h2()], &[]);
    let gone = format!("ssh://bt-remote@127.0.0.1:{}", free_port());
    let t = app.test(&repo, &[h2(), &gone], "/health", "20s");
    let run = t.exec(["doctor", "--output", "json"]);
    assert_ne!(run.code, 0, "a host that is down fails the checks: {}", run.stderr);
    let report = run.json();
    let hosts = report["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2, "{report}");
    let check = |host: &serde_json::Value, name: &str| {
        host["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} check: {report}"))
    };
    let up = hosts.iter().find(|h| h["host"] == h2()).unwrap();
    let down = hosts.iter().find(|h| h["host"] == gone.as_str()).unwrap();
    for name in ["ssh", "engine", "target"] {
        assert_eq!(check(up, name)["mark"], "ok", "{name} on {}: {report}", h2());
    }
    assert_eq!(check(down, "ssh")["mark"], "fail", "{report}");
    assert_eq!(down["healthy"], false, "{report}");
}

/// `--rebuild` on a fleet: a version whose image is gone is built once from its Git tag (on the
/// first host), pushed, and every host is swapped onto it (the flag was accepted and ignored).
#[test]
fn fleet_rollback_to_a_gone_version_rebuilds_it_once_and_swaps_every_host() {
    require_fleet();
    let repo = Repo::new("fleetrebuild");
    repo.push(&AppImage::new("v1.1.0").label("io.backtrack.test", &repo.name));
    let git = crate::rebuild::app_repo();
    let hosts = [h2(), h3()];
    let app = FleetApp::run(&format!("{}:v1.1.0", repo.image()), &hosts, &[]);
    let more = format!("[rebuild]\nrepo = \"{}\"\n", git.path().display());
    let t = app.test_with(&repo, &hosts, "/health", "20s", &more);

    let refused = t.exec(["rollback", "v1.0.0", "--yes"]).code(4);
    assert!(refused.stderr.contains("--rebuild"), "{}", refused.stderr);
    let run = t
        .exec(["rollback", "v1.0.0", "--yes", "--rebuild", "--output", "json"])
        .success()
        .json();
    let results: Vec<&str> = run["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["step"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["committed", "committed"], "{run}");
    assert!(repo.tag_digest("v1.0.0").is_some(), "pushed to the registry");
    for h in hosts {
        assert_eq!(serves(h, &app.name), "1.0.0", "{h}");
        assert!(
            app.journal(h, &t).contains("rebuilt from Git tag v1.0.0"),
            "{h}: {}",
            app.journal(h, &t)
        );
    }
}

/// Ctrl-C in the middle of a fleet rollback: every host finishes its step and is put back, as one
/// host is (the fleet's copy of the swap never installed the handler).
#[test]
fn fleet_ctrl_c_mid_swap_puts_every_host_back() {
    use std::io::Read as _;
    use std::os::unix::process::CommandExt;
    let repo = pushed("fleetsigint");
    let hosts = [h2(), h3()];
    let app = FleetApp::run(&format!("{}:v1.0.0", repo.image()), &hosts, &[]);
    // A probe that never passes: the hosts sit in validation until the interrupt.
    let t = app.test(&repo, &hosts, "/missing", "60s");
    let mut run = t
        .command()
        .args(["deploy", "v1.1.0", "--yes", "--strategy", "parallel"])
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let aside = format!("{}-backtrack-prev", app.name);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !hosts.iter().all(|h| on(h, &["inspect", &aside]).status.success()) {
        assert!(Instant::now() < deadline, "the swap did not start on every host");
        std::thread::sleep(Duration::from_millis(100));
    }
    // As the terminal does: SIGINT to every process of the group.
    let group = format!("-{}", run.id());
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", "--", &group])
            .status()
            .unwrap()
            .success()
    );
    let status = run.wait().unwrap();
    let mut stderr = String::new();
    run.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    for h in hosts {
        assert_eq!(serves(h, &app.name), "1.0.0", "{h}: {stderr}");
        assert!(
            !on(h, &["inspect", &aside]).status.success(),
            "{h} kept a set-aside container"
        );
        assert!(
            app.journal(h, &t).contains("\"reverted\""),
            "{h}: {}",
            app.journal(h, &t)
        );
    }
}

/// A fleet's hosts are reached as a single host is (login from the start, engine socket and probe
/// forwarded at login, spare channels) and each host probes the way it can: bt-h2 with its own
/// curl through the state shell (one round trip), bt-h3, which has no curl (it says so once),
/// through a forwarded channel. Both say so in `-vv`'s timed requests, and `-v` prints each host's round trips.
#[test]
fn each_fleet_host_probes_from_itself_with_curl_or_through_a_forward_without_it() {
    let repo = pushed("fleetprobe");
    let on_hosts = [h2(), h3()];
    let app = FleetApp::run(&format!("{}:v1.0.0", repo.image()), &on_hosts, &[]);
    // Both across a network: backtrack starts programs on a host (the gate, curl) only where a
    // round trip costs more.
    let far: Vec<crate::harness::Latency> = [hosts().h2_ssh_port, hosts().h3_ssh_port]
        .into_iter()
        .map(|p| crate::harness::Latency::in_front_of(p, Duration::from_millis(10)))
        .collect();
    let addresses: Vec<String> = far
        .iter()
        .map(|l| format!("ssh://bt-remote@127.0.0.1:{}", l.port))
        .collect();
    let (far2, far3) = (addresses[0].as_str(), addresses[1].as_str());
    let t = app.test(&repo, &[far2, far3], "/health", "20s");
    t.exec(["deploy", "v1.1.0", "--yes"]).success();

    let run = t.exec(["-vv", "rollback", "--yes"]).success();
    let url = format!("http://127.0.0.1:{}/health", app.port);
    let said = |host: &str, what: &str| run.stderr.lines().any(|l| l.contains(host) && l.contains(what));
    let asked = |host: &str, what: &str| said(host, &format!("-> {what}"));
    // The first probe is the gate's, on the host, once the swap's calls are answered (#30): bt-h2
    // asked it with its curl; bt-h3 said it has none, and its probe went through a forward.
    let by_gate = format!("probe {url} from the host, after the calls: PROBE");
    assert!(said(far2, &format!("{by_gate} 0 200")), "{}", run.stderr);
    assert!(said(far3, &format!("{by_gate} none")), "{}", run.stderr);
    assert!(asked(far3, &format!("probe {url}")), "{}", run.stderr);
    // bt-h3's gate said it has no curl: its state shell is not asked to probe.
    assert!(!asked(far3, &format!("probe {url} from the host")), "{}", run.stderr);
    // The swap's calls (and the look at the new container) went behind the intent on both, in
    // one request.
    for (h, address) in on_hosts.iter().zip([far2, far3]) {
        assert!(
            asked(address, "8 calls, pipelined, behind the intent"),
            "{h}: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains(&format!("round trips to {address}, by phase:")),
            "{}",
            run.stderr
        );
        assert_eq!(serves(h, &app.name), "1.0.0", "{h}");
    }
}

/// A release of two services on a fleet: every service on every host moves to one version, a
/// worker that fails on one host puts every service back on every host, one entry per host.
#[test]
fn a_release_on_a_fleet_moves_every_service_on_every_host_or_none() {
    require_fleet();
    let (web, worker) = (Repo::new("fleetrel-web"), Repo::new("fleetrel-worker"));
    for v in ["v1.0.0", "v1.1.0", "v1.2.0"] {
        web.push(&AppImage::new(v));
    }
    for v in ["v1.0.0", "v1.1.0"] {
        worker.push(&AppImage::new(v).label("io.test.role", "worker"));
    }
    worker.push(&AppImage::new("v1.2.0").crash(3).label("io.test.role", "worker"));
    let hosts = [h2(), h3()];
    let app = FleetApp::run(&format!("{}:v1.0.0", web.image()), &hosts, &[]);
    let wapp = FleetApp::run(&format!("{}:v1.0.0", worker.image()), &hosts, &[]);
    let list = hosts.iter().map(|h| format!("\"{h}\"")).collect::<Vec<_>>().join(", ");
    let t = Test::new()
        .repo(
            &web,
            &format!(
                "[target]\nkind = \"container\"\nnames = [\"{}\", \"{}\"]\nhosts = [{list}]\n\
                 [target.repositories]\n\"{}\" = \"{}\"\n[health]\nhttp = \"http://127.0.0.1:{}/health\"\n\
                 timeout = \"20s\"\n",
                app.name, wapp.name, wapp.name, worker.name, app.port
            ),
        )
        .env(
            "BACKTRACK_SSH_CONFIG",
            h2_dir().join("client/ssh_config").to_str().unwrap(),
        );
    // The release's state folders on the hosts go with the test.
    struct Gone(Vec<PathBuf>);
    impl Drop for Gone {
        fn drop(&mut self) {
            for d in &self.0 {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    let release = format!("{}_{}", app.name, wapp.name);
    let _gone = Gone(hosts.iter().map(|h| state_dir(h, &release, &t)).collect());
    let image_of = |h: &str, name: &str| {
        let out = on(h, &["inspect", name, "--format", "{{.Config.Image}}"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    t.exec(["deploy", "v1.1.0", "--yes"]).success();
    for h in hosts {
        assert_eq!(serves(h, &app.name), "1.1.0", "{h}");
        assert_eq!(serves(h, &wapp.name), "1.1.0", "{h}");
        assert!(image_of(h, &wapp.name).starts_with(&worker.image()), "{h}");
    }
    // 1.2.0's worker crashes: the web app goes back too, on both hosts.
    t.exec(["deploy", "v1.2.0", "--yes"]).code(6);
    for h in hosts {
        assert_eq!(serves(h, &app.name), "1.1.0", "{h}");
        assert_eq!(serves(h, &wapp.name), "1.1.0", "{h}");
    }
    t.exec(["rollback", "--yes"]).success();
    for h in hosts {
        assert_eq!(serves(h, &app.name), "1.0.0", "{h}");
        assert_eq!(serves(h, &wapp.name), "1.0.0", "{h}");
        let journal = std::fs::read_to_string(state_dir(h, &release, &t).join("history.jsonl")).unwrap_or_default();
        let started: Vec<&str> = journal
            .lines()
            .filter(|l| l.contains("\"phase\":\"started\""))
            .collect();
        // A deploy rolls host by host: the failed one stopped at the first host.
        assert_eq!(started.len(), if h == h2() { 3 } else { 2 }, "on {h}:\n{journal}");
        assert!(
            started
                .iter()
                .all(|l| l.contains(&wapp.name) && l.contains("\"services\"")),
            "one intent naming both services per operation on {h}:\n{journal}"
        );
    }
}
