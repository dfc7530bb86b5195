//! The state model on a real engine and registry: one target, one history (journal, lock,
//! `previous`, `last_known_good` per environment), the undo stack, failures that are not the
//! version's, drift against what backtrack last committed, and a journal that survives bad bytes,
//! a full disk and a settle without saved restart policies.

use crate::harness::{AppImage, Containers, Repo, Test, docker, docker_ok, free_port, http_get, run_app};

fn container_target(name: &str, port: u16, more: &str) -> String {
    format!(
        "[target]\nkind = \"container\"\nname = \"{name}\"\n{more}[health]\nhttp = \"http://127.0.0.1:{port}/health\"\ntimeout = \"20s\"\n"
    )
}

fn serves(port: u16) -> String {
    http_get(&format!("http://127.0.0.1:{port}/health"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn last_op(t: &Test) -> serde_json::Value {
    let h = t.exec(["history", "--output", "json"]).success().json();
    h["operations"].as_array().unwrap().last().cloned().unwrap_or_default()
}

fn marks_of(versions: &serde_json::Value, tag: &str) -> Vec<String> {
    versions["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tag"] == tag)
        .unwrap_or_else(|| panic!("{tag} listed"))["marks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn two_targets_on_one_repository_keep_separate_histories_and_pointers() {
    let repo = Repo::new("twotargets");
    for v in ["v1.0.0", "v1.1.0", "v1.2.0"] {
        repo.push(&AppImage::new(v));
    }
    let c = Containers::new();
    let image = format!("{}:v1.0.0", repo.image());
    let (web, web_port) = run_app(&image, &c, &[]);
    let (worker, worker_port) = run_app(&image, &c, &[]);
    let web_t = Test::new().repo(&repo, &container_target(&web, web_port, "environment = \"prod\"\n"));
    let shared_state = web_t.state_dir();
    let worker_t = Test::new()
        .repo(
            &repo,
            &container_target(&worker, worker_port, "environment = \"staging\"\n"),
        )
        .env("BACKTRACK_STATE_DIR", shared_state.to_str().unwrap());

    web_t.exec(["deploy", "v1.1.0"]).success();
    web_t.exec(["deploy", "v1.2.0"]).success();
    // The worker only ever ran v1.0.0: the web's deploys are not its history.
    let run = worker_t.exec(["rollback", "--dry-run"]).code(4);
    assert!(run.stderr.contains("no version below 1.0.0"), "{}", run.stderr);
    assert!(!run.stdout.contains("1.2.0"), "{}", run.stdout);
    let h = worker_t.exec(["history", "--output", "json"]).success().json();
    assert_eq!(h["operations"].as_array().unwrap().len(), 0, "{h}");
    let plan = web_t
        .exec(["rollback", "--dry-run", "--output", "json"])
        .success()
        .json();
    assert_eq!(plan["to"]["version"], "1.1.0");

    // Each environment has its own pointer.
    let marked = web_t.exec(["mark-good"]).success();
    assert!(marked.stdout.contains("last_known_good-prod"), "{}", marked.stdout);
    assert!(repo.tag_digest("last_known_good-prod").is_some());
    assert!(repo.tag_digest("last_known_good-staging").is_none());
    assert!(repo.tag_digest("last_known_good").is_none());
    let run = worker_t.exec(["rollback", "lkg", "--dry-run"]).code(4);
    assert!(run.stderr.contains("last-known-good"), "{}", run.stderr);
    let versions = worker_t.exec(["versions", "--output", "json"]).success().json();
    assert!(marks_of(&versions, "v1.2.0").contains(&"last_known_good-prod".to_string()));
    assert!(marks_of(&versions, "v1.0.0").contains(&"deployed".to_string()));

    // One lock each: the web's lock does not stop the worker.
    assert!(web_t.target_state_dir(&web).join("history.jsonl").is_file());
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(web_t.target_state_dir(&web).join("lock"))
        .unwrap();
    lock.try_lock().unwrap();
    worker_t.exec(["mark-good", "v1.0.0"]).success();
    web_t.exec(["mark-good", "v1.2.0"]).code(5);
    drop(lock);

    // Pruning from the worker's config keeps what the web's journal says it runs and ran.
    std::fs::write(
        worker_t.dir.path().join("policy.toml"),
        "[protect]\nhistory = 2\n[[keep]]\ntags = [\"no-such-tag-*\"]\n",
    )
    .unwrap();
    let plan = worker_t
        .exec(["prune", "--dry-run", "--policy", "policy.toml", "--output", "json"])
        .success()
        .json();
    let reasons = |tag: &str| -> String {
        plan["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["tags"].as_array().unwrap().iter().any(|t| t == tag))
            .map(|d| d["reasons"].to_string())
            .unwrap_or_default()
    };
    assert!(
        reasons("v1.1.0").contains(&format!("deployed on container {web}")),
        "{plan}"
    );
    assert!(
        reasons("v1.2.0").contains(&format!("container {web} runs it")),
        "{plan}"
    );
}

#[test]
fn rollback_twice_goes_further_back_and_a_forward_rollback_asks() {
    let repo = Repo::new("undo");
    for v in ["v1.0.0", "v1.1.0", "v1.2.0"] {
        repo.push(&AppImage::new(v));
    }
    let c = Containers::new();
    let (name, port) = run_app(&format!("{}:v1.0.0", repo.image()), &c, &[]);
    let t = Test::new().repo(&repo, &container_target(&name, port, ""));
    t.exec(["deploy", "v1.1.0"]).success();
    t.exec(["deploy", "v1.2.0"]).success();
    let run = t.exec(["rollback", "--yes"]).success();
    assert!(
        run.stdout.contains("rolled back") && run.stdout.contains("1.2.0 -> 1.1.0"),
        "{}",
        run.stdout
    );
    let run = t.exec(["rollback", "--yes"]).success();
    assert!(run.stdout.contains("1.1.0 -> 1.0.0"), "{}", run.stdout);
    assert_eq!(serves(port), "1.0.0");
    // Nothing further back: undo has run out, it never goes forward by itself.
    t.exec(["rollback", "--yes"]).code(4);
    // Naming a higher version is a forward move: said, and confirmed.
    let run = t.exec(["rollback", "v1.2.0"]).code(2);
    assert!(run.stderr.contains("goes forward"), "{}", run.stderr);
    assert_eq!(serves(port), "1.0.0");
    let run = t.exec(["rollback", "v1.2.0", "--yes"]).success();
    assert!(run.stdout.contains("rolled forward"), "{}", run.stdout);
    assert_eq!(serves(port), "1.2.0");
}

#[test]
fn bad_health_url_is_refused_and_an_unreachable_probe_fails_no_version() {
    let repo = Repo::new("probe");
    repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0"));
    repo.push(&AppImage::new("v1.2.0").crash(3));
    let c = Containers::new();
    let (name, port) = run_app(&format!("{}:v1.0.0", repo.image()), &c, &[]);

    let no_scheme =
        format!("[target]\nkind = \"container\"\nname = \"{name}\"\n[health]\nhttp = \"127.0.0.1:{port}/health\"\n");
    let run = Test::new().repo(&repo, &no_scheme).exec(["status"]).code(2);
    assert!(run.stderr.contains("backtrack.toml:8:8"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("write it as http://127.0.0.1:{port}/health")),
        "{}",
        run.stderr
    );

    // A probe aimed at nothing: the deploy is reverted, but v1.1.0 did nothing wrong.
    let nowhere = free_port();
    let t = Test::new().repo(
        &repo,
        &format!(
            "[target]\nkind = \"container\"\nname = \"{name}\"\n[health]\nhttp = \"http://127.0.0.1:{nowhere}/health\"\ntimeout = \"2s\"\n"
        ),
    );
    let run = t.exec(["deploy", "v1.1.0"]).code(6);
    assert!(run.stderr.contains("check [health] http"), "{}", run.stderr);
    assert_eq!(serves(port), "1.0.0");
    assert_eq!(last_op(&t)["result"], "reverted-probe-unreachable");
    let versions = t.exec(["versions", "--output", "json"]).success().json();
    assert!(!marks_of(&versions, "v1.1.0").contains(&"failed".to_string()));
    t.exec(["mark-good", "v1.1.0", "--dry-run"]).success();

    // A version that does fail is marked so.
    t.exec(["deploy", "v1.2.0"]).code(6);
    assert_eq!(last_op(&t)["result"], "reverted");
    let versions = t.exec(["versions", "--output", "json"]).success().json();
    assert!(
        marks_of(&versions, "v1.2.0").contains(&"failed".to_string()),
        "{versions}"
    );
}

#[test]
fn compose_recreate_is_drift_and_version_env_keeps_the_deployed_version() {
    let repo = Repo::new("composeenv");
    repo.push(&AppImage::new("v1.0.0").healthcheck(true));
    repo.push(&AppImage::new("v1.1.0").healthcheck(true));
    let compose = crate::harness::ComposeProject::new(
        "btenv",
        &format!(
            "version: \"3\"\nservices:\n  web:\n    image: {}:${{VERSION}}\n",
            repo.image()
        ),
        Some("OTHER=kept\nVERSION=v1.0.0\n"),
    );
    let (project, dir) = (compose.name.clone(), compose.dir.path().to_path_buf());
    compose.run(&["up", "-d"]);
    let t = Test::new().repo(
        &repo,
        &format!(
            "[target]\nkind = \"compose\"\nproject = \"{project}\"\nname = \"web\"\nversion_env = \"VERSION\"\n[health]\ntimeout = \"30s\"\n"
        ),
    );
    let drift = |t: &Test| -> Vec<String> {
        let s = t.exec(["status", "--output", "json"]).success().json();
        s["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap().to_string())
            .filter(|w| w.starts_with("drift"))
            .collect()
    };
    let run = t.exec(["deploy", "v1.1.0"]).success();
    assert!(run.stderr.contains("wrote VERSION=v1.1.0"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.join(".env")).unwrap(),
        "OTHER=kept\nVERSION=v1.1.0\n"
    );
    assert_eq!(drift(&t), Vec::<String>::new());
    // The team's usual `docker-compose up -d` keeps what backtrack deployed.
    compose.run(&["up", "-d"]);
    assert_eq!(drift(&t), Vec::<String>::new());
    // Put back on the old image behind backtrack's back: drift, named.
    std::fs::write(dir.join(".env"), "OTHER=kept\nVERSION=v1.0.0\n").unwrap();
    compose.run(&["up", "-d", "--force-recreate"]);
    let found = drift(&t);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("last deploy put 1.1.0"), "{found:?}");
}

#[test]
fn torn_utf8_line_in_the_journal_is_skipped_and_user_text_is_escaped() {
    let repo = Repo::new("torn");
    repo.push(&AppImage::new("v1.0.0"));
    let t = Test::new().repo(&repo, "[target]\nkind = \"container\"\nname = \"torn-app\"\n");
    let state = t.target_state_dir("torn-app");
    std::fs::create_dir_all(&state).unwrap();
    let line = |id: &str, reason: &str| {
        serde_json::json!({
            "id": id, "at": "2026-01-01T00:00:00Z", "op": "deploy", "phase": "started",
            "target": "container torn-app", "reason": reason,
        })
        .to_string()
    };
    let mut bytes = line("a", "fine").into_bytes();
    bytes.push(b'\n');
    let torn = line("b", "déploiement ✓ urgent");
    let cut = torn.find('✓').unwrap() + 1; // inside the 3-byte character
    bytes.extend_from_slice(&torn.as_bytes()[..cut]);
    bytes.push(b'\n');
    bytes.extend(line("c", "forged\nrow \u{1b}[31mred").into_bytes());
    bytes.push(b'\n');
    std::fs::write(state.join("history.jsonl"), bytes).unwrap();

    let run = t.exec(["history"]).success();
    assert!(run.stderr.contains("skipping line 2"), "{}", run.stderr);
    assert!(run.stdout.contains("forged\\nrow \\u{1b}[31mred"), "{}", run.stdout);
    assert!(!run.stdout.contains('\u{1b}'), "{}", run.stdout);
    let json = t.exec(["history", "--output", "json"]).success().json();
    assert_eq!(json["operations"].as_array().unwrap().len(), 2);
    // Appending still works after the torn line (and marking needs no running target).
    t.exec(["mark-good", "v1.0.0"]).success();
    let json = t.exec(["history", "--output", "json"]).success().json();
    assert_eq!(json["operations"].as_array().unwrap().len(), 3);
}

#[test]
fn a_journal_from_before_per_target_state_is_taken_over_by_its_target() {
    let repo = Repo::new("legacy");
    let t = Test::new().repo(&repo, "[target]\nkind = \"container\"\nname = \"web\"\n");
    let legacy = t
        .state_dir()
        .join(format!("{}_{}", crate::harness::registry(), repo.name).replace([':', '/'], "_"));
    std::fs::create_dir_all(&legacy).unwrap();
    let rec = |id: &str, target: Option<&str>, op: &str| {
        let mut v = serde_json::json!({"id": id, "at": "2026-01-01T00:00:00Z", "op": op, "phase": "started"});
        if let Some(t) = target {
            v["target"] = t.into();
        }
        v.to_string()
    };
    std::fs::write(
        legacy.join("history.jsonl"),
        [
            rec("a", Some("container web"), "deploy"),
            rec("b", Some("container worker"), "deploy"),
            rec("c", None, "mark-good"),
        ]
        .join("\n"),
    )
    .unwrap();
    let json = t.exec(["history", "--output", "json"]).success().json();
    let ids: Vec<&str> = json["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "c"]);
    assert!(t.target_state_dir("web").join("history.jsonl").is_file());
    assert!(t.target_state_dir("web").join("target.json").is_file());
}

#[test]
fn a_lost_commit_record_keeps_the_validated_version() {
    let repo = Repo::new("diskfull");
    repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0"));
    let c = Containers::new();
    let (name, port) = run_app(&format!("{}:v1.0.0", repo.image()), &c, &[]);
    let t = Test::new()
        .repo(&repo, &container_target(&name, port, ""))
        .env("BACKTRACK_TEST_FAULT", "journal-committed");
    let run = t.exec(["deploy", "v1.1.0"]).code(1);
    assert!(run.stderr.contains("no space left on device"), "{}", run.stderr);
    assert!(run.stderr.contains("stays in place"), "{}", run.stderr);
    assert_eq!(serves(port), "1.1.0");
    let aside = docker_ok(&["ps", "-aq", "--filter", &format!("name={name}-backtrack-prev")]);
    assert_eq!(aside, "", "the previous container was kept");

    // The next run records it as done instead of reverting it.
    let t = t.without_env("BACKTRACK_TEST_FAULT");
    let run = t.exec(["deploy", "v1.1.0"]).success();
    assert!(run.stderr.contains("recording it as done"), "{}", run.stderr);
    assert_eq!(serves(port), "1.1.0");
    let h = t.exec(["history", "--output", "json"]).success().json();
    let first = &h["operations"][0];
    assert_eq!(first["result"], "ok", "{h}");
    assert_eq!(first["to"]["version"], "1.1.0");
}

#[test]
fn settling_never_changes_a_restart_policy_it_did_not_save() {
    let repo = Repo::new("settlepolicy");
    repo.push(&AppImage::new("v1.0.0"));
    let c = Containers::new();
    let (name, port) = run_app(
        &format!("{}:v1.0.0", repo.image()),
        &c,
        &["--restart", "unless-stopped"],
    );
    let t = Test::new().repo(&repo, &container_target(&name, port, ""));
    let state = t.target_state_dir(&name);
    std::fs::create_dir_all(&state).unwrap();
    // An operation that started (no restart policy saved) and never finished.
    std::fs::write(
        state.join("history.jsonl"),
        serde_json::json!({
            "id": "x", "at": "2026-01-01T00:00:00Z", "op": "deploy", "phase": "started",
            "target": format!("container {name}"), "to": {"version": "1.1.0"}, "containers": [name],
        })
        .to_string()
            + "\n",
    )
    .unwrap();
    let run = t.exec(["deploy", "v1.0.0"]).success();
    assert!(run.stderr.contains("found an interrupted deploy"), "{}", run.stderr);
    assert_eq!(
        docker_ok(&["inspect", &name, "--format", "{{.HostConfig.RestartPolicy.Name}}"]),
        "unless-stopped"
    );
    assert_eq!(serves(port), "1.0.0");
}

#[test]
fn emergency_across_replicas_is_all_or_nothing() {
    let repo = Repo::new("emergreplicas");
    repo.push(&AppImage::new("v1.0.0"));
    // Only v1.1.0 knows the user replica 2 runs as: the emergency copy of it cannot start.
    repo.push(&AppImage::new("v1.1.0").user("appuser"));
    let c = Containers::new();
    let project = crate::harness::unique("btem").replace('-', "");
    let image = format!("{}:v1.1.0", repo.image());
    let cleanup = c.label();
    for (n, extra) in [(1, vec![]), (2, vec!["--user", "appuser"])] {
        let name = format!("{project}_web_{n}");
        let number = format!("com.docker.compose.container-number={n}");
        let proj = format!("com.docker.compose.project={project}");
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            &cleanup,
            "--label",
            &proj,
            "--label",
            "com.docker.compose.service=web",
            "--label",
            &number,
        ];
        args.extend(extra);
        args.push(&image);
        docker_ok(&args);
    }
    let t = Test::new().repo(
        &repo,
        &format!("[target]\nkind = \"compose\"\nproject = \"{project}\"\nname = \"web\"\n[health]\ntimeout = \"5s\"\n"),
    );
    t.exec(["mark-good", "v1.0.0"]).success();
    let ids_before: Vec<String> = [1, 2]
        .iter()
        .map(|n| docker_ok(&["inspect", &format!("{project}_web_{n}"), "--format", "{{.Id}}"]))
        .collect();
    let run = t.exec(["emergency", "--yes"]);
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("every original container"), "{}", run.stderr);
    for (n, id) in [1, 2].iter().zip(&ids_before) {
        let name = format!("{project}_web_{n}");
        // The very container that ran before, running again: no replica left on the other version.
        assert_eq!(&docker_ok(&["inspect", &name, "--format", "{{.Id}}"]), id);
        assert_eq!(docker_ok(&["inspect", &name, "--format", "{{.State.Running}}"]), "true");
    }
    let leftovers = docker(&["ps", "-aq", "--filter", &format!("name={project}_web_.*-backtrack")]);
    assert_eq!(String::from_utf8_lossy(&leftovers.stdout).trim(), "");
}
