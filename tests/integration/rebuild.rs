//! The Git fallback on real services: a version whose image is gone is rebuilt from its Git tag
//! in a scratch worktree, pushed and deployed, with the user's checkout untouched; `build`
//! makes versioned images; missing tags and failing builds give clear errors.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{AppImage, Containers, Repo, Test, docker_ok, free_port, http_get, wait_http};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git (apt-get install git)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const DOCKERFILE: &str = r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox","--install","-s","/bin"]
ARG VERSION=unknown
COPY message.txt /www/message.txt
RUN ["/bin/sh","-c","echo ${VERSION#v} > /www/health"]
ENV APP_VERSION=${VERSION}
CMD ["/bin/sh","-c","trap 'kill $pid; exit 0' TERM; httpd -f -p 8080 -h /www & pid=$!; wait $pid"]
"#;

/// A Git repository of the app with tags v1.0.0 and v1.1.0 (and more the test adds).
pub(crate) fn app_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    git(p, &["init", "-q", "-b", "main"]);
    std::fs::copy("/bin/busybox", p.join("busybox")).unwrap();
    std::fs::write(p.join("Dockerfile"), DOCKERFILE).unwrap();
    for v in ["v1.0.0", "v1.1.0"] {
        std::fs::write(p.join("message.txt"), format!("hello from {v}\n")).unwrap();
        git(p, &["add", "-A"]);
        git(p, &["commit", "-q", "-m", &format!("release {v}")]);
        git(p, &["tag", v]);
    }
    dir
}

fn config(repo: &Repo, app: &Path, name: &str, port: u16) -> String {
    format!(
        "[target]\nkind = \"container\"\nname = \"{name}\"\n[health]\nhttp = \"http://127.0.0.1:{port}/health\"\ntimeout = \"20s\"\n[rebuild]\nrepo = \"{}\"\n",
        app.display()
    )
    .replace("{repo}", &repo.name)
}

#[test]
fn rollback_to_a_pruned_version_rebuilds_it_from_git_and_leaves_the_checkout_alone() {
    let repo = Repo::new("rebuild");
    let app = app_repo();
    let containers = Containers::new();
    let name = crate::harness::unique("bt-rebuild");
    let port = free_port();
    let t = Test::new().repo(&repo, &config(&repo, app.path(), &name, port));

    // `backtrack build --push` makes v1.1.0 from the checkout (HEAD is at the v1.1.0 tag).
    let built = t.exec(["build", "--push", "--output", "json"]).success().json();
    assert_eq!(built["version"], "v1.1.0");
    assert_eq!(built["revision"], git(app.path(), &["rev-parse", "HEAD"]));
    assert!(built["digest"].as_str().unwrap().starts_with("sha256:"));
    let versions = t.exec(["versions", "--output", "json"]).success().json();
    assert_eq!(
        versions["tags"][0]["revision"], built["revision"],
        "labels from the build"
    );
    assert_eq!(versions["tags"][0]["tag"], "v1.1.0");

    docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &containers.label(),
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        &format!("{}:v1.1.0", repo.image()),
    ]);
    assert_eq!(
        wait_http(&format!("http://127.0.0.1:{port}/health"), Duration::from_secs(10)).trim(),
        "1.1.0"
    );

    // The user is in the middle of something: a branch, an edit, an untracked file.
    git(app.path(), &["checkout", "-q", "-b", "feature"]);
    std::fs::write(app.path().join("message.txt"), "work in progress\n").unwrap();
    std::fs::write(app.path().join("notes.txt"), "untracked\n").unwrap();
    let status_before = git(app.path(), &["status", "--porcelain", "--branch"]);

    // v1.0.0 was never pushed (or was pruned): without --rebuild and without a terminal, say so.
    let refused = t.exec(["rollback", "v1.0.0"]).code(4);
    assert!(refused.stderr.contains("Git tag v1.0.0"), "{}", refused.stderr);
    assert!(refused.stderr.contains("--rebuild"), "{}", refused.stderr);
    let dry = t.exec(["rollback", "v1.0.0", "--dry-run"]).success();
    assert!(dry.stderr.contains("plan: rebuild v1.0.0 from Git"), "{}", dry.stderr);
    assert_eq!(repo.tag_digest("v1.0.0"), None, "a dry run builds nothing");

    let run = t
        .exec(["rollback", "v1.0.0", "--rebuild", "--reason", "1.1 broke orders"])
        .success();
    assert!(run.stdout.contains("rolled back"), "{}", run.stdout);
    assert_eq!(
        http_get(&format!("http://127.0.0.1:{port}/health")).unwrap().trim(),
        "1.0.0"
    );
    assert_eq!(
        http_get(&format!("http://127.0.0.1:{port}/message.txt")).unwrap(),
        "hello from v1.0.0\n",
        "built from the tag, not the working copy"
    );
    assert!(repo.tag_digest("v1.0.0").is_some(), "pushed to the registry");

    assert_eq!(
        git(app.path(), &["status", "--porcelain", "--branch"]),
        status_before,
        "checkout untouched"
    );
    assert_eq!(
        std::fs::read_to_string(app.path().join("message.txt")).unwrap(),
        "work in progress\n"
    );
    let worktrees = git(app.path(), &["worktree", "list"]);
    assert_eq!(
        worktrees.lines().count(),
        1,
        "the scratch worktree is gone: {worktrees}"
    );

    let history = t.exec(["history", "--output", "json"]).success().json();
    let last = history["operations"].as_array().unwrap().last().unwrap().clone();
    assert!(
        last["detail"].as_str().unwrap().contains("rebuilt from Git tag v1.0.0"),
        "{last}"
    );
    assert_eq!(last["result"], "ok");

    // `build` refuses the dirty tree unless told.
    let dirty = t.exec(["build", "--version", "v9.9.9"]).code(1);
    assert!(dirty.stderr.contains("uncommitted changes"), "{}", dirty.stderr);
}

