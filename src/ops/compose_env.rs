//! Compose projects whose file reads the image tag from a variable (`image: repo:${VERSION}`):
//! after a deploy or rollback, the deployed tag is written to the project's `.env`, so a later
//! `docker-compose up -d` keeps the version backtrack put there instead of going back to the old
//! one. The file is rewritten whole (temporary file + rename); other lines are kept as they are.

use std::path::{Path, PathBuf};

/// The compose label naming the folder `docker-compose` ran in (where its `.env` is).
pub const WORKING_DIR_LABEL: &str = "com.docker.compose.project.working_dir";

#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    #[error("update {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `text` with `key=value` set: the last assignment of `key` (with or without `export`) is
/// replaced, or the line is appended.
pub fn set_var(text: &str, key: &str, value: &str) -> String {
    let assigns = |line: &str| {
        let l = line.trim_start();
        let l = l.strip_prefix("export ").map_or(l, str::trim_start);
        l.strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    match lines.iter().rposition(|l| assigns(l)) {
        Some(i) => lines[i] = format!("{key}={value}"),
        None => lines.push(format!("{key}={value}")),
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Sets `key=value` in `dir/.env`, creating the file when there is none.
pub fn write(dir: &Path, key: &str, value: &str) -> Result<PathBuf, EnvFileError> {
    let path = dir.join(".env");
    let io = |source| EnvFileError::Io {
        path: path.clone(),
        source,
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let tmp = dir.join(format!(".env.backtrack-{}", std::process::id()));
    std::fs::write(&tmp, set_var(&text, key, value)).map_err(io)?;
    if let Ok(meta) = std::fs::metadata(&path) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_var_replaces_or_appends() {
        let cases = [
            ("", "VERSION=v1.2.0\n"),
            ("A=1\n", "A=1\nVERSION=v1.2.0\n"),
            ("A=1\nVERSION=v1.0.0\nB=2\n", "A=1\nVERSION=v1.2.0\nB=2\n"),
            ("export VERSION = v1.0.0\n", "VERSION=v1.2.0\n"),
            // only a whole-name match: VERSIONS and MY_VERSION stay
            (
                "VERSIONS=x\nMY_VERSION=y\n",
                "VERSIONS=x\nMY_VERSION=y\nVERSION=v1.2.0\n",
            ),
            ("# VERSION=old\n", "# VERSION=old\nVERSION=v1.2.0\n"),
        ];
        for (before, after) in cases {
            assert_eq!(set_var(before, "VERSION", "v1.2.0"), after, "{before:?}");
        }
    }

    #[test]
    fn write_creates_and_keeps_other_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".env"), "DB=postgres://x\nVERSION=v1\n").unwrap();
        let path = write(dir.path(), "VERSION", "v2").unwrap();
        assert_eq!(std::fs::read_to_string(path).unwrap(), "DB=postgres://x\nVERSION=v2\n");
    }
}
