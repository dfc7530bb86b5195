//! The swap on a real Docker Engine with a real registry: deploy, rollback, validation and
//! revert, configuration kept, compose replicas, the lock, crash recovery, dry runs.

use std::time::Duration;

use crate::harness::{AppImage, Containers, Repo, Test, docker, docker_ok, free_port, http_get, wait_http};

/// A running container of `repo:tag` made the way a user would (`docker run` with a tag), with
/// config worth keeping.
struct Deployment {
    name: String,
    port: u16,
    volume: String,
    bind_dir: tempfile::TempDir,
}

fn run_container(repo: &Repo, tag: &str, containers: &Containers) -> Deployment {
    let name = crate::harness::unique("bt-app");
    let port = free_port();
    let volume = format!("{name}-data");
    let bind_dir = tempfile::tempdir().unwrap();
    std::fs::write(bind_dir.path().join("config.txt"), "mounted").unwrap();
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &containers.label(),
        "--label",
        "com.example.owner=ops",
        "-e",
        "DATABASE_URL=postgres://db/app",
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        "-v",
        &format!("{}:/config:ro", bind_dir.path().display()),
        "-v",
        &format!("{volume}:/data"),
        "--restart",
        "unless-stopped",
        &format!("{}:{tag}", repo.image()),
    ]);
    wait_http(&format!("http://127.0.0.1:{port}/health"), Duration::from_secs(10));
    Deployment {
        name,
        port,
        volume,
        bind_dir,
    }
}

/// The usual start of a swap test: `from` and `to` pushed, a container running `from` the way a
/// user would start it, and a sandbox pointing at both. The digest of `to` comes back too.
struct Setup {
    repo: Repo,
    d: Deployment,
    t: Test,
    to_digest: String,
    _containers: Containers,
}

fn setup(test: &str, from: AppImage, to: AppImage) -> Setup {
    let repo = Repo::new(test);
    let from_tag = from.version.clone();
    repo.push(&from);
    let to_digest = repo.push(&to);
    let containers = Containers::new();
    let d = run_container(&repo, &from_tag, &containers);
    let t = Test::new().repo(&repo, &target_toml(&d, "20s"));
    Setup {
        repo,
        d,
        t,
        to_digest,
        _containers: containers,
    }
}

fn target_toml(d: &Deployment, timeout: &str) -> String {
    format!(
        "[target]\nkind = \"container\"\nname = \"{}\"\n[health]\nhttp = \"http://127.0.0.1:{}/health\"\ntimeout = \"{timeout}\"\n",
        d.name, d.port
    )
}

fn inspect(name: &str, format: &str) -> String {
    docker_ok(&["inspect", name, "--format", format])
}

/// Waits (bounded) until a swap of `name` is under way: the previous container is set aside.
fn wait_until_set_aside(name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while backups_of(name).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the swap never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
}

fn backups_of(name: &str) -> String {
    docker_ok(&[
        "ps",
        "-a",
        "--filter",
        &format!("name={name}-backtrack-prev"),
        "--format",
        "{{.Names}}",
    ])
}

