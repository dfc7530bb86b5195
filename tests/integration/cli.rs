//! The command line itself: dynamic shell completion against a real registry, `--version` with
//! the commit, the manual page.

use crate::harness::{AppImage, Repo, Test};

#[test]
fn completing_deploy_offers_selector_words_and_the_registrys_versions() {
    let repo = Repo::new("complete");
    repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0"));
    let t = Test::new().repo(&repo, "").env("COMPLETE", "fish");
    for cmd in ["deploy", "rollback", "mark-good", "drill"] {
        let run = t.exec(["--", "backtrack", cmd, ""]).success();
        let offered: Vec<&str> = run.stdout.lines().map(|l| l.split('\t').next().unwrap()).collect();
        for want in ["previous", "lkg", "latest-version", "v1.1.0", "v1.0.0"] {
            assert!(offered.contains(&want), "{cmd}: {want} not offered: {offered:?}");
        }
        // Highest version first.
        let at = |v: &str| offered.iter().position(|o| *o == v).unwrap();
        assert!(at("v1.1.0") < at("v1.0.0"), "{offered:?}");
    }
    let run = t.exec(["--", "backtrack", "depl"]).success();
    assert!(run.stdout.lines().any(|l| l.starts_with("deploy\t")), "{}", run.stdout);
    // With the registry down, the words are still offered, and quickly.
    let dead = Test::new()
        .config("[registry]\nurl = \"127.0.0.1:1\"\nrepository = \"app\"\n")
        .env("COMPLETE", "fish");
    let started = std::time::Instant::now();
    let run = dead.exec(["--", "backtrack", "deploy", ""]).success();
    assert!(
        run.stdout.lines().any(|l| l.starts_with("previous\t")),
        "{}",
        run.stdout
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn completions_print_a_script_that_calls_backtrack_back() {
    let t = Test::new();
    for shell in ["bash", "zsh", "fish"] {
        let run = t.exec(["completions", shell]).success();
        assert!(run.stdout.contains("COMPLETE"), "{shell}: {}", run.stdout);
        assert!(run.stdout.contains("backtrack"), "{shell}: {}", run.stdout);
    }
}

#[test]
fn version_names_the_commit_and_the_man_page_renders() {
    let t = Test::new();
    let run = t.exec(["--version"]).success();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let commit = String::from_utf8_lossy(&commit.stdout).trim().to_string();
    assert_eq!(
        run.stdout.trim(),
        format!("backtrack {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
    let man = t.exec(["man"]).success();
    assert!(
        man.stdout.contains(".TH backtrack 1"),
        "{}",
        &man.stdout[..200.min(man.stdout.len())]
    );
    for sub in ["rollback", "emergency", "prune"] {
        assert!(man.stdout.contains(sub), "{sub} missing from the man page");
    }
}
