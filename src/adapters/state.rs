//! The local state store of one target: the history journal (append-only JSON lines, each write
//! fsynced), the lock that keeps two backtracks off the same target, and a small `target.json`
//! saying which target and repository the folder belongs to (so `prune` can find every target
//! built from a repository).
//!
//! **Every operation that moves the target appends its intent before acting**, so a crash leaves
//! a `started` record without a `finished` one, which the next run detects and settles.
//! **The lock holder's identity is on disk before the lock is taken**, so whoever fails to take it
//! can always name the live holder (found by pid in `/proc/locks`).
//!
//! A remote target's state is the same files on its host, through the run's SSH connection
//! (`remote`); a `Journal` hides which.

pub mod remote;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::domain::history::Record;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("access {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Remote(#[from] crate::adapters::ssh::SshError),
}

/// What a state folder belongs to, written beside its journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetMeta {
    /// `container NAME`, `compose service P/S`, as the journal's records name it.
    pub target: String,
    /// The engine address (`local` for the default socket).
    pub engine: String,
    /// `host/repository` of the registry the target's images come from.
    pub repository: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

impl TargetMeta {
    pub const FILE: &'static str = "target.json";

    pub fn read(state_dir: &Path) -> Option<Self> {
        let text = std::fs::read(state_dir.join(Self::FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
    /// Written beside the journal when the journal is first created.
    meta: Option<TargetMeta>,
    /// Set for a remote target: the journal is on its host, and `path` is only its name.
    remote: Option<remote::RemoteDir>,
}

impl Journal {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("history.jsonl"),
            meta: None,
            remote: None,
        }
    }

    /// The journal of a remote target, on its host.
    pub fn remote(dir: remote::RemoteDir, meta: TargetMeta) -> Self {
        Self {
            path: PathBuf::from(dir.display()).join("history.jsonl"),
            meta: Some(meta),
            remote: Some(dir),
        }
    }

    /// A journal that writes `target.json` beside itself on its first append.
    pub fn for_target(state_dir: &Path, meta: TargetMeta) -> Self {
        Self {
            meta: Some(meta),
            ..Self::new(state_dir)
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every record, oldest first. A line that is not a record (a crash during a write tears it,
    /// possibly inside a multi-byte character; or someone edited the file) is skipped with a
    /// warning naming its line: one bad line never stops backtrack.
    pub fn read(&self) -> Result<Vec<Record>, StateError> {
        let bytes = match &self.remote {
            Some(r) => r.read_journal()?,
            None => match std::fs::read(&self.path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(source) => {
                    return Err(StateError::Io {
                        path: self.path.clone(),
                        source,
                    });
                }
            },
        };
        let mut out = Vec::new();
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Record>(line) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(
                    "skipping line {} of {}: not a journal record ({e})",
                    i + 1,
                    self.path.display()
                ),
            }
        }
        Ok(out)
    }

    /// Appends `records` in order, each as `append` would: on a remote host all in one round
    /// trip. The first failure is the answer (the records before it are written).
    pub fn append_all(&self, records: &[&Record]) -> Result<(), StateError> {
        if records.is_empty() {
            return Ok(());
        }
        let Some(r) = &self.remote else {
            return records.iter().try_for_each(|record| self.append(record));
        };
        let mut lines = Vec::with_capacity(records.len());
        for record in records {
            self.fault(record)?;
            lines.push(serde_json::to_vec(record).expect("records serialize"));
        }
        let meta = self
            .meta
            .as_ref()
            .map(|m| serde_json::to_vec(m).expect("meta serializes"));
        let lines: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        Ok(r.append_journal_lines(&lines, meta.as_deref())?)
    }

    /// `append_all` on a thread of its own, awaited: a fleet's hosts commit in one task
    /// (`ops::operation`), and a remote append blocks for its round trip, so written in place the
    /// hosts' appends would wait one after another instead of together.
    pub async fn append_all_aside(&self, records: &[&Record]) -> Result<(), StateError> {
        if records.is_empty() {
            return Ok(());
        }
        let (journal, path) = (self.clone(), self.path.clone());
        let records: Vec<Record> = records.iter().map(|r| (*r).clone()).collect();
        tokio::task::spawn_blocking(move || journal.append_all(&records.iter().collect::<Vec<_>>()))
            .await
            .unwrap_or_else(|e| {
                Err(StateError::Io {
                    path,
                    source: std::io::Error::other(format!("the journal's writer stopped: {e}")),
                })
            })
    }

    /// For a journal on a remote host: the gate that writes `record` there before it hands a
    /// swap's calls to the engine (`remote::GATE`): its command line and what it reads first.
    /// `None` for a journal on this machine.
    pub fn gate(&self, record: &Record, probe: Option<&str>) -> Result<Option<(String, Vec<u8>)>, StateError> {
        let Some(r) = &self.remote else { return Ok(None) };
        self.fault(record)?;
        let line = serde_json::to_vec(record).expect("records serialize");
        let meta = self
            .meta
            .as_ref()
            .map(|m| serde_json::to_vec(m).expect("meta serializes"));
        Ok(Some((
            r.gate_command(),
            r.gate_preamble(&line, meta.as_deref(), probe)?,
        )))
    }

    /// The gate wrote `record`.
    pub fn gated(&self, record: &Record) {
        if let Some(r) = &self.remote {
            r.gate_opened(&serde_json::to_vec(record).expect("records serialize"));
        }
    }

    /// The remote state behind this journal, for a target on an `ssh://` host.
    pub fn remote_dir(&self) -> Option<&remote::RemoteDir> {
        self.remote.as_ref()
    }

    /// The disk-full fault `BACKTRACK_FAULT=journal-PHASE` injects for tests, once armed.
    fn fault(&self, record: &Record) -> Result<(), StateError> {
        if let Ok(spec) = std::env::var(FAULT_ENV)
            && spec == format!("journal-{}", record.phase.as_str())
        {
            DISK_FULL.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if DISK_FULL.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StateError::Io {
                path: self.path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!("no space left on device (injected by {FAULT_ENV})"),
                ),
            });
        }
        Ok(())
    }

