//! Config snapshots on the real engine: every operation records the config a container ran with
//! before and after it; `--restore-config` (or `[target] restore_config`) recreates the target
//! with the config the version last ran with, the plan lists what differs first, and a
//! secret-looking value never appears in any output, the journal's mode is its owner's only.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use crate::harness::{AppImage, ComposeProject, Containers, Repo, Run, Test, docker, docker_ok, free_port, wait_http};

const OLD_SECRET: &str = "hunter2-old-value";
const NEW_SECRET: &str = "hunter2-new-value";

/// A command like the image's own that also leaves a mark the test can read (`/www/cmd`).
fn command_b() -> Vec<&'static str> {
    vec![
        "/bin/sh",
        "-c",
        "echo cmd-b > /www/cmd; trap 'kill $pid; exit 0' TERM; httpd -f -p 8080 -h /www & pid=$!; wait $pid",
    ]
}

/// Starts `name` on `image` by hand, the way a release script (or a person) would.
fn run_by_hand(name: &str, port: u16, containers: &Containers, image: &str, env: &[&str], cmd: &[&str]) {
    let publish = format!("127.0.0.1:{port}:8080");
    let label = containers.label();
    let mut args = vec!["run", "-d", "--name", name, "--label", &label, "-p", &publish];
    for e in env {
        args.extend(["-e", e]);
    }
    args.push(image);
    args.extend(cmd);
    docker_ok(&args);
    wait_http(&format!("http://127.0.0.1:{port}/health"), Duration::from_secs(10));
}

/// A fresh repository with v1.0.0 and v1.1.0, a container started by hand on v1.0.0 with `env`,
/// and a sandbox whose target it is (`target` goes into `[target]`, `more` after `[health]`).
struct App {
    repo: Repo,
    name: String,
    port: u16,
    containers: Containers,
    t: Test,
}

impl App {
    fn on_v1(test: &str, env: &[&str], target: &str, more: &str) -> Self {
        let repo = Repo::new(test);
        for v in ["v1.0.0", "v1.1.0"] {
            repo.push(&AppImage::new(v));
        }
        let containers = Containers::new();
        let name = crate::harness::unique(&format!("bt-{test}"));
        let port = free_port();
        run_by_hand(&name, port, &containers, &format!("{}:v1.0.0", repo.image()), env, &[]);
        let t = Test::new().repo(
            &repo,
            &format!(
                "[target]\nkind = \"container\"\nname = \"{name}\"\n{target}[health]\nhttp = \"http://127.0.0.1:{port}/health\"\ntimeout = \"20s\"\n{more}"
            ),
        );
        Self {
            repo,
            name,
            port,
            containers,
            t,
        }
    }
}

