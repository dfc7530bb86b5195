//! Build script: records the Git commit the binary is built from, for `backtrack --version`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BACKTRACK_COMMIT={commit}");
    // Rebuild when HEAD moves: watch the files that say where it is, where they exist (a
    // worktree's git dir is elsewhere; a missing path would make cargo rerun this every time).
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        let dir = std::path::PathBuf::from(dir);
        let common = git(&["rev-parse", "--git-common-dir"]).map(std::path::PathBuf::from);
        let mut watch = vec![dir.join("HEAD")];
        if let Some(c) = common {
            watch.push(c.join("packed-refs"));
            watch.push(c.join("refs/heads"));
        }
        for p in watch.into_iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