    /// Appends one record as one write, then fsyncs, so it survives a crash right after.
    pub fn append(&self, record: &Record) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        if self.remote.is_none()
            && let Some(dir) = self.path.parent()
        {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        self.fault(record)?;
        let mut line = serde_json::to_vec(record).expect("records serialize");
        line.push(b'\n');
        if let Some(r) = &self.remote {
            let meta = self
                .meta
                .as_ref()
                .map(|m| serde_json::to_vec(m).expect("meta serializes"));
            return Ok(r.append_journal(&line, meta.as_deref())?);
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(OWNER_ONLY)
            .open(&self.path)
            .map_err(io)?;
        let meta = f.metadata().map_err(io)?;
        // The journal holds config snapshots (env values): its owner's only, also when an older
        // backtrack made it readable by others.
        if meta.permissions().mode() & 0o077 != 0 {
            f.set_permissions(std::fs::Permissions::from_mode(OWNER_ONLY))
                .map_err(io)?;
        }
        let len = meta.len();
        // A previous crash may have left a torn line without its newline: end it first.
        if len > 0 {
            let mut r = File::open(&self.path).map_err(io)?;
            r.seek(SeekFrom::End(-1)).map_err(io)?;
            let mut last = [0u8; 1];
            r.read_exact(&mut last).map_err(io)?;
            if last[0] != b'\n' {
                line.insert(0, b'\n');
            }
        } else if let Some(meta) = &self.meta
            && let Some(dir) = self.path.parent()
        {
            write_atomic(
                &dir.join(TargetMeta::FILE),
                &serde_json::to_vec_pretty(meta).expect("meta serializes"),
            )
            .map_err(io)?;
        }
        f.write_all(&line).map_err(io)?;
        f.sync_data().map_err(io)
    }

    /// Starts this journal from the records of a journal kept in the old layout (one per registry
    /// repository, shared by every target) that `keep` says belong here. Does nothing when this
    /// journal exists already or the old one does not. Returns how many records were taken.
    pub fn adopt_legacy(&self, legacy: &Path, keep: impl Fn(&Record) -> bool) -> Result<usize, StateError> {
        if self.remote.is_some() || self.path.exists() || !legacy.is_file() {
            return Ok(0);
        }
        let records: Vec<Record> = Journal::new(legacy.parent().unwrap_or(Path::new(".")))
            .read()?
            .into_iter()
            .filter(|r| keep(r))
            .collect();
        if records.is_empty() {
            return Ok(0);
        }
        let mut text = Vec::new();
        for r in &records {
            text.extend(serde_json::to_vec(r).expect("records serialize"));
            text.push(b'\n');
        }
        let io = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
            if let Some(meta) = &self.meta {
                write_atomic(
                    &dir.join(TargetMeta::FILE),
                    &serde_json::to_vec_pretty(meta).expect("meta serializes"),
                )
                .map_err(io)?;
            }
        }
        write_atomic(&self.path, &text).map_err(io)?;
        Ok(records.len())
    }
}