fn env_of(name: &str, var: &str) -> String {
    let out = docker(&["exec", name, "sh", "-c", &format!("echo \"${{{var}}}\"")]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn mark_of(name: &str) -> String {
    let out = docker(&["exec", name, "cat", "/www/cmd"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn serves(port: u16) -> String {
    wait_http(&format!("http://127.0.0.1:{port}/health"), Duration::from_secs(10))
        .trim()
        .to_string()
}

/// Fails when a secret value appears in what a run printed.
fn no_secret(run: &Run, what: &str) {
    for secret in [OLD_SECRET, NEW_SECRET] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "{what} printed a secret: {}{}",
            run.stdout,
            run.stderr
        );
    }
}

#[test]
fn a_rollback_restores_the_config_the_version_ran_with_only_when_asked_and_never_shows_a_secret() {
    let old_secret = format!("DB_PASSWORD={OLD_SECRET}");
    let new_secret = format!("DB_PASSWORD={NEW_SECRET}");
    let (hook_port, hook) = crate::hooks::receiver();
    let App {
        repo,
        name,
        port,
        containers,
        t,
    } = App::on_v1(
        "cfgsnap",
        &["MODE=old", &old_secret],
        "",
        &format!("[notify]\nwebhook = \"http://127.0.0.1:{hook_port}/hook\"\n"),
    );
    let mut runs: Vec<Run> = Vec::new();
    runs.push(t.exec(["deploy", "v1.1.0", "--yes"]).success());
    assert_eq!(env_of(&name, "MODE"), "old", "a deploy keeps today's config");

    // The release changes the config by hand (as `docker compose up` with a new file would): a new
    // env var, another value, a new secret, another command.
    docker_ok(&["rm", "-f", &name]);
    run_by_hand(
        &name,
        port,
        &containers,
        &format!("{}:v1.1.0", repo.image()),
        &["MODE=new", "NEW_FLAG=1", &new_secret],
        &command_b(),
    );
    assert_eq!(mark_of(&name), "cmd-b");

    // The plan says what differs before anything happens, secrets masked.
    let plan = t.exec(["rollback", "--dry-run", "--output", "json"]).success();
    let json = plan.json();
    assert_eq!(json["restore_config"], false, "{json}");
    assert_eq!(json["config_recorded"], true, "{json}");
    let changes = json["config_changes"].as_array().unwrap();
    let change = |key: &str| changes.iter().find(|c| c["key"] == key).cloned();
    assert_eq!(
        change("env.MODE"),
        Some(serde_json::json!({"key": "env.MODE", "now": "new", "then": "old"})),
        "{json}"
    );
    assert_eq!(
        change("env.NEW_FLAG").unwrap()["then"],
        serde_json::Value::Null,
        "{json}"
    );
    assert_eq!(change("env.DB_PASSWORD").unwrap()["now"], "(changed)", "{json}");
    assert!(change("cmd").is_some(), "{json}");
    runs.push(plan);
    let table = t.exec(["rollback", "--dry-run", "--restore-config"]).success();
    assert!(table.stdout.contains("env.MODE: new -> old"), "{}", table.stdout);
    assert!(table.stdout.contains("restored as 1.0.0 ran it"), "{}", table.stdout);
    runs.push(table);

    // With --restore-config the old version gets its old config back: env and command.
    let restored = t.exec(["rollback", "--restore-config", "--yes", "-vv"]).success();
    assert!(restored.stderr.contains("env.MODE: new -> old"), "{}", restored.stderr);
    runs.push(restored);
    assert_eq!(serves(port), "1.0.0");
    assert_eq!(env_of(&name, "MODE"), "old");
    assert_eq!(env_of(&name, "NEW_FLAG"), "", "the release's new variable is gone");
    assert_eq!(env_of(&name, "DB_PASSWORD"), OLD_SECRET);
    assert_eq!(mark_of(&name), "", "the image's own command again");

    // Forward again with the config 1.1.0 ran with; then back without a restore: the old image
    // runs with today's (the release's) config.
    runs.push(t.exec(["deploy", "v1.1.0", "--restore-config", "--yes"]).success());
    assert_eq!((env_of(&name, "MODE"), mark_of(&name)), ("new".into(), "cmd-b".into()));
    runs.push(t.exec(["rollback", "--yes"]).success());
    assert_eq!(serves(port), "1.0.0");
    assert_eq!(
        env_of(&name, "MODE"),
        "new",
        "without --restore-config today's config is kept"
    );
    assert_eq!(env_of(&name, "NEW_FLAG"), "1");

    // History shows the change a restoring operation made, masked; the journal is the owner's.
    let history = t.exec(["history", "--output", "json"]).success();
    let restore_n = history.json()["operations"]
        .as_array()
        .unwrap()
        .iter()
        .position(|o| o["op"] == "rollback")
        .unwrap()
        + 1;
    runs.push(history);
    let show = t.exec(["history", "show", &restore_n.to_string()]).success();
    assert!(show.stdout.contains("env.MODE: new -> old"), "{}", show.stdout);
    assert!(
        show.stdout.contains("env.DB_PASSWORD: (changed) -> (set)"),
        "{}",
        show.stdout
    );
    runs.push(show);
    runs.push(
        t.exec(["history", "show", &restore_n.to_string(), "--output", "json"])
            .success(),
    );
    for (i, run) in runs.iter().enumerate() {
        no_secret(run, &format!("run {i}"));
    }
    let journal = t.target_state_dir(&name);
    let text = std::fs::read_to_string(journal.join("history.jsonl")).unwrap();
    assert!(text.contains(OLD_SECRET), "the snapshot holds the value it restores");
    let mode = std::fs::metadata(journal.join("history.jsonl"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the journal holds config values: its owner's only");
    // Snapshots are stored once per distinct config: three configs, however many operations.
    let stored: usize = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|r| r["snapshots"].as_object().map_or(0, |s| s.len()))
        .sum();
    assert!(stored <= 4, "{stored} snapshots stored for 5 operations");
    std::thread::sleep(Duration::from_millis(500));
    for body in hook.lock().unwrap().iter() {
        assert!(!body.contains(OLD_SECRET) && !body.contains(NEW_SECRET), "{body}");
    }
}

#[test]
fn restoring_a_config_the_journal_does_not_have_is_refused_naming_the_version() {
    // Every field bound: what is not would be dropped (its containers removed) right here.
    let App {
        repo: _repo,
        name,
        port,
        containers: _containers,
        t,
    } = App::on_v1("cfgnone", &["MODE=old"], "restore_config = true\n", "");
    t.exec(["deploy", "v1.1.0", "--yes"]).success();
    // [target] restore_config makes a rollback restore; --keep-config keeps today's.
    let plan = t.exec(["rollback", "--dry-run", "--output", "json"]).success().json();
    assert_eq!(plan["restore_config"], true, "{plan}");
    let plan = t
        .exec(["rollback", "--dry-run", "--keep-config", "--output", "json"])
        .success()
        .json();
    assert_eq!(plan["restore_config"], false, "{plan}");
    // A journal from before snapshots (or one whose records of 1.0.0 are gone) has no config.
    let path = t.target_state_dir(&name).join("history.jsonl");
    let stripped: String = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut r: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = r.as_object_mut().unwrap();
            o.remove("configs");
            o.remove("snapshots");
            format!("{r}\n")
        })
        .collect();
    std::fs::write(&path, stripped).unwrap();
    let run = t.exec(["rollback", "--yes"]).code(2);
    assert!(
        run.stderr.contains("no config snapshot")
            && run.stderr.contains("1.0.0")
            && run.stderr.contains("--restore-config"),
        "{}",
        run.stderr
    );
    assert_eq!(serves(port), "1.1.0", "nothing changed");
    let kept = t.exec(["rollback", "--dry-run", "--keep-config"]).success();
    assert!(
        kept.stdout.contains("no config of 1.0.0 recorded here"),
        "{}",
        kept.stdout
    );
    t.exec(["rollback", "--keep-config", "--yes"]).success();
    assert_eq!(serves(port), "1.0.0");
}

#[test]
fn a_compose_service_gets_back_the_config_compose_gave_the_old_version() {
    let repo = Repo::new("cfgcompose");
    for v in ["v1.0.0", "v1.1.0"] {
        repo.push(&AppImage::new(v));
    }
    let port = free_port();
    let compose = |version: &str, env: &str, command: &str| {
        format!(
            "version: \"2.4\"\nservices:\n  web:\n    image: {}:{version}\n    ports:\n      - \"127.0.0.1:{port}:8080\"\n    environment:\n{env}{command}",
            repo.image()
        )
    };
    let project = ComposeProject::new("btcfg", &compose("v1.0.0", "      MODE: old\n", ""), None);
    project.run(&["up", "-d"]);
    serves(port);
    let t = Test::new().repo(
        &repo,
        &format!(
            "[target]\nkind = \"compose\"\nproject = \"{}\"\nname = \"web\"\n[health]\nhttp = \"http://127.0.0.1:{port}/health\"\ntimeout = \"20s\"\n",
            project.name
        ),
    );
    t.exec(["deploy", "v1.1.0", "--yes"]).success();
    // The release: the compose file gains a variable and another command, and compose applies it.
    let command = "    command: [\"/bin/sh\", \"-c\", \"echo cmd-b > /www/cmd; trap 'kill $$pid; exit 0' TERM; httpd -f -p 8080 -h /www & pid=$$!; wait $$pid\"]\n";
    std::fs::write(
        project.dir.path().join("docker-compose.yml"),
        compose("v1.1.0", "      MODE: new\n      NEW_FLAG: \"1\"\n", command),
    )
    .unwrap();
    project.run(&["up", "-d"]);
    serves(port);
    let container = format!("{}_web_1", project.name);
    let container = if docker(&["inspect", &container]).status.success() {
        container
    } else {
        format!("{}-web-1", project.name)
    };
    assert_eq!(
        (env_of(&container, "MODE"), mark_of(&container)),
        ("new".into(), "cmd-b".into())
    );

    t.exec(["rollback", "--restore-config", "--yes"]).success();
    assert_eq!(serves(port), "1.0.0");
    assert_eq!(env_of(&container, "MODE"), "old");
    assert_eq!(env_of(&container, "NEW_FLAG"), "");
    assert_eq!(mark_of(&container), "");
    let labels = docker_ok(&["inspect", "--format", "{{json .Config.Labels}}", &container]);
    assert!(
        labels.contains("com.docker.compose.service") && labels.contains(&project.name),
        "still compose's service: {labels}"
    );
}

#[test]
fn drill_rehearses_and_emergency_runs_last_known_good_with_the_config_it_ran_with() {
    let App {
        repo,
        name,
        port,
        containers,
        t,
    } = App::on_v1("cfgemerg", &["MODE=old"], "", "");
    t.exec(["mark-good", "v1.0.0"]).success();
    t.exec(["deploy", "v1.1.0", "--yes"]).success();
    docker_ok(&["rm", "-f", &name]);
    run_by_hand(
        &name,
        port,
        &containers,
        &format!("{}:v1.1.0", repo.image()),
        &["MODE=new"],
        &[],
    );

    let drill = t
        .exec(["drill", "v1.0.0", "--restore-config", "--output", "json"])
        .success();
    assert!(
        drill.stdout.contains("the config 1.0.0 last ran with here"),
        "{}",
        drill.stdout
    );
    assert_eq!(env_of(&name, "MODE"), "new", "a drill leaves production alone");

    let plan = t.exec(["emergency", "--restore-config", "--dry-run"]).success();
    assert!(plan.stdout.contains("-e MODE=old"), "{}", plan.stdout);
    t.exec(["emergency", "--restore-config", "--yes"]).success();
    assert_eq!(serves(port), "1.0.0");
    assert_eq!(env_of(&name, "MODE"), "old");
}
