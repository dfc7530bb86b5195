//! Rollbacks that never wait for a pull (`warm`, and the warm after every validated swap) and
//! hosts that never fill up (`prune --local`), on the real engine and registry.

use crate::harness::{AppImage, Containers, Repo, Test, docker, run_app};

fn target(name: &str, port: u16, more: &str) -> String {
    format!(
        "[target]\nkind = \"container\"\nname = \"{name}\"\n[health]\nhttp = \"http://127.0.0.1:{port}/health\"\ntimeout = \"20s\"\n{more}"
    )
}

/// Removes a version's image from this host (its container is gone), as `docker image prune -a`
/// would: every reference of this repository to it (other repositories' names are left alone:
/// test images of the same version are the same image).
fn drop_local(repo: &Repo, tag: &str, digest: &str) {
    docker(&["rmi", &format!("{}:{tag}", repo.image())]);
    docker(&["rmi", &format!("{}@{digest}", repo.image())]);
    assert!(!present(repo, digest), "{tag} still here");
}

fn present(repo: &Repo, digest: &str) -> bool {
    docker(&["image", "inspect", &format!("{}@{digest}", repo.image())])
        .status
        .success()
}

#[test]
fn after_a_validated_deploy_rollback_to_previous_never_pulls() {
    let repo = Repo::new("warm");
    let v1 = repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0"));
    repo.push(&AppImage::new("v1.2.0"));
    let c = Containers::new();
    let (name, port) = run_app(&format!("{}:v1.0.0", repo.image()), &c, &[]);
    let t = Test::new().repo(&repo, &target(&name, port, ""));
    t.exec(["deploy", "v1.1.0", "--no-warm"]).success();

    // The previous version's image went (an image prune): status says a rollback would pull.
    drop_local(&repo, "v1.0.0", &v1);
    let status = t.exec(["status"]).success();
    assert!(
        status.stdout.contains("rollback to previous 1.0.0: needs a pull"),
        "{}",
        status.stdout
    );
    let warmed = t.exec(["warm", "--output", "json"]).success().json();
    let prev = &warmed["candidates"][0];
    assert_eq!(prev["label"], "previous");
    assert!(prev["pulled_ms"].is_u64(), "{warmed}");
    assert!(present(&repo, &v1));
    let status = t.exec(["status"]).success();
    assert!(
        status
            .stdout
            .contains("rollback to previous 1.0.0: rollback ready: instant"),
        "{}",
        status.stdout
    );
    let again = t.exec(["warm", "--output", "json"]).success().json();
    assert_eq!(again["candidates"][0]["present"], true);

    // A validated deploy warms the new candidates by itself: last_known_good here.
    t.exec(["mark-good", "v1.0.0"]).success();
    drop_local(&repo, "v1.0.0", &v1);
    docker(&["rmi", "-f", &format!("backtrack/{}:lkg", repo.name)]);
    let run = t.exec(["deploy", "v1.2.0"]).success();
    assert!(run.stderr.contains("warmed last_known_good 1.0.0"), "{}", run.stderr);
    let rolled = t
        .exec(["rollback", "lkg", "--yes", "--output", "json"])
        .success()
        .json();
    assert_eq!(rolled["pulled"], false, "{rolled}");
    assert_eq!(rolled["to"]["version"], "1.0.0");
}

#[test]
fn prune_local_keeps_every_candidate_and_removes_the_rest() {
    let repo = Repo::new("prunelocal");
    let mut digests = Vec::new();
    // Images of this test's own (every test's 1.0.0 is otherwise the same image, and another
    // test's container running it would keep it here "in use").
    for v in ["v1.0.0", "v2.0.0", "v3.0.0", "v4.0.0", "v5.0.0"] {
        digests.push(repo.push(&AppImage::new(v).label("io.backtrack.test", &repo.name)));
    }
    let c = Containers::new();
    let (name, port) = run_app(&format!("{}:v1.0.0", repo.image()), &c, &[]);
    let t = Test::new().repo(&repo, &target(&name, port, "[retention]\nlocal_keep = 1\n"));
    for v in ["v2.0.0", "v3.0.0", "v4.0.0", "v5.0.0"] {
        t.exec(["deploy", v, "--no-warm"]).success();
    }
    t.exec(["mark-good", "v2.0.0"]).success();

    let plan = t
        .exec(["prune", "--local", "--dry-run", "--output", "json"])
        .success()
        .json();
    let decision = |tag: &str| -> (bool, String) {
        let d = plan["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| {
                d["refs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r.as_str().unwrap().ends_with(&format!(":{tag}")))
            })
            .unwrap_or_else(|| panic!("{tag} not in the plan: {plan}"));
        (d["keep"].as_bool().unwrap(), d["reasons"].to_string())
    };
    let (keep5, why5) = decision("v5.0.0");
    assert!(keep5 && why5.contains(&format!("used by container {name}")), "{why5}");
    let (keep4, why4) = decision("v4.0.0");
    assert!(keep4 && why4.contains("rollback candidate: previous"), "{why4}");
    let (keep2, why2) = decision("v2.0.0");
    assert!(keep2 && why2.contains("last_known_good points at it"), "{why2}");
    assert!(!decision("v3.0.0").0, "{plan}");
    assert!(!decision("v1.0.0").0, "{plan}");
    assert!(present(&repo, &digests[2]), "a dry run removes nothing");

    let run = t.exec(["prune", "--local", "--yes"]).success();
    assert!(run.stdout.contains("2 removed"), "{}", run.stdout);
    assert!(!present(&repo, &digests[0]) && !present(&repo, &digests[2]));
    for kept in [1, 3, 4] {
        assert!(present(&repo, &digests[kept]), "v{}.0.0 was removed", kept + 1);
    }
    // Another repository's images were never looked at; the rollback needs no pull.
    let rolled = t.exec(["rollback", "--yes", "--output", "json"]).success().json();
    assert_eq!(
        (rolled["to"]["version"].as_str(), rolled["pulled"].as_bool()),
        (Some("4.0.0"), Some(false))
    );
}
