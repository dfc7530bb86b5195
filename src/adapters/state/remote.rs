//! The state of a remote target, kept on its host: the same journal (`history.jsonl`), lock and
//! `target.json` as a local target's, under the SSH user's
//! `${XDG_STATE_HOME:-~/.local/state}/backtrack/targets/…`, read and written through the run's
//! SSH connection by small POSIX `sh` scripts (nothing to install on the host besides `flock`,
//! which util-linux and busybox both have).
//!
//! **A journal record is one `cat >>` followed by `sync`**, so it is on the host's disk before
//! anything else happens. **The lock is a `flock` held by a shell on the host for as long as this
//! run keeps that channel open**: it is released when the run ends, and also when the run's
//! machine crashes or the connection drops (sshd ends the session). Its holder (user@machine,
//! pid, command, since) is written beside it by the winner, so a loser can name it.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Holder, Identity, LockError};
use crate::adapters::ssh::{SshError, SshSession, shell_quote};

/// The state folder of one target on a remote host, relative to the remote state root.
#[derive(Debug, Clone)]
pub struct RemoteDir {
    pub ssh: Arc<SshSession>,
    /// `targets/local_container_web`: the folder a backtrack run on the host itself would use,
    /// so operators here and there share one history.
    pub relative: String,
}

/// Sets `d` to the target's folder on the host.
const PRELUDE: &str = r#"set -e; d="${XDG_STATE_HOME:-$HOME/.local/state}/backtrack/$1"; "#;

impl RemoteDir {
    /// `user@host:~/.local/state/backtrack/targets/…`, for messages.
    pub fn display(&self) -> String {
        format!(
            "{}:~/.local/state/backtrack/{}",
            self.ssh.destination().user_at_host(),
            self.relative
        )
    }

    /// The journal's bytes (empty when there is none yet).
    pub fn read_journal(&self) -> Result<Vec<u8>, SshError> {
        let script = format!(r#"{PRELUDE}if [ -f "$d/history.jsonl" ]; then cat "$d/history.jsonl"; fi"#);
        self.ssh.run_script("read the journal", &script, &[&self.relative], b"")
    }

    /// Appends one line (ending a torn last line first) and syncs it to disk; writes `meta` as
    /// `target.json` when the journal is new.
    pub fn append_journal(&self, line: &[u8], meta: Option<&[u8]>) -> Result<(), SshError> {
        let script = format!(
            r#"{PRELUDE}f="$d/history.jsonl"; mkdir -p "$d"
if [ -n "$2" ] && [ ! -s "$f" ]; then printf '%s\n' "$2" > "$d/target.json.tmp.$$"; mv "$d/target.json.tmp.$$" "$d/target.json"; fi
if [ -s "$f" ] && [ "$(tail -c 1 "$f" | wc -l)" -eq 0 ]; then printf '\n' >> "$f"; fi
cat >> "$f"
sync "$f" 2>/dev/null || sync"#
        );
        let meta = meta
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .unwrap_or_default();
        self.ssh
            .run_script("append to the journal", &script, &[&self.relative, &meta], line)
            .map(drop)
    }

    /// The live holder of the target's lock on the host, if someone holds it now.
    pub fn holder(&self) -> Option<Holder> {
        let script = format!(
            r#"{PRELUDE}[ -e "$d/lock" ] || exit 0
exec 9>>"$d/lock"
if flock -n 9; then exit 0; fi
cat "$d/holder.json" 2>/dev/null || true"#
        );
        let out = self
            .ssh
            .run_script("read the lock", &script, &[&self.relative], b"")
            .ok()?;
        serde_json::from_slice(&out).ok()
    }

    /// Takes the target's lock on the host without waiting.
    pub fn lock(&self, command: &str) -> Result<RemoteLock, LockError> {
        let who = Identity::current();
        let me = Holder {
            pid: std::process::id(),
            user: who.user,
            host: who.host,
            command: command.to_string(),
            since: chrono::Utc::now(),
        };
        let holder_json = serde_json::to_string(&me).expect("holder serializes");
        // The winner writes its identity, says so, then holds the lock until its input ends.
        // A loser waits briefly for the winner's identity (it may have only just won).
        let script = format!(
            r#"{PRELUDE}mkdir -p "$d"; exec 9>>"$d/lock"
if ! flock -n 9; then
  i=0; while [ ! -s "$d/holder.json" ] && [ $i -lt 10 ]; do sleep 0.1; i=$((i+1)); done
  echo HELD; cat "$d/holder.json" 2>/dev/null || true; exit 0
fi
printf '%s\n' "$2" > "$d/holder.json.tmp.$$"; mv "$d/holder.json.tmp.$$" "$d/holder.json"
echo LOCKED
cat > /dev/null
rm -f "$d/holder.json""#
        );
        let mut line = format!("sh -c {} sh", shell_quote(&script));
        for a in [self.relative.as_str(), holder_json.as_str()] {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        let path = std::path::PathBuf::from(self.display()).join("lock");
        let io = |e: std::io::Error| LockError::Io {
            path: path.clone(),
            source: e,
        };
        let mut child = self
            .ssh
            .command(&line)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io)?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        match lines.next() {
            Some(Ok(l)) if l == "LOCKED" => Ok(RemoteLock { child: Some(child) }),
            Some(Ok(l)) if l == "HELD" => {
                let rest: String = lines.map_while(Result::ok).collect::<Vec<_>>().join("\n");
                let _ = child.wait();
                let holder = serde_json::from_str::<Holder>(rest.trim())
                    .map_or_else(|_| "holder unknown".to_string(), |h| h.to_string());
                Err(LockError::Held { path, holder })
            }
            _ => {
                let out = child.wait_with_output().map_err(io)?;
                let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
                Err(io(std::io::Error::other(if err.is_empty() {
                    "the lock's shell on the host ended without taking it".to_string()
                } else {
                    err
                })))
            }
        }
    }
}

/// A lock held on the host by a shell at the other end of this channel; released on drop.
#[derive(Debug)]
pub struct RemoteLock {
    child: Option<std::process::Child>,
}

impl Drop for RemoteLock {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // End its input: the shell removes its identity and exits, which releases the flock.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.flush();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
