//! Retention against a real registry: the plan is exactly right, the registry holds exactly the
//! kept set afterwards, protected images survive, a second run deletes nothing, and a registry
//! with deletes disabled gets a clear error. Plus the shipped policies pass `policy check`.

use std::collections::BTreeMap;

use crate::harness::{AppImage, Containers, OwnRegistry, Repo, Test, docker_ok};

const POLICY: &str = r#"
description = "test policy"
[protect]
history = 2
tags = ["stable"]
[[keep]]
newest = 3
[[keep]]
newest_per = "minor"
count = 1
[prereleases]
newest = 1
[other_tags]
prune = ["sha-*"]
"#;

fn days_ago(n: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::days(n)).to_rfc3339()
}

#[test]
fn prune_deletes_exactly_what_the_plan_says_and_never_what_is_protected() {
    let repo = Repo::new("prune");
    // Two real, runnable versions: the target runs v1.0.0 after going 1.0.0 -> 1.1.0 -> 1.0.0.
    let v100 = repo.push(&AppImage::new("v1.0.0"));
    let v110 = repo.push(&AppImage::new("v1.1.0"));
    let mut synthetic = BTreeMap::new();
    for (tags, age) in [
        (&["v0.1.0"][..], 400),
        (&["v0.1.1"], 390),
        (&["v0.1.2"], 380),
        (&["v0.1.3"], 370),
        (&["v1.2.0"], 90),
        (&["v1.2.1"], 80),
        (&["v1.3.0", "stable"], 70),
        (&["v1.3.1"], 60),
        (&["v1.3.2"], 50),
        (&["v1.4.0"], 40),
        (&["v1.4.1"], 30),
        (&["v1.5.0"], 20),
        (&["v1.5.1", "latest"], 10),
        (&["v2.0.0-rc.1"], 5),
        (&["v2.0.0-rc.2"], 4),
        (&["sha-0a1b2c3"], 3),
        (&["nightly"], 2),
    ] {
        synthetic.insert(tags[0], repo.push_synthetic(tags, &days_ago(age)));
    }
    let containers = Containers::new();
    let (name, port) = crate::harness::run_app(&format!("{}:v1.0.0", repo.image()), &containers, &[]);
    let t = Test::new().repo(
        &repo,
        &format!(
            "[target]\nkind = \"container\"\nname = \"{name}\"\n[health]\nhttp = \"http://127.0.0.1:{port}/health\"\ntimeout = \"20s\"\n[retention]\npolicy = \"policy.toml\"\n"
        ),
    );
    std::fs::write(t.dir.path().join("policy.toml"), POLICY).unwrap();
    t.exec(["deploy", "v1.1.0"]).success();
    t.exec(["deploy", "v1.0.0"]).success();
    // last_known_good shares its digest with v1.5.0: deleting by digest must not happen to it.
    t.exec(["mark-good", "v1.5.0"]).success();

    let plan = t.exec(["prune", "--dry-run", "--output", "json"]).success().json();
    let decided: BTreeMap<String, String> = plan["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["tags"][0].as_str().unwrap().to_string(),
                d["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected_deletes = [
        "v0.1.0",
        "v0.1.1",
        "v0.1.2",
        "v1.2.0",
        "v1.3.1",
        "v1.4.0",
        "v2.0.0-rc.1",
        "sha-0a1b2c3",
    ];
    for (tag, action) in &decided {
        let want = if expected_deletes.contains(&tag.as_str()) {
            "delete"
        } else {
            "keep"
        };
        assert_eq!(action, want, "{tag}: {plan:#}");
    }
    assert_eq!(decided.len(), 19, "every image is in the plan: {decided:?}");
    assert_eq!(plan["deleted"], 8);
    let reasons = |tag: &str| -> String {
        plan["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["tags"][0] == tag)
            .unwrap()["reasons"]
            .to_string()
    };
    assert!(
        reasons("v1.0.0").contains("the target runs it now"),
        "{}",
        reasons("v1.0.0")
    );
    assert!(
        reasons("v1.1.0").contains("among the last 2 versions deployed"),
        "{}",
        reasons("v1.1.0")
    );
    assert!(
        reasons("v1.5.0").contains("tagged last_known_good"),
        "{}",
        reasons("v1.5.0")
    );
    assert!(reasons("v1.3.0").contains("protect.tags"), "{}", reasons("v1.3.0"));
    assert!(reasons("nightly").contains("not a version"), "{}", reasons("nightly"));
    assert!(reasons("v1.4.0").contains("v1.4.0 is #4"), "{}", reasons("v1.4.0"));
    let table = t.exec(["prune", "--dry-run"]).success();
    assert!(
        table.stdout.contains("8 to delete") && table.stdout.contains("dry run: nothing was deleted"),
        "{}",
        table.stdout
    );
    assert_eq!(repo.tags().len(), 22, "a dry run deletes nothing");

    let refused = t.exec(["prune"]).code(2);
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
    let run = t.exec(["prune", "--yes"]).success();
    assert!(run.stdout.contains("8 deleted"), "{}", run.stdout);

    let mut want: Vec<String> = [
        "v1.0.0",
        "v1.1.0",
        "v0.1.3",
        "v1.2.1",
        "v1.3.0",
        "stable",
        "v1.3.2",
        "v1.4.1",
        "v1.5.0",
        "last_known_good",
        "v1.5.1",
        "latest",
        "v2.0.0-rc.2",
        "nightly",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    want.sort();
    assert_eq!(repo.tags(), want, "the registry holds exactly the kept set");
    assert_eq!(
        repo.tag_digest("last_known_good").as_deref(),
        Some(synthetic["v1.5.0"].as_str())
    );
    assert_eq!(repo.tag_digest("v1.0.0").as_deref(), Some(v100.as_str()));
    assert_eq!(repo.tag_digest("v1.1.0").as_deref(), Some(v110.as_str()));
    docker_ok(&["pull", &format!("{}@{v100}", repo.image())]);

    let again = t.exec(["prune", "--yes", "--output", "json"]).success().json();
    assert_eq!(again["deleted"], 0, "a second run deletes nothing");
    let history = t.exec(["history", "--output", "json"]).success().json();
    let last = history["operations"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["op"], "prune");
    assert!(last["detail"].as_str().unwrap().contains("deleted 8"), "{last}");
}

#[test]
fn prune_output_says_created_sizes_every_image_warns_about_recent_deploys_and_how_space_is_freed() {
    let repo = Repo::new("pruneout");
    repo.push(&AppImage::new("v1.0.0"));
    repo.push(&AppImage::new("v1.1.0"));
    repo.push_synthetic(&["v1.2.0"], &days_ago(3));
    repo.push_synthetic(&["v0.9.0"], &days_ago(30));
    let containers = Containers::new();
    let (name, port) = crate::harness::run_app(&format!("{}:v1.0.0", repo.image()), &containers, &[]);
    // A fresh sandbox: its image cache is empty, so sizes come from the registry, not the cache.
    let t = Test::new().repo(
        &repo,
        &format!(
            "[target]\nkind = \"container\"\nname = \"{name}\"\n[health]\nhttp = \"http://127.0.0.1:{port}/health\"\ntimeout = \"20s\"\n"
        ),
    );
    // No [protect] history: the version deployed a moment ago is not protected.
    std::fs::write(
        t.dir.path().join("p.toml"),
        "[[keep]]\nnewest = 1\n[[keep]]\ntags = [\"v1.2.*\"]\n",
    )
    .unwrap();
    t.exec(["deploy", "v1.1.0"]).success();
    t.exec(["deploy", "v1.0.0"]).success();

    let plan = t
        .exec(["prune", "--policy", "p.toml", "--dry-run", "--output", "json"])
        .success()
        .json();
    let decisions = plan["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 4, "{plan:#}");
    for d in decisions {
        assert!(d["size"].as_u64().is_some_and(|s| s > 0), "every size is known: {d}");
        assert!(d["created"].is_string() && d["pushed"].is_null(), "{d}");
    }
    let deleted_size: u64 = decisions
        .iter()
        .filter(|d| d["action"] == "delete")
        .map(|d| d["size"].as_u64().unwrap())
        .sum();
    assert_eq!(plan["bytes_freed"].as_u64(), Some(deleted_size), "{plan:#}");
    let warnings = plan["warnings"].to_string();
    assert!(
        warnings.contains("deletes 1.1.0, #2 of the versions this target deployed last"),
        "{warnings}"
    );

    let table = t.exec(["prune", "--policy", "p.toml", "--dry-run"]).success().stdout;
    let header = table.lines().next().unwrap();
    assert!(header.contains("CREATED") && !header.contains("PUSHED"), "{table}");
    assert!(
        table.contains("`registry garbage-collect /etc/docker/registry/config.yml`"),
        "{table}"
    );
    assert!(table.contains("warning: deletes 1.1.0"), "{table}");
    // One line per image by default; --explain gives every reason its own line.
    let v110 = table.lines().find(|l| l.contains("v1.1.0")).unwrap();
    assert!(v110.ends_with("keep 1 (newest 1): v1.1.0 is #2 (+1 more)"), "{table}");
    let explained = t
        .exec(["prune", "--policy", "p.toml", "--dry-run", "--explain"])
        .success()
        .stdout;
    let at = explained.lines().position(|l| l.contains("v1.1.0")).unwrap();
    assert!(
        explained
            .lines()
            .nth(at)
            .unwrap()
            .ends_with("keep 1 (newest 1): v1.1.0 is #2"),
        "{explained}"
    );
    assert_eq!(
        explained.lines().nth(at + 1).unwrap().trim(),
        "keep 2 (tags v1.2.*): no tag matches",
        "{explained}"
    );
}

#[test]
fn prune_on_a_registry_with_deletes_disabled_says_how_to_enable_them() {
    let own = OwnRegistry::start(false);
    let repo = Repo::in_registry("nodelete", &own.addr);
    repo.push_synthetic(&["v1.0.0"], &days_ago(10));
    repo.push_synthetic(&["v2.0.0"], &days_ago(1));
    let t = Test::new().repo(&repo, "");
    std::fs::write(t.dir.path().join("p.toml"), "[[keep]]\nnewest = 1\n").unwrap();
    let run = t.exec(["prune", "--policy", "p.toml", "--yes"]).code(3);
    assert!(
        run.stderr.contains("the registry has deletes disabled"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("delete: enabled: true"), "{}", run.stderr);
    assert_eq!(repo.tags(), ["v1.0.0", "v2.0.0"]);
}

#[test]
fn shipped_policies_pass_policy_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("retention-policies");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert_eq!(names, ["ci-heavy.toml", "conservative.toml", "default.toml"]);
    for n in names {
        let path = dir.join(&n);
        let run = Test::new()
            .exec(["policy", "check", path.to_str().unwrap(), "--output", "json"])
            .success();
        let json = run.json();
        assert_eq!(json["valid"], true, "{n}");
        assert!(json["description"].is_string(), "{n} has a description");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# For "),
            "{n} starts with a comment saying who it is for"
        );
    }
}

#[test]
fn policy_check_locates_mistakes() {
    let t = Test::new();
    let path = t.dir.path().join("bad.toml");
    std::fs::write(&path, "[[keep]]\nnewest = 5\n\n[[keep]]\nnewest_per = \"minor\"\n").unwrap();
    let run = t.exec(["policy", "check", path.to_str().unwrap()]).code(2);
    assert!(
        run.stderr.contains(&format!(
            "{}:4:1: [[keep]] rule 2: newest_per needs count",
            path.display()
        )),
        "{}",
        run.stderr
    );
}

#[test]
fn policy_import_ecr_writes_a_policy_that_checks() {
    let t = Test::new();
    let json = t.dir.path().join("ecr.json");
    std::fs::write(
        &json,
        r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","tagPrefixList":["v"],"countType":"imageCountMoreThan","countNumber":15},"action":{"type":"expire"}}]}"#,
    )
    .unwrap();
    let run = t.exec(["policy", "import-ecr", json.to_str().unwrap()]).success();
    // ECR counts by push time, which no backtrack rule does: every v* image is kept, and said.
    assert!(run.stdout.contains("tags = [\"v*\"]\n"), "{}", run.stdout);
    assert!(
        run.stderr.contains("cannot count by push time") && run.stderr.contains("`newest = 15`"),
        "{}",
        run.stderr
    );
    let out = t.dir.path().join("imported.toml");
    std::fs::write(&out, &run.stdout).unwrap();
    t.exec(["policy", "check", out.to_str().unwrap()]).success();
}