#[test]
fn missing_tags_and_failing_builds_give_clear_errors() {
    let repo = Repo::new("rebuild-errors");
    let app = app_repo();
    // v1.2.0's Dockerfile is broken.
    std::fs::write(
        app.path().join("Dockerfile"),
        DOCKERFILE.replace(
            "ARG VERSION=unknown",
            "RUN [\"/bin/sh\",\"-c\",\"echo compiling; echo 'error: linker failed' >&2; exit 2\"]\nARG VERSION=unknown",
        ),
    )
    .unwrap();
    git(app.path(), &["commit", "-q", "-am", "broken build"]);
    git(app.path(), &["tag", "v1.2.0"]);
    repo.push(&AppImage::new("v1.1.0"));
    let containers = Containers::new();
    let (name, port) = crate::harness::run_app(&format!("{}:v1.1.0", repo.image()), &containers, &[]);
    let t = Test::new().repo(&repo, &config(&repo, app.path(), &name, port));

    let run = t.exec(["deploy", "v0.9.0", "--rebuild"]).code(4);
    assert!(
        run.stderr.contains("0.9.0 is not in")
            && run.stderr.contains("Git has no tag for it either (find Git tag v0.9.0"),
        "{}",
        run.stderr
    );

    let run = t.exec(["deploy", "v1.2.0", "--rebuild"]).code(1);
    assert!(
        run.stderr.contains("build ") && run.stderr.contains("at Step 4/"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("error: linker failed"),
        "the build's last lines: {}",
        run.stderr
    );
    assert_eq!(
        wait_http(&format!("http://127.0.0.1:{port}/health"), Duration::from_secs(10)).trim(),
        "1.1.0"
    );
    assert_eq!(
        git(app.path(), &["worktree", "list"]).lines().count(),
        1,
        "removed after a failed build too"
    );

    let not_a_repo = tempfile::tempdir().unwrap();
    let t2 = Test::new().repo(&repo, &config(&repo, not_a_repo.path(), &name, port));
    let run = t2.exec(["deploy", "v1.3.0", "--rebuild"]).code(4);
    assert!(
        run.stderr.contains("1.3.0 is not in") && run.stderr.contains("no Git fallback is configured"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("versions there include v1.1.0"), "{}", run.stderr);
}