#[test]
fn deploy_and_rollback_move_a_container_between_versions_keeping_its_configuration() {
    let Setup {
        repo,
        d,
        t,
        to_digest,
        _containers,
    } = setup("swap", AppImage::new("v1.0.0"), AppImage::new("v1.1.0"));
    let v11 = to_digest;

    let run = t.exec(["deploy", "v1.1.0", "--reason", "ship 1.1"]).success();
    assert!(run.stdout.contains("deployed container"), "{}", run.stdout);
    let url = format!("http://127.0.0.1:{}/health", d.port);
    assert_eq!(http_get(&url).unwrap().trim(), "1.1.0");

    // Pinned by digest, and everything the user configured is still there.
    assert_eq!(inspect(&d.name, "{{.Config.Image}}"), format!("{}@{v11}", repo.image()));
    let env = inspect(&d.name, "{{json .Config.Env}}");
    assert!(env.contains("DATABASE_URL=postgres://db/app"), "{env}");
    assert!(env.contains("APP_VERSION=1.1.0"), "the new image's env applies: {env}");
    assert!(!env.contains("APP_VERSION=1.0.0"), "{env}");
    assert_eq!(inspect(&d.name, "{{.HostConfig.RestartPolicy.Name}}"), "unless-stopped");
    assert_eq!(
        inspect(&d.name, "{{index .Config.Labels \"com.example.owner\"}}"),
        "ops"
    );
    assert_eq!(
        inspect(&d.name, "{{index .Config.Labels \"org.opencontainers.image.version\"}}"),
        "1.1.0"
    );
    let mounts = inspect(
        &d.name,
        "{{range .Mounts}}{{.Type}}:{{.Source}}:{{.Destination}} {{end}}",
    );
    assert!(
        mounts.contains(&format!("bind:{}:/config", d.bind_dir.path().display())),
        "{mounts}"
    );
    assert!(
        mounts.contains(&format!("volume:/var/lib/docker/volumes/{}/_data:/data", d.volume)),
        "{mounts}"
    );
    assert_eq!(
        inspect(
            &d.name,
            "{{(index (index .HostConfig.PortBindings \"8080/tcp\") 0).HostPort}}"
        ),
        d.port.to_string()
    );
    assert_eq!(
        backups_of(&d.name),
        "",
        "the previous container is removed once validated"
    );

    let versions = t.exec(["versions", "--output", "json"]).success().json();
    let marks: Vec<(String, String)> = versions["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["tag"].as_str().unwrap().to_string(), r["marks"].to_string()))
        .collect();
    assert_eq!(marks[0], ("v1.1.0".to_string(), "[\"deployed\"]".to_string()));

    let run = t.exec(["rollback", "--reason", "1.1 is slow"]).success();
    assert!(run.stdout.contains("rolled back container"), "{}", run.stdout);
    assert_eq!(http_get(&url).unwrap().trim(), "1.0.0");

    let history = t.exec(["history", "--output", "json"]).success().json();
    let ops = history["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 2);
    assert_eq!(ops[0]["op"], "deploy");
    assert_eq!(ops[0]["reason"], "ship 1.1");
    assert_eq!(ops[0]["result"], "ok");
    assert_eq!(ops[0]["to"]["digest"], v11.as_str());
    assert_eq!(ops[1]["op"], "rollback");
    assert_eq!(ops[1]["to"]["version"], "1.0.0");
    assert!(ops[1]["user"].is_string() && ops[1]["duration_ms"].is_u64());

    let status = t.exec(["status", "--output", "json"]).success().json();
    assert_eq!(status["containers"][0]["version"], "1.0.0");
    assert_eq!(status["warnings"].as_array().unwrap().len(), 0, "{status}");
    // It publishes a host port: status names it as stop-first, with the way out.
    assert_eq!(status["order"]["order"], "stop-first", "{status}");
    let table = t.exec(["status"]).success();
    assert!(
        table.stdout.contains("swap order: stop-first (")
            && table
                .stdout
                .contains("each swap is down for the app's boot; put a proxy in front"),
        "{}",
        table.stdout
    );
    let valid = t.exec(["validate"]).success();
    assert!(valid.stdout.contains("healthy"), "{}", valid.stdout);
    docker(&["volume", "rm", "-f", &d.volume]);
}

#[test]
fn the_first_rollback_after_adopting_goes_back_to_what_ran_before() {
    let repo = Repo::new("adopt");
    let v10 = repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0"));
    repo.push(&AppImage::new("v1.2.0"));
    let containers = Containers::new();
    // Started by hand on 1.0.0: the journal is empty until backtrack's first deploy.
    let d = run_container(&repo, "v1.0.0", &containers);
    let t = Test::new().repo(&repo, &target_toml(&d, "20s"));
    t.exec(["deploy", "v1.2.0"]).success();
    let url = format!("http://127.0.0.1:{}/health", d.port);
    assert_eq!(http_get(&url).unwrap().trim(), "1.2.0");

    // Undo goes to what the deploy replaced, never to 1.1.0, the next lower version that never
    // ran here.
    let plan = t.exec(["rollback", "--dry-run", "--output", "json"]).success().json();
    assert_eq!(plan["to"]["version"], "1.0.0", "{plan}");
    assert_eq!(plan["to"]["digest"], v10.as_str(), "{plan}");

    let run = t.exec(["rollback"]).success();
    assert!(run.stdout.contains("rolled back container"), "{}", run.stdout);
    assert_eq!(http_get(&url).unwrap().trim(), "1.0.0");
    assert_eq!(inspect(&d.name, "{{.Config.Image}}"), format!("{}@{v10}", repo.image()));
    // And the bottom of the stack is reached: nothing earlier ran here, so a second undo has
    // only the registry's order to go by.
    let plan = t.exec(["rollback", "--dry-run", "--output", "json"]).code(4);
    assert!(plan.stderr.contains("no version below 1.0.0"), "{}", plan.stderr);
    docker(&["volume", "rm", "-f", &d.volume]);
}

#[test]
fn the_first_rollback_after_adopting_a_compose_service_goes_back_to_what_compose_started() {
    let repo = Repo::new("adopt-compose");
    let v10 = repo.push(&AppImage::new("v1.0.0").healthcheck(true));
    repo.push(&AppImage::new("v1.1.0").healthcheck(true));
    repo.push(&AppImage::new("v1.2.0").healthcheck(true));
    let compose = crate::harness::ComposeProject::new(
        "btadopt",
        &format!(
            "version: \"3\"\nservices:\n  web:\n    image: {}:v1.0.0\n",
            repo.image()
        ),
        None,
    );
    let project = compose.name.clone();
    compose.run(&["up", "-d"]);
    let toml =
        format!("[target]\nkind = \"compose\"\nproject = \"{project}\"\nname = \"web\"\n[health]\ntimeout = \"30s\"\n");
    let t = Test::new().repo(&repo, &toml);
    t.exec(["deploy", "v1.2.0"]).success();
    let plan = t.exec(["rollback", "--dry-run", "--output", "json"]).success().json();
    assert_eq!(plan["to"]["version"], "1.0.0", "{plan}");
    assert_eq!(plan["to"]["digest"], v10.as_str(), "{plan}");
}

#[test]
fn failing_healthcheck_is_reverted_with_exit_6_and_recorded() {
    let Setup {
        repo: _,
        d,
        t,
        to_digest,
        _containers,
    } = setup(
        "revert",
        AppImage::new("v1.0.0").healthcheck(true),
        AppImage::new("v1.1.0").healthcheck(false),
    );
    let _ = to_digest;
    let id_before = inspect(&d.name, "{{.Id}}");

    let run = t.exec(["deploy", "v1.1.0"]).code(6);
    assert!(run.stderr.contains("HEALTHCHECK reports unhealthy"), "{}", run.stderr);
    assert!(
        run.stderr.contains("the previous version was restored"),
        "{}",
        run.stderr
    );
    assert_eq!(
        inspect(&d.name, "{{.Id}}"),
        id_before,
        "the very same container runs again"
    );
    assert_eq!(inspect(&d.name, "{{.HostConfig.RestartPolicy.Name}}"), "unless-stopped");
    assert_eq!(
        wait_http(&format!("http://127.0.0.1:{}/health", d.port), Duration::from_secs(10)).trim(),
        "1.0.0"
    );
    assert_eq!(backups_of(&d.name), "");
    let history = t.exec(["history", "--output", "json"]).success().json();
    assert_eq!(history["operations"][0]["result"], "reverted");
    assert!(
        history["operations"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("unhealthy")
    );
}

#[test]
fn container_that_exits_is_reverted_and_its_logs_are_shown() {
    let Setup {
        repo: _,
        d,
        t,
        to_digest,
        _containers,
    } = setup("crash", AppImage::new("v1.0.0"), AppImage::new("v1.1.0").crash(3));
    let _ = to_digest;
    let run = t.exec(["deploy", "^1.1"]).code(6);
    assert!(run.stderr.contains("exit code 3"), "{}", run.stderr);
    assert!(
        run.stderr.contains("| boom"),
        "the failed container's output is shown: {}",
        run.stderr
    );
    assert_eq!(
        http_get(&format!("http://127.0.0.1:{}/health", d.port)).unwrap().trim(),
        "1.0.0"
    );
    // `previous` never picks a version whose validation failed.
    let plan = t.exec(["rollback", "--dry-run"]).code(4);
    assert!(
        plan.stderr.contains("resolve 'previous': no version below 1.0.0"),
        "{}",
        plan.stderr
    );
}

#[test]
fn expect_version_rejects_an_image_carrying_another_version() {
    let repo = Repo::new("expect");
    repo.push(&AppImage::new("v1.0.0"));
    // The tag says 2.0.0 but the image inside says 1.9.0: a mistagged push.
    let mistagged = AppImage::new("v1.9.0");
    repo.push(&mistagged);
    docker_ok(&[
        "tag",
        &format!("{}:v1.9.0", repo.image()),
        &format!("{}:v2.0.0", repo.image()),
    ]);
    docker_ok(&["push", &format!("{}:v2.0.0", repo.image())]);
    let containers = Containers::new();
    let d = run_container(&repo, "v1.0.0", &containers);
    let t = Test::new().repo(&repo, &target_toml(&d, "20s"));
    let run = t.exec(["deploy", "v2.0.0"]).code(6);
    assert!(
        run.stderr.contains("carries version 1.9.0, expected 2.0.0"),
        "{}",
        run.stderr
    );
}

#[test]
fn dry_run_changes_nothing_and_prints_the_docker_commands() {
    let Setup {
        repo,
        d,
        t,
        to_digest,
        _containers,
    } = setup("dryrun", AppImage::new("v1.0.0"), AppImage::new("v2.0.0"));
    let v2 = to_digest;
    let id_before = inspect(&d.name, "{{.Id}}");
    let run = t.exec(["deploy", "latest-version", "--dry-run"]).success();
    assert!(
        run.stdout.contains(&format!("docker pull {}@{v2}", repo.image())),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("-e DATABASE_URL=postgres://db/app"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("--restart unless-stopped"), "{}", run.stdout);
    assert!(run.stdout.contains("dry run: nothing was changed"), "{}", run.stdout);
    assert_eq!(inspect(&d.name, "{{.Id}}"), id_before);
    assert!(
        !t.state_dir().exists()
            || std::fs::read_dir(t.state_dir()).unwrap().all(|e| {
                let p = e.unwrap().path();
                !p.join("history.jsonl").exists()
            })
    );
    let json = t
        .exec(["deploy", "v2.0.0", "--dry-run", "--output", "json"])
        .success()
        .json();
    assert_eq!(json["dry_run"], true);
    assert_eq!(json["to"]["digest"], v2.as_str());
}

#[test]
fn a_second_backtrack_is_refused_while_the_lock_is_held() {
    let Setup {
        repo,
        d,
        t,
        to_digest,
        _containers,
    } = setup("lock", AppImage::new("v1.0.0"), AppImage::new("v1.1.0"));
    let _ = to_digest;
    // Another backtrack holds the lock: take it the way backtrack does, from this process, with
    // the identity a holder writes before it locks.
    let _ = repo;
    let state = t.target_state_dir(&d.name);
    std::fs::create_dir_all(&state).unwrap();
    let me = std::process::id();
    std::fs::write(
        state.join(format!("holder-{me}.json")),
        format!(
            r#"{{"pid":{me},"user":"alice","host":"web1","command":"backtrack deploy v9","since":"2026-01-01T00:00:00Z"}}"#
        ),
    )
    .unwrap();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state.join("lock"))
        .unwrap();
    f.try_lock().unwrap();
    let status = t.exec(["status"]).success();
    assert!(
        status.stdout.contains(&format!(
            "in progress: pid {me} of alice@web1, running `backtrack deploy v9`"
        )),
        "{}",
        status.stdout
    );
    let run = t.exec(["deploy", "v1.1.0"]).code(5);
    assert!(
        run.stderr.contains(&format!(
            "another backtrack holds it (pid {me} of alice@web1, running `backtrack deploy v9`"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(
        http_get(&format!("http://127.0.0.1:{}/health", d.port)).unwrap().trim(),
        "1.0.0"
    );
    drop(f);
    t.exec(["deploy", "v1.1.0"]).success();
}

#[test]
fn a_swap_killed_mid_way_is_settled_by_the_next_run() {
    let repo = Repo::new("kill9");
    repo.push(&AppImage::new("v1.0.0"));
    // v1.1.0 never becomes healthy in time: its health check starts failing only after a while,
    // so the swap sits in validation when it is killed.
    repo.push(&AppImage::new("v1.1.0").healthcheck(false));
    let containers = Containers::new();
    let d = run_container(&repo, "v1.0.0", &containers);
    let id_before = inspect(&d.name, "{{.Id}}");
    // The probe points nowhere, so validation waits for the full timeout.
    let toml = format!(
        "[target]\nkind = \"container\"\nname = \"{}\"\n[health]\nhttp = \"http://127.0.0.1:{}/nothing-here\"\ntimeout = \"60s\"\nexpect_version = false\n",
        d.name, d.port
    );
    let t = Test::new().repo(&repo, &toml);
    let mut child = t
        .command()
        .args(["deploy", "v1.1.0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until_set_aside(&d.name);
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    assert_eq!(
        backups_of(&d.name),
        format!("{}-backtrack-prev", d.name),
        "the kill left the swap half done"
    );

    let status = t.exec(["status"]).success();
    assert!(
        status.stdout.contains("an operation did not finish"),
        "{}",
        status.stdout
    );
    // The next mutating run settles it before anything else: the previous container is back.
    let run = t.exec(["deploy", "v1.0.0"]).success();
    assert!(
        run.stderr.contains("putting the previous version back"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("already runs"), "{}", run.stdout);
    assert_eq!(inspect(&d.name, "{{.Id}}"), id_before);
    assert_eq!(backups_of(&d.name), "");
    let history = t.exec(["history", "--output", "json"]).success().json();
    assert_eq!(history["operations"][0]["result"], "rolled-back-after-crash");
}

/// A run cut off between setting the old container aside and renaming the new one leaves the
/// target's name empty: `status` says an operation did not finish (not "check [target] name"),
/// and the next run settles it.
#[test]
fn status_of_a_target_left_without_a_container_mid_swap_names_the_unfinished_operation() {
    let repo = Repo::new("nameless");
    repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0"));
    let containers = Containers::new();
    let d = run_container(&repo, "v1.0.0", &containers);
    let id_before = inspect(&d.name, "{{.Id}}");
    let toml = format!(
        "[target]\nkind = \"container\"\nname = \"{}\"\n[health]\nhttp = \"http://127.0.0.1:{}/nothing-here\"\ntimeout = \"60s\"\n",
        d.name, d.port
    );
    let t = Test::new().repo(&repo, &toml);
    let mut child = t
        .command()
        .args(["deploy", "v1.1.0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until_set_aside(&d.name);
    child.kill().unwrap();
    child.wait().unwrap();
    // As if it had stopped before the new container took the name.
    crate::harness::docker(&["rm", "-f", &d.name]);

    let status = t.exec(["status"]).success();
    assert!(
        status.stdout.contains("an operation did not finish") && status.stdout.contains("has no container now"),
        "{}",
        status.stdout
    );
    let run = t.exec(["deploy", "v1.0.0"]).success();
    assert!(run.stdout.contains("already runs"), "{}", run.stdout);
    assert_eq!(inspect(&d.name, "{{.Id}}"), id_before);
}

#[test]
fn ctrl_c_during_validation_puts_the_previous_version_back() {
    let repo = Repo::new("sigint");
    repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0"));
    let containers = Containers::new();
    let d = run_container(&repo, "v1.0.0", &containers);
    let id_before = inspect(&d.name, "{{.Id}}");
    let toml = format!(
        "[target]\nkind = \"container\"\nname = \"{}\"\n[health]\nhttp = \"http://127.0.0.1:{}/nothing-here\"\ntimeout = \"60s\"\n",
        d.name, d.port
    );
    let t = Test::new().repo(&repo, &toml);
    let child = t
        .command()
        .args(["deploy", "v1.1.0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_set_aside(&d.name);
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(inspect(&d.name, "{{.Id}}"), id_before);
    assert_eq!(backups_of(&d.name), "");
}

#[test]
fn compose_service_with_two_replicas_is_swapped_and_keeps_its_compose_labels() {
    let repo = Repo::new("compose");
    repo.push(&AppImage::new("v1.0.0").healthcheck(true));
    let v11 = repo.push(&AppImage::new("v1.1.0").healthcheck(true));
    let compose = crate::harness::ComposeProject::new(
        "btc",
        &format!(
            "version: \"3\"\nservices:\n  web:\n    image: {}:v1.0.0\n    environment:\n      - MODE=compose\n",
            repo.image()
        ),
        None,
    );
    let project = compose.name.clone();
    compose.run(&["up", "-d", "--scale", "web=2"]);
    let toml =
        format!("[target]\nkind = \"compose\"\nproject = \"{project}\"\nname = \"web\"\n[health]\ntimeout = \"30s\"\n");
    let t = Test::new().repo(&repo, &toml);
    let run = t.exec(["deploy", "v1.1.0"]).success();
    assert!(run.stdout.contains("compose service"), "{}", run.stdout);
    for n in [1, 2] {
        let name = format!("{project}_web_{n}");
        assert_eq!(inspect(&name, "{{.Config.Image}}"), format!("{}@{v11}", repo.image()));
        assert_eq!(
            inspect(&name, "{{index .Config.Labels \"com.docker.compose.service\"}}"),
            "web"
        );
        assert!(inspect(&name, "{{json .Config.Env}}").contains("MODE=compose"));
        assert_eq!(inspect(&name, "{{.State.Health.Status}}"), "healthy");
    }
    let status = t.exec(["status", "--output", "json"]).success().json();
    assert_eq!(status["containers"].as_array().unwrap().len(), 2);
}

#[test]
fn rollback_on_a_terminal_offers_a_picker_and_asks_before_acting() {
    let repo = Repo::new("picker");
    for v in ["v1.0.0", "v1.1.0", "v1.2.0"] {
        repo.push(&AppImage::new(v));
    }
    let containers = Containers::new();
    let d = run_container(&repo, "v1.2.0", &containers);
    let t = Test::new().repo(&repo, &target_toml(&d, "20s"));
    let url = format!("http://127.0.0.1:{}/health", d.port);
    let on_terminal = |steps: &[(&str, &str)]| t.on_terminal("rollback", steps);
    // Pick #3 (v1.0.0) after a wrong number, then say no: nothing changes.
    let (screen, _, _) = on_terminal(&[
        ("[previous = 1.1.0]", "9\n"),
        ("choose 1 to 3", "3\n"),
        ("[y/n]", "n\n"),
    ]);
    assert!(
        screen.lines().any(|l| l.contains("v1.2.0") && l.contains("deployed")),
        "{screen}"
    );
    assert!(
        screen.contains("Roll back container") && screen.contains("to 1.0.0? [y/n]"),
        "{screen}"
    );
    assert_eq!(http_get(&url).unwrap().trim(), "1.2.0");
    // Ctrl-C at the confirmation cancels at once, with 130, and changes nothing.
    let (screen, code, took) = on_terminal(&[("[previous = 1.1.0]", "3\n"), ("[y/n]", "\x03")]);
    assert_eq!(code, 130, "{screen}");
    assert!(screen.contains("cancelled: nothing was changed"), "{screen}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(http_get(&url).unwrap().trim(), "1.2.0");
    // Pick #2 (v1.1.0); an answer that is neither yes nor no asks again; confirm.
    let (screen, code, _) = on_terminal(&[
        ("[previous = 1.1.0]", "2\n"),
        ("[y/n]", "maybe\n"),
        ("please answer y or n", "y\n"),
    ]);
    assert_eq!(code, 0, "{screen}");
    assert!(screen.contains("rolled back container"), "{screen}");
    assert_eq!(http_get(&url).unwrap().trim(), "1.1.0");
}

#[test]
fn status_reports_drift_when_the_deployed_tag_moves() {
    let Setup {
        repo,
        d: _,
        t,
        to_digest,
        _containers,
    } = setup("drift", AppImage::new("v1.0.0"), AppImage::new("v1.1.0"));
    let _ = to_digest;
    t.exec(["deploy", "v1.1.0"]).success();
    // Someone re-pushes v1.1.0 with different content.
    repo.push(&AppImage::new("v1.1.0").revision("f00dfeed"));
    let status = t.exec(["status", "--output", "json"]).success().json();
    let warnings = status["warnings"].to_string();
    assert!(warnings.contains("drift: tag v1.1.0 now points to"), "{warnings}");
}

#[test]
fn user_networks_and_aliases_are_kept() {
    let repo = Repo::new("networks");
    repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0"));
    let containers = Containers::new();
    let net = crate::harness::unique("bt-net");
    let other = crate::harness::unique("bt-net2");
    docker_ok(&["network", "create", &net]);
    docker_ok(&["network", "create", &other]);
    let name = crate::harness::unique("bt-netapp");
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &containers.label(),
        "--network",
        &net,
        "--network-alias",
        "api",
        &format!("{}:v1.0.0", repo.image()),
    ]);
    docker_ok(&["network", "connect", "--alias", "api-metrics", &other, &name]);
    let t = Test::new().repo(
        &repo,
        &format!("[target]\nkind = \"container\"\nname = \"{name}\"\n[health]\ntimeout = \"20s\"\n"),
    );
    let run = t.exec(["deploy", "v1.1.0"]);
    let aliases = |network: &str| {
        inspect(
            &name,
            &format!("{{{{json (index .NetworkSettings.Networks \"{network}\").Aliases}}}}"),
        )
    };
    let (a1, a2) = (aliases(&net), aliases(&other));
    drop(containers);
    docker(&["network", "rm", &net, &other]);
    run.success();
    assert!(a1.contains("\"api\""), "{a1}");
    assert!(a2.contains("\"api-metrics\""), "{a2}");
}

#[test]
fn a_leftover_backup_container_stops_the_swap_before_it_touches_anything() {
    let repo = Repo::new("leftover");
    repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0"));
    let containers = Containers::new();
    let d = run_container(&repo, "v1.0.0", &containers);
    let leftover = format!("{}-backtrack-prev", d.name);
    docker_ok(&[
        "create",
        "--name",
        &leftover,
        "--label",
        &containers.label(),
        &format!("{}:v1.0.0", repo.image()),
    ]);
    let (running, left) = (inspect(&d.name, "{{.Id}}"), inspect(&leftover, "{{.Id}}"));
    let t = Test::new().repo(&repo, &target_toml(&d, "20s"));
    let run = t.exec(["deploy", "v1.1.0"]).code(9);
    assert!(run.stderr.contains("is left from an earlier run"), "{}", run.stderr);
    assert_eq!(
        inspect(&d.name, "{{.Id}}"),
        running,
        "the running container was not touched"
    );
    assert_eq!(inspect(&d.name, "{{.State.Running}}"), "true");
    assert_eq!(inspect(&leftover, "{{.Id}}"), left, "the leftover was not touched");
}

#[test]
fn a_target_started_with_rm_is_refused() {
    let repo = Repo::new("autorm");
    repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0"));
    let containers = Containers::new();
    let (name, port) = crate::harness::run_app(&format!("{}:v1.0.0", repo.image()), &containers, &["--rm"]);
    let t = Test::new().repo(&repo, &format!("[target]\nkind = \"container\"\nname = \"{name}\"\n"));
    let run = t.exec(["deploy", "v1.1.0"]).code(9);
    assert!(run.stderr.contains("it runs with --rm"), "{}", run.stderr);
    assert_eq!(
        http_get(&format!("http://127.0.0.1:{port}/health")).unwrap().trim(),
        "1.0.0"
    );
}