/// Test-only fault injection: `BACKTRACK_TEST_FAULT=journal-committed` makes the write of that
/// record, and every journal write after it in this process, fail as a full disk would (a real
/// full disk cannot be had on demand at that moment).
pub const FAULT_ENV: &str = "BACKTRACK_TEST_FAULT";
static DISK_FULL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes a file whole or not at all: a temporary file beside it, fsynced, renamed over it.
/// The mode of the files backtrack writes in a state folder: config values are in the journal.
const OWNER_ONLY: u32 = 0o600;

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(OWNER_ONLY)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    drop(f);
    std::fs::rename(&tmp, path)
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
            Self::Held { .. } => Some(
                "wait for it to finish; the lock is released when that process exits (for a remote target, \
                 also when its ssh connection ends)"
                    .into(),
            ),
            Self::Io { .. } => None,
        }
    }
}

/// Who holds (or held) a lock: written by the holder before it takes the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub user: String,
    pub host: String,
    /// The command line it runs, e.g. `backtrack deploy v1.2.0`.
    pub command: String,
    pub since: chrono::DateTime<chrono::Utc>,
}

impl Holder {
    /// This process, holding a lock for `command`, from now.
    pub fn me(command: &str) -> Self {
        let who = Identity::current();
        Self {
            pid: std::process::id(),
            user: who.user,
            host: who.host,
            command: command.to_string(),
            since: chrono::Utc::now(),
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} of {}@{}, running `{}` since {}",
            self.pid,
            self.user,
            self.host,
            self.command,
            self.since.format("%Y-%m-%d %H:%M:%SZ")
        )
    }
}

/// The lock of a target, wherever its state is; released on drop.
#[derive(Debug)]
pub enum TargetLock {
    Local(Lock),
    Remote(remote::RemoteLock),
}

impl TargetLock {
    /// Whether what was read of the target's engine while this lock was asked for still stands
    /// (`RemoteLock::quiet`); a local lock is taken before anything is read.
    pub fn quiet(&self) -> bool {
        match self {
            Self::Local(_) => true,
            Self::Remote(r) => r.quiet(),
        }
    }
}

/// An exclusive lock on the state folder, released on drop (or when the process dies: a dead
/// holder's lock is free at once, and its identity file is cleared by the next holder).
#[derive(Debug)]
pub struct Lock {
    identity: PathBuf,
    _file: File,
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.identity);
    }
}

fn identity_path(state_dir: &Path, pid: u32) -> PathBuf {
    state_dir.join(format!("holder-{pid}.json"))
}

/// Takes the lock without waiting. This process's identity is written (whole, to a file of its
/// own) before it tries, so a second backtrack that finds the lock taken can name the holder.
pub fn lock(state_dir: &Path, command: &str) -> Result<Lock, LockError> {
    let path = state_dir.join("lock");
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let me = Holder::me(command);
    let identity = identity_path(state_dir, me.pid);
    write_atomic(&identity, &serde_json::to_vec(&me).expect("holder serializes")).map_err(io)?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {
            clear_dead_identities(state_dir);
            Ok(Lock { identity, _file: file })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let _ = std::fs::remove_file(&identity);
            let holder = holder_of(&path, state_dir).map_or_else(
                || "holder unknown".to_string(),
                |(pid, h)| h.map_or_else(|| format!("pid {pid}"), |h| h.to_string()),
            );
            Err(LockError::Held { path, holder })
        }
        Err(std::fs::TryLockError::Error(e)) => {
            let _ = std::fs::remove_file(&identity);
            Err(io(e))
        }
    }
}

