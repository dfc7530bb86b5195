//! The local state store of one registry + repository: the history journal (append-only JSON
//! lines, each write fsynced) and the lock that keeps two backtracks off the same target.
//!
//! **Every operation that moves the target appends its intent before acting**, so a crash leaves
//! a `started` record without a `finished` one, which the next run detects and settles.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::domain::history::Record;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("access {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("history.jsonl"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every record, oldest first. A torn line (a crash during a write) is skipped with a warning.
    pub fn read(&self) -> Result<Vec<Record>, StateError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StateError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Record>(line) {
                Ok(r) => out.push(r),
                // Only a crash in the middle of a write leaves a line like that: skip it, loudly.
                Err(e) => tracing::warn!("skipping torn line {} of {}: {e}", i + 1, self.path.display()),
            }
        }
        Ok(out)
    }

    /// Appends one record as one write, then fsyncs, so it survives a crash right after.
    pub fn append(&self, record: &Record) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut line = serde_json::to_vec(record).expect("records serialize");
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        // A previous crash may have left a torn line without its newline: end it first.
        if f.metadata().map_err(io)?.len() > 0 {
            let mut r = File::open(&self.path).map_err(io)?;
            r.seek(SeekFrom::End(-1)).map_err(io)?;
            let mut last = [0u8; 1];
            r.read_exact(&mut last).map_err(io)?;
            if last[0] != b'\n' {
                line.insert(0, b'\n');
            }
        }
        f.write_all(&line).map_err(io)?;
        f.sync_data().map_err(io)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock {}: another backtrack holds it ({holder})", path.display())]
    Held { path: PathBuf, holder: String },
    #[error("lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LockError {
    pub fn is_held(&self) -> bool {
        matches!(self, Self::Held { .. })
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Held { .. } => Some("wait for it to finish; the lock is released when that process exits".into()),
            Self::Io { .. } => None,
        }
    }
}

/// An exclusive lock on the state folder, released on drop (or when the process dies).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Takes the lock without waiting; the holder's identity is written into the lock file so a
/// second backtrack can say who holds it.
pub fn lock(state_dir: &Path, command: &str) -> Result<Lock, LockError> {
    let path = state_dir.join("lock");
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(LockError::Held {
                path,
                holder: if holder.is_empty() {
                    "holder unknown".into()
                } else {
                    holder.to_string()
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    let who = Identity::current();
    let info = format!(
        "pid {} of {}@{}, running `{command}` since {}",
        std::process::id(),
        who.user,
        who.host,
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ")
    );
    file.set_len(0).map_err(io)?;
    file.write_all(info.as_bytes()).map_err(io)?;
    file.sync_data().map_err(io)?;
    Ok(Lock { _file: file })
}

/// The `started` record of a new operation: a fresh id, now, and who runs it.
pub fn begin(op: crate::domain::history::Operation) -> Record {
    let who = Identity::current();
    let now = chrono::Utc::now();
    let id = format!("{}-{}", now.format("%Y%m%dT%H%M%S%.3fZ"), std::process::id());
    Record {
        user: Some(who.user),
        host: Some(who.host),
        ..Record::new(&id, now, op, crate::domain::history::Phase::Started)
    }
}

/// Who runs this backtrack, for the journal.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: String,
    pub host: String,
}

impl Identity {
    pub fn current() -> Self {
        let user = ["USER", "LOGNAME", "SUDO_USER"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
            .or_else(user_from_passwd)
            .unwrap_or_else(|| "unknown".into());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Self { user, host }
    }
}

/// The name of this process's user from /etc/passwd (when USER is not set, as under cron).
fn user_from_passwd() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid().to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::history::{Operation, Phase};

    fn record(id: &str) -> Record {
        Record::new(id, chrono::Utc::now(), Operation::Deploy, Phase::Started)
    }

    #[test]
    fn journal_survives_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        j.append(&record("a")).unwrap();
        // A crash in the middle of a write leaves half a line.
        let mut f = OpenOptions::new().append(true).open(j.path()).unwrap();
        f.write_all(b"{\"id\":\"b\",\"at\":").unwrap();
        assert_eq!(j.read().unwrap().len(), 1);
        j.append(&record("c")).unwrap();
        let ids: Vec<String> = j.read().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["a", "c"]);
    }

    #[test]
    fn second_lock_says_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock(dir.path(), "backtrack deploy v1.2.3").unwrap();
        let err = lock(dir.path(), "backtrack rollback").unwrap_err();
        assert!(err.is_held());
        let msg = err.to_string();
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        assert!(msg.contains("backtrack deploy v1.2.3"), "{msg}");
    }
}
