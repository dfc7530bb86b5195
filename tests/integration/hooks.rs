//! Hooks, notifications, the migration guard and the incident record, against the real engine
//! and registry: hooks failing in each phase, a webhook receiver that records what it gets (and
//! one that is down), the guard with and without `--force`, `history show`.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use crate::harness::{AppImage, Containers, Repo, Test, free_port, http_get, run_app};

fn serves(port: u16) -> String {
    http_get(&format!("http://127.0.0.1:{port}/health"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn target(name: &str, port: u16, more: &str) -> String {
    format!(
        "[target]\nkind = \"container\"\nname = \"{name}\"\n[health]\nhttp = \"http://127.0.0.1:{port}/health\"\ntimeout = \"10s\"\n{more}"
    )
}

fn last_number(t: &Test) -> usize {
    let h = t.exec(["history", "--output", "json", "--limit", "0"]).success().json();
    h["operations"].as_array().unwrap().len()
}

#[test]
fn hooks_run_around_a_swap_and_each_phase_can_stop_it() {
    let repo = Repo::new("hooks");
    for v in ["v1.0.0", "v1.1.0", "v1.2.0"] {
        repo.push(&AppImage::new(v));
    }
    repo.push(&AppImage::new("v1.3.0").crash(3));
    let c = Containers::new();
    let (name, port) = run_app(&format!("{}:v1.0.0", repo.image()), &c, &[]);
    let hooks = r#"[hooks]
pre = ["/bin/sh", "-c", "test -f fail-pre && exit 3; echo hello-from-pre; echo \"pre $BACKTRACK_OP $BACKTRACK_FROM_VERSION $BACKTRACK_TO_VERSION $BACKTRACK_TARGET\" >> hooks.log"]
post = ["/bin/sh", "-c", "test -f fail-post && { echo smoke test failed >&2; exit 4; }; echo post >> hooks.log"]
on_revert = ["/bin/sh", "-c", "echo \"on_revert $BACKTRACK_RESULT $BACKTRACK_TO_VERSION\" >> hooks.log"]
timeout = "10s"
"#;
    let t = Test::new().repo(&repo, &target(&name, port, hooks));
    let log = || std::fs::read_to_string(t.dir.path().join("hooks.log")).unwrap_or_default();

    let run = t.exec(["deploy", "v1.1.0"]).success();
    assert!(run.stderr.contains("[pre hook] hello-from-pre"), "{}", run.stderr);
    assert_eq!(log(), format!("pre deploy 1.0.0 1.1.0 container {name}\npost\n"));

    // A failing post hook counts as failed validation: reverted, exit 6, on_revert told.
    std::fs::write(t.dir.path().join("fail-post"), "").unwrap();
    let run = t.exec(["deploy", "v1.2.0"]).code(6);
    assert!(run.stderr.contains("[post hook] smoke test failed"), "{}", run.stderr);
    assert_eq!(serves(port), "1.1.0");
    assert!(log().ends_with("on_revert reverted 1.2.0\n"), "{}", log());
    let shown = t.exec(["history", "show", &last_number(&t).to_string()]).success();
    assert!(
        shown.stdout.contains("post hook `/bin/sh`: it exited with code 4"),
        "{}",
        shown.stdout
    );
    std::fs::remove_file(t.dir.path().join("fail-post")).unwrap();

    // A failing pre hook stops everything before it starts, and is recorded.
    std::fs::write(t.dir.path().join("fail-pre"), "").unwrap();
    let run = t.exec(["deploy", "v1.2.0"]).code(1);
    assert!(run.stderr.contains("pre hook"), "{}", run.stderr);
    assert!(run.stderr.contains("nothing was changed"), "{}", run.stderr);
    assert_eq!(serves(port), "1.1.0");
    let h = t.exec(["history", "--output", "json"]).success().json();
    let last = h["operations"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["result"], "failed");

    // --no-hooks skips them, and says so in the journal.
    t.exec(["deploy", "v1.2.0", "--no-hooks"]).success();
    assert_eq!(serves(port), "1.2.0");
    let shown = t.exec(["history", "show", &last_number(&t).to_string()]).success();
    assert!(shown.stdout.contains("hooks skipped (--no-hooks)"), "{}", shown.stdout);

    // The incident record of a revert holds the failed container's last lines.
    let run = t
        .exec(["deploy", "v1.3.0", "--no-hooks", "--reason", "try the\nnew one"])
        .code(6);
    assert!(run.stderr.contains("boom"), "{}", run.stderr);
    let n = last_number(&t);
    let shown = t.exec(["history", "show", &n.to_string()]).success();
    for want in [
        &format!("operation {n}: deploy of container {name}"),
        "reason      try the\\nnew one",
        "result      reverted",
        "last lines of the failed container:",
        "| boom",
        "sha256:",
    ] {
        assert!(shown.stdout.contains(want), "{want:?} missing:\n{}", shown.stdout);
    }
    let json = t
        .exec(["history", "show", &n.to_string(), "--output", "json"])
        .success()
        .json();
    assert_eq!(json["number"], n);
    assert!(json["logs"].as_array().unwrap().iter().any(|l| l == "boom"), "{json}");
    t.exec(["history", "show", "999"]).code(2);
}

/// A webhook receiver on loopback: answers 200 and keeps every request body.
pub(crate) fn receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(20) {
            let Ok(mut conn) = conn else { continue };
            conn.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then the body by Content-Length.
            let body = loop {
                let n = conn.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break String::new();
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(at) = text.find("\r\n\r\n") {
                    let len: usize = text[..at]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= at + 4 + len {
                        break String::from_utf8_lossy(&buf[at + 4..at + 4 + len]).to_string();
                    }
                }
            };
            keep.lock().unwrap().push(body);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (port, got)
}

#[test]
fn notifications_reach_the_webhook_and_a_dead_one_is_only_a_warning() {
    let repo = Repo::new("notify");
    repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0"));
    let c = Containers::new();
    let (name, port) = run_app(&format!("{}:v1.0.0", repo.image()), &c, &[]);
    let (hook_port, got) = receiver();
    let t = Test::new().repo(
        &repo,
        &target(
            &name,
            port,
            &format!("[notify]\nwebhook = \"http://127.0.0.1:{hook_port}/T000/B000/secret-token\"\n"),
        ),
    );
    t.exec(["deploy", "v1.1.0"]).success();
    t.exec(["rollback", "--yes", "--reason", "exchange errors"]).success();
    let bodies = got.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    let last: serde_json::Value = serde_json::from_str(&bodies[1]).unwrap();
    let text = last["text"].as_str().unwrap();
    assert!(text.starts_with(&format!("container {name}: rolled back ")), "{text}");
    assert!(text.contains(" 1.1.0 -> 1.0.0 by "), "{text}");
    assert!(text.contains(": exchange errors, validated in "), "{text}");
    assert_eq!(last["op"], "rollback");
    assert_eq!(last["result"], "ok");
    assert_eq!(last["to_version"], "1.0.0");
    assert!(
        !bodies[1].contains("secret-token"),
        "the webhook's own URL is not in the payload"
    );
    let shown = t.exec(["history", "show", "2"]).success();
    assert!(shown.stdout.contains("notified 127.0.0.1"), "{}", shown.stdout);
    assert!(!shown.stdout.contains("secret-token"), "{}", shown.stdout);

    // A receiver that is down: the rollback still succeeds, with a warning and a journal note.
    let dead = free_port();
    let t2 = Test::new()
        .repo(
            &repo,
            &target(
                &name,
                port,
                &format!("[notify]\nwebhook = \"http://127.0.0.1:{dead}/hook\"\n"),
            ),
        )
        .env("BACKTRACK_STATE_DIR", t.state_dir().to_str().unwrap());
    let run = t2.exec(["deploy", "v1.1.0"]).success();
    assert!(
        run.stderr.contains("warning: could not notify 127.0.0.1"),
        "{}",
        run.stderr
    );
    assert_eq!(serves(port), "1.1.0");
    let shown = t2.exec(["history", "show", "3"]).success();
    assert!(shown.stdout.contains("could not notify"), "{}", shown.stdout);

    // A receiver that accepts and never answers: bounded by [notify] timeout, only a warning.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let t3 = Test::new()
        .repo(
            &repo,
            &target(
                &name,
                port,
                &format!("[notify]\nwebhook = \"http://127.0.0.1:{silent_port}/hook\"\ntimeout = \"1s\"\n"),
            ),
        )
        .env("BACKTRACK_STATE_DIR", t.state_dir().to_str().unwrap());
    let started = std::time::Instant::now();
    let run = t3.exec(["rollback", "--yes"]).success();
    assert!(run.stderr.contains("no answer within 1s"), "{}", run.stderr);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(serves(port), "1.0.0");
    drop(silent);
}

#[test]
fn the_migration_guard_refuses_a_rollback_below_the_floor_unless_forced() {
    let repo = Repo::new("guard");
    repo.push(&AppImage::new("v1.1.0"));
    repo.push(&AppImage::new("v1.2.0").label("io.backtrack.min-rollback", "1.2.0"));
    let c = Containers::new();
    let (name, port) = run_app(&format!("{}:v1.2.0", repo.image()), &c, &[]);
    let t = Test::new().repo(&repo, &target(&name, port, ""));
    let run = t.exec(["rollback", "v1.1.0", "--yes"]).code(2);
    assert!(
        run.stderr.contains("io.backtrack.min-rollback = \"1.2.0\"") && run.stderr.contains("running version 1.2.0"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--force --reason"), "{}", run.stderr);
    assert_eq!(serves(port), "1.2.0");
    let versions = t.exec(["versions", "--output", "json"]).success().json();
    let marks = |tag: &str| {
        versions["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["tag"] == tag)
            .unwrap()["marks"]
            .to_string()
    };
    assert!(marks("v1.1.0").contains("below-min-rollback-1.2.0"), "{versions}");
    assert!(!marks("v1.2.0").contains("below-min-rollback"), "{versions}");
    // --force needs a reason.
    t.exec(["rollback", "v1.1.0", "--yes", "--force"]).code(2);
    let run = t
        .exec([
            "rollback",
            "v1.1.0",
            "--yes",
            "--force",
            "--reason",
            "data verified compatible",
        ])
        .success();
    assert!(run.stderr.contains("going below the migration floor"), "{}", run.stderr);
    assert_eq!(serves(port), "1.1.0");
}
