//! `backtrack versions` against a real registry.

use std::time::{Duration, Instant};

use crate::harness::{AppImage, Repo, Test};

#[test]
fn versions_lists_real_images_in_semver_order() {
    let repo = Repo::new("versions");
    for v in ["v1.9.0", "v1.10.0-rc.1", "v2.0.0-rc.1"] {
        repo.push(&AppImage::new(v));
    }
    repo.push(&AppImage::new("v1.10.0").revision("abc1234def5678").tag("latest"));
    let t = Test::new().repo(&repo, "");

    let run = t.exec(["versions"]).success();
    let order: Vec<&str> = run
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        order,
        ["v2.0.0-rc.1", "v1.10.0", "v1.10.0-rc.1", "v1.9.0"],
        "{}",
        run.stdout
    );
    insta::with_settings!({filters => crate::redactions()}, {
        insta::assert_snapshot!("versions_table", run.stdout);
    });

    let json = t.exec(["versions", "--all", "--output", "json"]).success().json();
    let tags: Vec<&str> = json["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tag"].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["v2.0.0-rc.1", "v1.10.0", "v1.10.0-rc.1", "v1.9.0", "latest"]);
    assert_eq!(json["total_versions"], 4);
    assert_eq!(json["tags"][1]["revision"], "abc1234def5678");
    assert_eq!(
        json["tags"][1]["digest"], json["tags"][4]["digest"],
        "latest and v1.10.0 are one image"
    );
    assert!(json["tags"][4]["version"].is_null());
}

#[test]
fn versions_limit_and_footer() {
    let repo = Repo::new("limit");
    for v in ["v0.1.0", "v0.2.0", "v0.3.0"] {
        repo.push(&AppImage::new(v));
    }
    let run = Test::new()
        .repo(&repo, "")
        .args(["versions", "--limit", "2"])
        .run()
        .success();
    assert!(run.stdout.contains("v0.3.0") && run.stdout.contains("v0.2.0") && !run.stdout.contains("v0.1.0"));
    assert!(run.stdout.contains("(2 of 3 versions shown"), "{}", run.stdout);
}

#[test]
fn versions_of_a_dead_registry_fails_fast_with_exit_3() {
    let t = Test::new().config("[registry]\nurl = \"127.0.0.1:1\"\nrepository = \"app\"\n");
    let start = Instant::now();
    let run = t.exec(["versions"]).code(3);
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(
        run.stderr
            .contains("failed to list tags of 127.0.0.1:1/app: reach registry 127.0.0.1:1"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("hint: is the registry running"), "{}", run.stderr);
}

#[test]
fn versions_of_a_missing_repository_says_so() {
    let repo = Repo::new("never-pushed");
    let run = Test::new().repo(&repo, "").args(["versions"]).run().code(3);
    assert!(run.stderr.contains("it does not exist"), "{}", run.stderr);
}

#[test]
fn config_with_unknown_key_names_file_line_and_column() {
    let t = Test::new().config("[registry]\nurl = \"127.0.0.1:5000\"\nrepository = \"a\"\ncolour = \"red\"\n");
    let run = t.exec(["versions"]).code(2);
    let path = t.config_path();
    assert!(
        run.stderr
            .contains(&format!("{}:4:1: unknown field `colour`", path.display())),
        "{}",
        run.stderr
    );
}

#[test]
fn missing_config_names_the_fix() {
    let run = Test::new().args(["versions"]).run().code(2);
    assert!(run.stderr.contains("find backtrack.toml in"), "{}", run.stderr);
    assert!(run.stderr.contains("--config FILE"), "{}", run.stderr);
}

/// `s3cret`, hashed with bcrypt as htpasswd wants it.
const HTPASSWD: &str = "ci:$2b$12$osA6IjKEnVJDsMQ8YfiRQ.VID6VJ/Dinz2.BT8eZE39p/qUU/z1.O";

#[test]
fn a_registry_that_wants_credentials_gets_them_from_the_docker_config() {
    use base64::Engine as _;
    let own = crate::harness::OwnRegistry::start_with(true, Some(HTPASSWD));
    let mut repo = Repo::in_registry("auth", &own.addr);
    repo.basic = Some(("ci".into(), "s3cret".into()));
    repo.push_synthetic(&["v1.0.0"], "2026-01-01T00:00:00Z");

    // No credentials: one clear line, the registry's exit code, and how to log in.
    let t = Test::new().repo(&repo, "");
    let run = t.exec(["versions"]).code(3);
    assert!(
        run.stderr.contains(&format!("authenticate to registry {}", own.addr)),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("hint: log in with `docker login {}`", own.addr)),
        "{}",
        run.stderr
    );

    // `docker login` leaves an `auths` entry: backtrack uses it.
    let docker_config = t.dir.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("ci:s3cret");
    std::fs::write(
        docker_config.join("config.json"),
        format!("{{\"auths\": {{\"{}\": {{\"auth\": \"{auth}\"}}}}}}", own.addr),
    )
    .unwrap();
    let json = t.exec(["versions", "--output", "json"]).success().json();
    assert_eq!(json["tags"][0]["tag"], "v1.0.0");
    let marked = t.exec(["mark-good", "v1.0.0", "--output", "json"]).success().json();
    assert_eq!(
        marked["marked"]["version"], "1.0.0",
        "pushing (the retag) authenticates too"
    );
}