/// The live holder of the state folder's lock, if another process holds it now.
pub fn holder(state_dir: &Path) -> Option<Holder> {
    let path = state_dir.join("lock");
    let file = OpenOptions::new().read(true).write(true).open(&path).ok()?;
    match file.try_lock() {
        Ok(()) => None,
        Err(std::fs::TryLockError::WouldBlock) => holder_of(&path, state_dir).and_then(|(_, h)| h),
        Err(_) => None,
    }
}

/// The pid holding the flock on `lock` (from `/proc/locks`) and the identity it wrote.
fn holder_of(lock: &Path, state_dir: &Path) -> Option<(u32, Option<Holder>)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(lock).ok()?;
    let dev = meta.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let want = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid: u32 = locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`; waiters have a `->` field.
        if fields.get(1) != Some(&"FLOCK") || fields.contains(&"->") {
            return None;
        }
        (fields.get(5) == Some(&want.as_str())).then(|| fields.get(4)?.parse().ok())?
    })?;
    let identity = std::fs::read(identity_path(state_dir, pid))
        .ok()
        .and_then(|b| serde_json::from_slice::<Holder>(&b).ok());
    Some((pid, identity))
}

/// Removes identity files of processes that are gone (killed while holding the lock, say).
fn clear_dead_identities(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("holder-")?.strip_suffix(".json"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Holders that died with the lock (their identity file is still there and their pid is gone
/// from this machine): nothing has taken the lock since, so what they were doing may be half
/// done. Holders from another machine are left out (their pids mean nothing here).
pub fn dead_holders(state_dir: &Path) -> Vec<Holder> {
    let here = Identity::current().host;
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    let mut out: Vec<Holder> = entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("holder-") && n.ends_with(".json"))
        })
        .filter_map(|e| serde_json::from_slice::<Holder>(&std::fs::read(e.path()).ok()?).ok())
        .filter(|h| h.host == here && !Path::new(&format!("/proc/{}", h.pid)).exists())
        .collect();
    out.sort_by_key(|h| h.since);
    out
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
    /// The person: `SUDO_USER` first (under sudo, USER is root), then `USER`, `LOGNAME`, the
    /// password database.
    pub fn current() -> Self {
        let user = ["SUDO_USER", "USER", "LOGNAME"]
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
    fn journal_line_torn_inside_a_multibyte_character_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        let mut r = record("a");
        r.reason = Some("déploiement urgent ✓".into());
        j.append(&r).unwrap();
        let whole = serde_json::to_vec(&Record {
            id: "b".into(),
            ..r.clone()
        })
        .unwrap();
        // Cut inside the 3-byte check mark: the line is not valid UTF-8 any more.
        let cut = whole.windows(3).position(|w| w == "✓".as_bytes()).unwrap() + 1;
        let mut f = OpenOptions::new().append(true).open(j.path()).unwrap();
        f.write_all(&whole[..cut]).unwrap();
        f.write_all(b"\n\xff\xfe garbage\n").unwrap();
        drop(f);
        j.append(&record("c")).unwrap();
        let ids: Vec<String> = j.read().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["a", "c"]);
    }

    #[test]
    fn legacy_journal_is_adopted_once_with_only_this_targets_records() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("old");
        let old = Journal::new(&legacy);
        for (id, target) in [
            ("a", Some("container web")),
            ("b", Some("container worker")),
            ("c", None),
        ] {
            old.append(&Record {
                target: target.map(str::to_string),
                ..record(id)
            })
            .unwrap();
        }
        let new = Journal::new(&dir.path().join("new"));
        let keep = |r: &Record| r.target.as_deref().is_none_or(|t| t == "container web");
        assert_eq!(new.adopt_legacy(old.path(), keep).unwrap(), 2);
        let ids: Vec<String> = new.read().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["a", "c"]);
        // Adopted once: later records of the old journal are not copied again.
        old.append(&record("d")).unwrap();
        assert_eq!(new.adopt_legacy(old.path(), keep).unwrap(), 0);
        assert_eq!(new.read().unwrap().len(), 2);
    }

    /// Starts `lock_child_process` holding the lock on `dir`; returns it once it holds it.
    fn child_holding(dir: &Path, command: &str) -> (std::process::Child, u32) {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "adapters::state::tests::lock_child_process",
                "--nocapture",
            ])
            .env("BACKTRACK_LOCK_CHILD_DIR", dir)
            .env("BACKTRACK_LOCK_CHILD_COMMAND", command)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let pid = lines
            .find_map(|l| l.ok()?.strip_prefix("WON ")?.parse().ok())
            .expect("the child took the lock");
        // Keep reading, so the child's last lines never meet a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        (child, pid)
    }

    #[test]
    fn second_lock_says_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, pid) = child_holding(dir.path(), "backtrack deploy v1.2.3");
        let err = lock(dir.path(), "backtrack rollback").unwrap_err();
        assert!(err.is_held());
        let msg = err.to_string();
        assert!(msg.contains(&format!("pid {pid} of")), "{msg}");
        assert!(msg.contains("backtrack deploy v1.2.3"), "{msg}");
        let h = holder(dir.path()).expect("a live holder");
        assert_eq!((h.pid, h.command.as_str()), (pid, "backtrack deploy v1.2.3"));
        child.wait().unwrap();
        // The holder is gone: the lock is free, with nobody named.
        assert_eq!(holder(dir.path()), None);
        drop(lock(dir.path(), "backtrack rollback").unwrap());
    }

    #[test]
    fn released_lock_has_no_holder_and_leaves_no_identity() {
        let dir = tempfile::tempdir().unwrap();
        drop(lock(dir.path(), "backtrack deploy v1").unwrap());
        assert_eq!(holder(dir.path()), None);
        assert!(!identity_path(dir.path(), std::process::id()).exists());
        // A dead process's identity file is cleared by the next holder.
        let stale = identity_path(dir.path(), u32::MAX - 1);
        std::fs::write(&stale, b"{}").unwrap();
        let _l = lock(dir.path(), "backtrack status").unwrap();
        assert!(!stale.exists());
    }

    /// The child side of `lock_identity_under_concurrent_starts`: take the lock, say so, hold it.
    #[test]
    #[ignore = "a child process of lock_identity_under_concurrent_starts"]
    fn lock_child_process() {
        let dir = std::env::var("BACKTRACK_LOCK_CHILD_DIR").expect("run by lock_identity_under_concurrent_starts");
        let command = std::env::var("BACKTRACK_LOCK_CHILD_COMMAND").unwrap_or_else(|_| "child".into());
        match lock(Path::new(&dir), &command) {
            Ok(_l) => {
                println!("WON {}", std::process::id());
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            Err(e) => println!("LOST {e}"),
        }
    }

    #[test]
    fn lock_identity_under_concurrent_starts() {
        let exe = std::env::current_exe().unwrap();
        for round in 0..15 {
            let dir = tempfile::tempdir().unwrap();
            let spawn = || {
                std::process::Command::new(&exe)
                    .args([
                        "--ignored",
                        "--exact",
                        "adapters::state::tests::lock_child_process",
                        "--nocapture",
                    ])
                    .env("BACKTRACK_LOCK_CHILD_DIR", dir.path())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            };
            let (a, b) = (spawn(), spawn());
            let outs: Vec<String> = [a, b]
                .into_iter()
                .map(|c| String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).into_owned())
                .collect();
            let won: Vec<&str> = outs
                .iter()
                .filter_map(|o| o.lines().find_map(|l| l.strip_prefix("WON ")))
                .collect();
            let lost: Vec<&str> = outs
                .iter()
                .filter_map(|o| o.lines().find_map(|l| l.strip_prefix("LOST ")))
                .collect();
            if won.len() == 2 {
                continue; // one finished before the other started: no contention this round
            }
            assert_eq!((won.len(), lost.len()), (1, 1), "round {round}: {outs:?}");
            assert!(
                lost[0].contains(&format!("pid {} of", won[0])),
                "round {round}: the loser named the wrong holder: {} (winner pid {})",
                lost[0],
                won[0]
            );
        }
    }
}
