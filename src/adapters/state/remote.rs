//! The state of a remote target, kept on its host: the same journal (`history.jsonl`), lock and
//! `target.json` as a local target's, under the SSH user's
//! `${XDG_STATE_HOME:-~/.local/state}/backtrack/targets/…`, read and written through the run's
//! SSH connection by one POSIX `sh` on the host (nothing to install there besides `flock`, which
//! util-linux and busybox both have).
//!
//! **One state shell per run**: the SSH connection's own session runs a small `sh` loop that
//! answers requests (read the journal, append a record, take or release the lock, name the
//! holder) as lines, so it is running as soon as the connection is up and a journal write costs
//! a round trip on an open channel, not a new channel (~40 ms each). While the run holds the
//! target's lock, the journal is read from the host once (with the lock's answer) and kept in
//! step with each append: every writer, backtrack on the host itself included, takes that lock
//! first, so the copy is the file, and an append need not read the file back; without the lock
//! the host looks at the file's end itself. **A journal record is one append followed by
//! `sync`**, so it is on the host's disk before anything else happens. **The lock is a `flock`
//! held by that shell for as long as the run keeps the connection**: it is released when the run
//! ends or releases it, and also when the run's machine crashes or the connection drops (sshd
//! ends the session). Its holder (user@machine,
//! pid, command, since) is written beside it by the winner, so a loser can name it.

use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, ChildStdout};
use std::sync::{Arc, Mutex};

use super::{Holder, LockError};
use crate::adapters::ssh::{SshError, SshSession, shell_quote};

/// The command line of the state shell, for `SshSession::open`.
pub fn shell_command() -> String {
    format!("sh -c {}", shell_quote(SHELL))
}

/// The command line of a state shell that takes the lock of the target in `relative` for
/// `holder` (its JSON) as it starts, before it reads any request: the lock's answer comes with
/// the session's start, a round trip before a request sent on its input could be answered.
/// The run reads it as its first answer (`StateShell::locked_ahead`).
pub fn shell_command_locking(relative: &str, holder: &str) -> String {
    format!(
        "sh -c {} sh {} {}",
        shell_quote(SHELL),
        shell_quote(relative),
        shell_quote(holder)
    )
}

/// `put`: appends `$line` to the journal `$f` in `$d` and syncs it; first writes `$meta` as
/// `target.json` when the journal is new and ends a torn last line (`$ends`: `torn`, `clean`,
/// or `unknown`: look at the file); an empty `$line` is refused; `$size` empty skips making the folder (it exists under the
/// lock). Shared by the state shell and the gate.
macro_rules! put_fn {
    () => {
        r#"put() {
  { [ -n "$line" ] || { echo 'refused an empty record'; false; }; } &&
  { [ -z "$size" ] || [ -d "$d" ] || mkdir -p "$d"; } &&
  if [ -n "$meta" ] && [ ! -s "$f" ]; then printf '%s\n' "$meta" > "$d/target.json.tmp.$$" && mv "$d/target.json.tmp.$$" "$d/target.json"; fi &&
  if [ "$ends" = torn ] || { [ "$ends" = unknown ] && [ -s "$f" ] && [ "$(tail -c 1 "$f" | wc -l)" -eq 0 ]; }; then printf '\n' >> "$f"; fi &&
  printf '%s\n' "$line" >> "$f" && { sync "$f" 2>/dev/null || sync; }
}
"#
    };
}

/// The state shell's loop. Each request is a command line and the target folder's relative path
/// (plus the command's own lines); each answer starts with one status line. Taking the lock
/// also answers with the journal (the first thing a run that locks reads).
const SHELL: &str = concat!(
    r#"umask 077; S="${XDG_STATE_HOME:-$HOME/.local/state}/backtrack"; held= moded=
"#,
    put_fn!(),
    r#"data() { echo DATA; if [ -f "$f" ]; then cat "$f"; fi; printf '\nEND\n'; }
lock_now() {
  if [ -f "$d/lock" ] || err=$( { mkdir -p "$d" && : >> "$d/lock"; } 2>&1 ); then
    exec 9>>"$d/lock"
    if flock -n 9; then
      # When the journal was last written, by the host's clock (`none`: there is none).
      if [ -f "$f" ]; then w=$(date -r "$f" +%s 2>/dev/null); else w=none; fi
      held=$d; printf '%s\n' "$who" > "$d/holder.json"; echo "LOCKED $(date +%s) $w"; data
    else
      exec 9>&-
      i=0; while [ ! -s "$d/holder.json" ] && [ $i -lt 10 ]; do sleep 0.1; i=$((i+1)); done
      printf 'HELD %s\n' "$(head -n 1 "$d/holder.json" 2>/dev/null)"
    fi
  else
    printf 'ERR %s\n' "$(printf '%s' "$err" | tr '\n' ' ')"
  fi
}
# Started with a target folder and a holder: take that target's lock first (its answer is this
# shell's first).
if [ -n "${1-}" ]; then d="$S/$1"; f="$d/history.jsonl"; who=$2; lock_now; fi
while IFS= read -r cmd && IFS= read -r rel; do
  d="$S/$rel"; f="$d/history.jsonl"
  case "$cmd" in
  read) data ;;
  append)
    IFS= read -r ends; IFS= read -r meta; IFS= read -r line
    # Under this shell's lock the run's copy says how the file ends; otherwise it is looked at.
    if [ "$held" = "$d" ] && [ "$ends" != unknown ]; then size=; else size=1; ends=unknown; fi
    # What fails says why on the lines before ERR (stderr joins the answers: no subshell).
    if put 2>&1; then
      # A journal an older backtrack made readable by others becomes its owner's (once a session).
      case "$moded" in *":$f:"*) ;; *) chmod 600 "$f" 2>/dev/null; moded="$moded:$f:" ;; esac
      if [ -n "$size" ]; then echo "OK $(wc -c < "$f")"; else echo OK; fi
    else
      printf '\nERR\n'
    fi ;;
  probe)
    # An HTTP probe from the host itself, in this shell's round trip (no channel to open).
    IFS= read -r url
    if command -v curl >/dev/null 2>&1; then
      code=$(curl -s -o /dev/null -w '%{http_code} %{time_connect}' --noproxy '*' --connect-timeout 1 --max-time 2 -- "$url" 2>/dev/null)
      echo "PROBE $? $code"
    else
      echo "PROBE none"
    fi ;;
  holder)
    if [ -e "$d/lock" ] && ! ( exec 8>>"$d/lock" && flock -n 8 ) 2>/dev/null; then
      printf 'HOLDER %s\n' "$(head -n 1 "$d/holder.json" 2>/dev/null)"
    else
      echo HOLDER
    fi ;;
  lock)
    IFS= read -r who; lock_now ;;
  unlock)
    : > "$d/holder.json"; held=; exec 9>&-; echo OK ;;
  *) echo "ERR unknown request $cmd" ;;
  esac
done"#
);

/// The gate of a remote swap (`$1`: the target's folder), a channel of its own, opened while the
/// swap gets ready: it starts the engine's connection at once (`docker system dial-stdio`, the
/// engine the docker CLI there uses: the one the session named and the connection forwards),
/// reading from a FIFO nothing writes yet; then it reads the intent as an append does (`ends`,
/// `meta`, the record), writes and syncs it, answers `OK`, and only then lets the rest of its
/// input, the swap's Engine API calls, through to the engine. When the record cannot be written
/// it says why before `ERR` and ends: the calls are never passed on. Without a docker CLI it
/// answers `NODOCKER` before reading anything. The engine's connection ends with the channel.
///
/// With a probe URL (the preamble's fourth line, empty for none), the gate waits for the
/// engine's connection to end once its input has (the last call closes it), so every call has
/// been answered, then GETs the URL with the host's `curl` and says how it went on one more line
/// (`PROBE rc code time`, as the state shell's probe; `PROBE none` without `curl`): validation's
/// first probe, in the swap's own round trip.
const GATE: &str = concat!(
    r#"umask 077; S="${XDG_STATE_HOME:-$HOME/.local/state}/backtrack"; d="$S/$1"; f="$d/history.jsonl"
"#,
    put_fn!(),
    r#"command -v docker >/dev/null 2>&1 || { echo NODOCKER; exit 0; }
t=$(mktemp -d) && mkfifo "$t/in" || { printf 'make a FIFO on the host\nERR\n'; exit 0; }
docker system dial-stdio <>"$t/in" 2>/dev/null &
e=$!
trap 'kill $e 2>/dev/null; rm -rf "$t"' EXIT
# A channel closed before its intent (a swap that went another way) writes nothing.
IFS= read -r ends && IFS= read -r meta && IFS= read -r line && IFS= read -r probe || exit 0
if [ "$ends" != unknown ]; then size=; else size=1; fi
put 2>&1 || { printf '\nERR\n'; exit 0; }
chmod 600 "$f" 2>/dev/null; echo OK; cat > "$t/in"
[ -n "$probe" ] || exit 0
wait $e
if command -v curl >/dev/null 2>&1; then
  code=$(curl -s -o /dev/null -w '%{http_code} %{time_connect}' --noproxy '*' --connect-timeout 1 --max-time 2 -- "$probe" 2>/dev/null)
  echo "PROBE $? $code"
else
  echo "PROBE none"
fi"#
);

/// The state shell's input and output (the SSH connection's own session). The output is taken
/// after the first request was sent, so that request is on its way while the session starts.
struct Channel {
    stdin: ChildStdin,
    stdout: Option<BufReader<ChildStdout>>,
    /// Requests sent without waiting for their one-line answer (releasing the lock), read
    /// before the next request's answer.
    unanswered: usize,
}

/// One long-lived `sh` on the host, through the run's SSH connection, that reads and writes the
/// state of the targets there: the connection's own session (`SshSession::open` with
/// `shell_command`), running from the moment the connection is up. Ended (which frees a lock it
/// holds) on drop.
pub struct StateShell {
    ssh: Arc<SshSession>,
    channel: Mutex<Option<Channel>>,
    /// The journals of the targets whose lock this shell holds, by relative folder, as last read
    /// or written (`None`: to be read from the host): while the lock is held, a read costs no
    /// round trip.
    journals: Mutex<std::collections::HashMap<String, Option<Vec<u8>>>>,
    /// The host has no `curl`: probes go through forwards.
    no_curl: std::sync::atomic::AtomicBool,
    /// The lock this shell took as it started (`shell_command_locking`), until `lock` takes it.
    ahead: Mutex<Option<LockedAhead>>,
}

/// A lock the state shell took as it started: the target's folder, and the answer, once read:
/// it is the shell's first.
struct LockedAhead {
    relative: String,
    answer: Option<LockAnswer>,
}

/// The answer to taking a lock: the status line, and the journal when locked.
type LockAnswer = (String, Option<Vec<u8>>);

/// The answer to taking a lock: `LOCKED …` and the journal, or why not.
fn lock_answer(r: &mut impl BufRead) -> std::io::Result<LockAnswer> {
    let line = status_line(r)?;
    let journal = if line.starts_with("LOCKED") {
        Some(data(r)?)
    } else {
        None
    };
    Ok((line, journal))
}

/// The holder record this run writes beside a lock it takes, as JSON.
pub fn holder_json(command: &str) -> String {
    serde_json::to_string(&Holder::me(command)).expect("holder serializes")
}

impl StateShell {
    /// This shell's `probe` as the engine's prober (`Engine::probe_from_host`).
    pub fn prober(self: &Arc<Self>) -> crate::adapters::docker::HostProber {
        let shell = self.clone();
        Arc::new(move |url: &str| shell.probe(url).map(HostProbe::into_answer))
    }
}

/// What an HTTP probe from the host found.
#[derive(Debug, Clone, PartialEq)]
pub enum HostProbe {
    /// An answer with this status.
    Status(u16),
    /// No answer: why, and whether a server was reached at all (a timeout after connecting is).
    Failed { why: String, reached: bool },
}

impl HostProbe {
    /// From the host's answer `PROBE rc code time` (the state shell's and the gate's); `None`
    /// for `PROBE none` (no `curl` there) or anything else.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("PROBE ")?;
        if rest == "none" {
            return None;
        }
        let mut words = rest.split_whitespace();
        let rc = words.next().and_then(|w| w.parse().ok()).unwrap_or(-1);
        let code = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        let connected = words
            .next()
            .and_then(|w| w.parse::<f64>().ok())
            .is_some_and(|t| t > 0.0);
        Some(Self::from_curl(rc, code, connected))
    }

    /// As the engine's prober answers: the status, or why not and whether a server was reached.
    pub fn into_answer(self) -> Result<u16, (String, bool)> {
        match self {
            Self::Status(code) => Ok(code),
            Self::Failed { why, reached } => Err((why, reached)),
        }
    }

    /// From `curl`'s exit code, `%{http_code}` and whether it connected (`%{time_connect}`).
    fn from_curl(rc: i32, code: u16, connected: bool) -> Self {
        match rc {
            0 => Self::Status(code),
            7 => Self::Failed {
                why: "connection refused".into(),
                reached: false,
            },
            6 => Self::Failed {
                why: "could not resolve the host".into(),
                reached: false,
            },
            28 => Self::Failed {
                why: "timed out".into(),
                reached: connected,
            },
            other => Self::Failed {
                why: format!("no answer (curl exit {other})"),
                reached: connected,
            },
        }
    }
}

impl std::fmt::Debug for StateShell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateShell({})", self.ssh.destination())
    }
}

impl StateShell {
    /// The state shell of `ssh`'s own session. One started with `shell_command_locking(relative,
    /// …)` (`SshSession::locked_ahead`) answers that lock first: its answer is read before any
    /// other, and handed to `RemoteDir::lock`.
    pub fn new(ssh: Arc<SshSession>) -> Arc<Self> {
        let ahead = ssh.locked_ahead().map(|relative| LockedAhead {
            relative: relative.to_string(),
            answer: None,
        });
        Arc::new(Self {
            ssh,
            channel: Mutex::new(None),
            journals: Mutex::default(),
            no_curl: std::sync::atomic::AtomicBool::new(false),
            ahead: Mutex::new(ahead),
        })
    }

    /// The answer of the lock taken as the shell started, if it was `relative`'s (read now when
    /// it has not been yet); once. It came with the session's start, so reading it is no wait of
    /// its own on the host (and no sample of its round trip, `Wire::far`).
    fn ahead_answer(&self, relative: &str) -> Result<Option<LockAnswer>, SshError> {
        let what = "take the lock";
        let poisoned = || self.fail(what, "the state shell is poisoned");
        let unread = match self.ahead.lock().map_err(|_| poisoned())?.as_ref() {
            Some(a) if a.relative == relative => a.answer.is_none(),
            _ => return Ok(None),
        };
        if unread {
            // The channel first, then the lock's answer: the order `request` takes them in.
            let mut guard = self.channel.lock().map_err(|_| poisoned())?;
            let mut ahead = self.ahead.lock().map_err(|_| poisoned())?;
            if let Some(a) = ahead.as_mut().filter(|a| a.answer.is_none()) {
                let chan = self.started(&mut guard, what)?;
                if chan.stdout.is_none() {
                    chan.stdout = self.ssh.take_session_output();
                }
                let read = chan
                    .stdout
                    .as_mut()
                    .ok_or_else(|| std::io::Error::other("its output is gone"))
                    .and_then(lock_answer);
                match read {
                    Ok(answer) => a.answer = Some(answer),
                    Err(e) => {
                        guard.take();
                        return Err(self.fail(what, format!("the state shell on the host ended: {e}")));
                    }
                }
            }
        }
        Ok(self.ahead.lock().map_err(|_| poisoned())?.take().and_then(|a| a.answer))
    }

    /// The shell's channel, taking the session's input the first time.
    fn started<'g>(&self, guard: &'g mut Option<Channel>, what: &str) -> Result<&'g mut Channel, SshError> {
        if guard.is_none() {
            let stdin = self
                .ssh
                .take_session_input()
                .ok_or_else(|| self.fail(what, "the state shell on the host ended"))?;
            *guard = Some(Channel {
                stdin,
                stdout: None,
                unanswered: 0,
            });
        }
        Ok(guard.as_mut().expect("started above"))
    }

    /// GETs `url` from the host itself with its `curl`, in one round trip of this shell (a
    /// probe through a forward opens a channel first): `None` when the host has no `curl` (then
    /// never asked again) or the shell ended. Blocking.
    pub fn probe(&self, url: &str) -> Option<HostProbe> {
        use std::sync::atomic::Ordering;
        if self.no_curl.load(Ordering::Relaxed) || url.contains('\n') {
            return None;
        }
        let line = self
            .request(&format!("probe {url} from the host"), &["probe", "-", url], status_line)
            .ok()?;
        let probe = HostProbe::parse(&line);
        if probe.is_none() {
            self.no_curl.store(true, Ordering::Relaxed);
        }
        probe
    }

    fn fail(&self, what: &str, detail: impl Into<String>) -> SshError {
        SshError::Remote {
            host: self.ssh.destination().to_string(),
            what: what.to_string(),
            detail: detail.into(),
        }
    }

    /// Sends one request (lines without newlines) and hands the channel to `answer` to read the
    /// reply. A broken channel is dropped: the next request fails too, as the connection is gone.
    fn request<T>(
        &self,
        what: &str,
        lines: &[&str],
        answer: impl FnOnce(&mut BufReader<ChildStdout>) -> std::io::Result<T>,
    ) -> Result<T, SshError> {
        let mut guard = self
            .channel
            .lock()
            .map_err(|_| self.fail(what, "the state shell is poisoned"))?;
        let chan = self.started(&mut guard, what)?;
        let _waiting = self.ssh.wire().wait(what);
        let result = send(chan, lines).and_then(|()| {
            if chan.stdout.is_none() {
                chan.stdout = self.ssh.take_session_output();
            }
            let stdout = chan
                .stdout
                .as_mut()
                .ok_or_else(|| std::io::Error::other("its output is gone"))?;
            // The lock taken as the shell started answers first.
            if let Ok(mut ahead) = self.ahead.lock()
                && let Some(a) = ahead.as_mut()
                && a.answer.is_none()
            {
                a.answer = Some(lock_answer(stdout)?);
            }
            while chan.unanswered > 0 {
                status_line(stdout)?;
                chan.unanswered -= 1;
            }
            answer(stdout)
        });
        result.map_err(|e| {
            // Dropped: its input closes, and every later request fails too.
            guard.take();
            self.fail(what, format!("the state shell on the host ended: {e}"))
        })
    }
}

impl StateShell {
    /// Sends a request whose one-line answer is not waited for (it is read before the next
    /// answer). Only on a running shell; errors are ignored (the shell ending does the same).
    fn send_unanswered(&self, lines: &[&str]) {
        if let Ok(mut guard) = self.channel.lock()
            && let Some(chan) = guard.as_mut()
            && send(chan, lines).is_ok()
        {
            chan.unanswered += 1;
        }
    }
}

/// Writes request lines (none holds a newline) to the shell.
fn send(chan: &mut Channel, lines: &[&str]) -> std::io::Result<()> {
    let mut text = String::new();
    for l in lines {
        debug_assert!(!l.contains('\n'), "a request line holds no newline");
        text.push_str(l);
        text.push('\n');
    }
    chan.stdin.write_all(text.as_bytes())?;
    chan.stdin.flush()
}

impl Drop for StateShell {
    /// Ends the shell: its input closes after the requests already sent (a lock's release among
    /// them), which the host carries out before the shell ends and its flock goes with it.
    /// Nothing is waited for: the answers would cost a round trip, and the next run's own login
    /// takes many.
    fn drop(&mut self) {
        drop(self.channel.get_mut().ok().and_then(Option::take));
    }
}

/// A `DATA` answer: the status line, the journal's bytes, then `\nEND\n` (a journal line is a
/// JSON record, never `END`, so a single `cat` on the host frames it).
fn data(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let line = status_line(r)?;
    if line != "DATA" {
        return Err(std::io::Error::other(format!("unexpected answer {line:?}")));
    }
    let mut bytes = Vec::new();
    loop {
        let start = bytes.len();
        if r.read_until(b'\n', &mut bytes)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the journal was cut short",
            ));
        }
        if &bytes[start..] == b"END\n" {
            bytes.truncate(start);
            // The newline printed before END.
            bytes.pop();
            return Ok(bytes);
        }
    }
}

/// One status line of an answer, without its newline.
fn status_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no answer"));
    }
    Ok(line.trim_end_matches('\n').to_string())
}

/// The answer to an append: `OK` (with the file's size when the host looked at it), or what the
/// failing command said on the lines before `ERR`.
fn append_answer(r: &mut impl BufRead) -> std::io::Result<Result<Option<usize>, String>> {
    let mut said: Vec<String> = Vec::new();
    loop {
        let line = status_line(r)?;
        if line == "OK" || line.starts_with("OK ") {
            return Ok(Ok(line.strip_prefix("OK ").and_then(|n| n.trim().parse().ok())));
        }
        if line == "ERR" {
            return Ok(Err(if said.is_empty() {
                "the host's shell did not say why".to_string()
            } else {
                said.join("; ")
            }));
        }
        if !line.trim().is_empty() {
            said.push(line.trim().to_string());
        }
    }
}

/// The state folder of one target on a remote host, relative to the remote state root.
#[derive(Debug, Clone)]
pub struct RemoteDir {
    pub shell: Arc<StateShell>,
    /// `targets/local_container_web`: the folder a backtrack run on the host itself would use,
    /// so operators here and there share one history.
    pub relative: String,
}

impl RemoteDir {
    pub fn new(shell: Arc<StateShell>, relative: String) -> Self {
        Self { shell, relative }
    }

    /// `user@host:~/.local/state/backtrack/targets/…`, for messages.
    pub fn display(&self) -> String {
        format!(
            "{}:~/.local/state/backtrack/{}",
            self.shell.ssh.destination().user_at_host(),
            self.relative
        )
    }

    /// The journal's bytes (empty when there is none yet). While this run holds the target's
    /// lock, the journal is read from the host once and then kept here, in step with every
    /// append (an append that finds the file grown by someone else drops the copy).
    pub fn read_journal(&self) -> Result<Vec<u8>, SshError> {
        if let Some(bytes) = self.cached() {
            return Ok(bytes);
        }
        let bytes = self
            .shell
            .request("read the journal", &["read", &self.relative], data)?;
        self.keep(|cache| {
            if let Some(c) = cache {
                *c = Some(bytes.clone());
            }
        });
        Ok(bytes)
    }

    fn cached(&self) -> Option<Vec<u8>> {
        let journals = self.shell.journals.lock().ok()?;
        journals.get(&self.relative)?.clone()
    }

    /// Runs `f` on this target's kept journal: `Some` only while this shell holds its lock.
    fn keep(&self, f: impl FnOnce(Option<&mut Option<Vec<u8>>>)) {
        if let Ok(mut journals) = self.shell.journals.lock() {
            f(journals.get_mut(&self.relative));
        }
    }

    /// Appends one line (ending a torn last line first) and syncs it to disk; writes `meta` as
    /// `target.json` when the journal is new. While this run holds the lock, its copy of the
    /// journal says how the file ends (nobody else may write it), which spares the host from
    /// reading it back; otherwise the host looks, and answers with the file's new size.
    pub fn append_journal(&self, line: &[u8], meta: Option<&[u8]>) -> Result<(), SshError> {
        self.append_journal_lines(&[line], meta)
    }

    /// Appends `lines` in order, each its own append and `sync` on the host, all sent at once:
    /// one round trip for all of them (an operation's `committed` and `finished`). The first
    /// failure is the answer; the lines before it are written.
    pub fn append_journal_lines(&self, lines: &[&[u8]], meta: Option<&[u8]>) -> Result<(), SshError> {
        let what = "append to the journal";
        let lines: Vec<String> = lines
            .iter()
            .map(|l| String::from_utf8_lossy(l).trim_end_matches('\n').to_string())
            .collect();
        let meta = meta.map(String::from_utf8_lossy).unwrap_or_default();
        if lines.iter().any(|l| l.contains('\n')) || meta.contains('\n') {
            return Err(self.shell.fail(what, "a record spans lines"));
        }
        let ends = match self.cached() {
            Some(c) if c.last().is_some_and(|b| *b != b'\n') => "torn",
            Some(_) => "clean",
            None => "unknown",
        };
        let mut request: Vec<&str> = Vec::with_capacity(5 * lines.len());
        for (i, line) in lines.iter().enumerate() {
            // After this run's own append, the file ends cleanly.
            let ends = if i == 0 || ends == "unknown" { ends } else { "clean" };
            request.extend(["append", &self.relative, ends, meta.trim_end(), line]);
        }
        let answers = self.shell.request(what, &request, |r| {
            (0..lines.len())
                .map(|_| append_answer(r))
                .collect::<std::io::Result<Vec<_>>>()
        })?;
        let mut failed = None;
        for (line, answer) in lines.iter().zip(answers) {
            match answer {
                Ok(size) if failed.is_none() => self.keep(|cache| {
                    if let Some(Some(c)) = cache {
                        if c.last().is_some_and(|b| *b != b'\n') {
                            c.push(b'\n');
                        }
                        c.extend_from_slice(line.as_bytes());
                        c.push(b'\n');
                        // The host looked and found another size than ours: read it again.
                        if size.is_some_and(|n| n != c.len()) {
                            *cache.expect("matched") = None;
                        }
                    }
                }),
                // After a failure the copy no longer says how the file ends: read it again.
                Ok(_) => self.keep(|cache| {
                    if let Some(c) = cache {
                        *c = None;
                    }
                }),
                Err(e) => {
                    self.keep(|cache| {
                        if let Some(c) = cache {
                            *c = None;
                        }
                    });
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            None => Ok(()),
            Some(e) => Err(self.shell.fail(what, e)),
        }
    }

    /// The command line of the gate for this target (see `GATE`), for a channel of its own.
    pub fn gate_command(&self) -> String {
        format!("sh -c {} sh {}", shell_quote(GATE), shell_quote(&self.relative))
    }

    /// What the gate reads before the calls: an append of `line` (with `meta` for a new
    /// journal), worded as the state shell's, how the file ends told by this run's copy.
    pub fn gate_preamble(&self, line: &[u8], meta: Option<&[u8]>, probe: Option<&str>) -> Result<Vec<u8>, SshError> {
        let line = String::from_utf8_lossy(line).trim_end_matches('\n').to_string();
        let meta = meta.map(String::from_utf8_lossy).unwrap_or_default();
        let probe = probe.unwrap_or_default();
        if line.contains('\n') || meta.contains('\n') || probe.contains('\n') {
            return Err(self.shell.fail("append to the journal", "a record spans lines"));
        }
        let ends = match self.cached() {
            Some(c) if c.last().is_some_and(|b| *b != b'\n') => "torn",
            Some(_) => "clean",
            None => "unknown",
        };
        Ok(format!("{ends}\n{}\n{line}\n{probe}\n", meta.trim_end()).into_bytes())
    }

    /// The gate wrote `line`: this run's copy of the journal follows.
    pub fn gate_opened(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line).trim_end_matches('\n').to_string();
        self.keep(|cache| {
            if let Some(Some(c)) = cache {
                if c.last().is_some_and(|b| *b != b'\n') {
                    c.push(b'\n');
                }
                c.extend_from_slice(line.as_bytes());
                c.push(b'\n');
            }
        });
    }

    /// The SSH connection this state goes through.
    pub fn ssh(&self) -> &Arc<SshSession> {
        &self.shell.ssh
    }

    /// The live holder of the target's lock on the host, if someone holds it now.
    pub fn holder(&self) -> Option<Holder> {
        let line = self
            .shell
            .request("read the lock", &["holder", &self.relative], status_line)
            .ok()?;
        serde_json::from_str(line.strip_prefix("HOLDER")?.trim()).ok()
    }

    /// Takes the target's lock on the host without waiting; held until the `RemoteLock` is
    /// dropped or the state shell ends.
    pub fn lock(&self, command: &str) -> Result<RemoteLock, LockError> {
        let path = std::path::PathBuf::from(self.display()).join("lock");
        let io = |detail: String| LockError::Io {
            path: path.clone(),
            source: std::io::Error::other(detail),
        };
        // Taken as the shell started, or asked now.
        let (line, journal) = match self.shell.ahead_answer(&self.relative).map_err(|e| io(e.to_string()))? {
            Some(answer) => answer,
            None => self
                .shell
                .request(
                    "take the lock",
                    &["lock", &self.relative, &holder_json(command)],
                    lock_answer,
                )
                .map_err(|e| io(e.to_string()))?,
        };
        tracing::debug!(
            "{}: the lock of {}: {line}",
            self.shell.ssh.destination(),
            self.relative
        );
        if let Some(journal) = journal {
            // Nobody else writes the journal now: it is kept here, from this copy on.
            if let Ok(mut journals) = self.shell.journals.lock() {
                journals.insert(self.relative.clone(), Some(journal));
            }
            return Ok(RemoteLock {
                dir: self.clone(),
                quiet: quiet_before(&line),
            });
        }
        if let Some(rest) = line.strip_prefix("HELD") {
            let holder = serde_json::from_str::<Holder>(rest.trim())
                .map_or_else(|_| "holder unknown".to_string(), |h| h.to_string());
            return Err(LockError::Held { path, holder });
        }
        Err(io(line.strip_prefix("ERR ").unwrap_or(&line).to_string()))
    }
}

/// A lock held on the host by the state shell; released on drop (and when the shell ends).
#[derive(Debug)]
pub struct RemoteLock {
    dir: RemoteDir,
    quiet: bool,
}

impl RemoteLock {
    /// Whether the target's journal was left alone for a while before the lock was taken
    /// (`QUIET`), so no other run was changing the target then: what was read of its engine as
    /// the lock was asked for (`adapters::docker::ahead`) still stands.
    pub fn quiet(&self) -> bool {
        self.quiet
    }
}

/// How long a journal must have been left alone, by the host's clock, for what was read of the
/// engine beside the lock request to count. Every run that changes a target writes its journal
/// within moments of its last change (its ending, or `committed` beside the removal of what it
/// set aside), and releases the lock after that.
pub const QUIET: i64 = 5;

/// From the lock's answer `LOCKED <now> <journal written>` (seconds by the host's clock,
/// `none` for no journal yet): whether the journal was written at least `QUIET` seconds before.
/// Anything the host could not say counts as not quiet.
fn quiet_before(answer: &str) -> bool {
    let mut words = answer.split_whitespace().skip(1);
    let now = words.next().and_then(|w| w.parse::<i64>().ok());
    match (now, words.next()) {
        (_, Some("none")) => true,
        (Some(now), Some(written)) => written.parse::<i64>().is_ok_and(|w| now - w >= QUIET),
        _ => false,
    }
}

impl Drop for RemoteLock {
    fn drop(&mut self) {
        if let Ok(mut journals) = self.dir.shell.journals.lock() {
            journals.remove(&self.dir.relative);
        }
        // Not waited for: the next request, or the shell's end, comes after it on the same
        // channel.
        self.dir.shell.send_unanswered(&["unlock", &self.dir.relative]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state shell started with a target folder and a holder takes that lock before it reads
    /// anything (the answer comes with the session's start); a second one is refused, naming
    /// the holder; requests work as ever after it.
    #[test]
    fn a_state_shell_started_for_a_target_takes_its_lock_first() {
        let home = tempfile::tempdir().unwrap();
        let start = |holder: &str| {
            let mut sh = std::process::Command::new("sh")
                .args(["-c", SHELL, "sh", "t", holder])
                .env("XDG_STATE_HOME", home.path())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let input = sh.stdin.take().unwrap();
            let output = BufReader::new(sh.stdout.take().unwrap());
            (sh, input, output)
        };
        let (mut first, mut input, mut output) = start("{\"pid\":1}");
        let (line, journal) = lock_answer(&mut output).unwrap();
        assert!(
            line.starts_with("LOCKED ") && quiet_before(&line),
            "no journal yet: {line}"
        );
        assert_eq!(journal.as_deref(), Some(&b""[..]));
        let (mut second, second_in, mut second_out) = start("{\"pid\":2}");
        let (refused, none) = lock_answer(&mut second_out).unwrap();
        assert_eq!((refused.as_str(), none), ("HELD {\"pid\":1}", None));
        drop(second_in);
        assert!(second.wait().unwrap().success());
        writeln!(input, "append\nt\nclean\n\n{{\"a\":1}}").unwrap();
        input.flush().unwrap();
        assert_eq!(append_answer(&mut output).unwrap(), Ok(None));
        drop(input);
        assert!(first.wait().unwrap().success());
        assert_eq!(
            std::fs::read_to_string(home.path().join("backtrack/t/history.jsonl")).unwrap(),
            "{\"a\":1}\n"
        );
    }

    #[test]
    fn reads_beside_the_lock_count_only_when_the_journal_was_left_alone() {
        assert!(quiet_before("LOCKED 1000 none"), "no journal: no run ever changed it");
        assert!(quiet_before("LOCKED 1000 995"));
        assert!(quiet_before("LOCKED 1000 100"));
        assert!(!quiet_before("LOCKED 1000 996"), "written 4 s before");
        assert!(!quiet_before("LOCKED 1000 1000"));
        // The host could not say (no `date -r`, an older shell): read again.
        assert!(!quiet_before("LOCKED 1000 "));
        assert!(!quiet_before("LOCKED"));
        assert!(!quiet_before("LOCKED x 10"));
    }

    #[test]
    fn a_journal_read_from_the_host_comes_back_byte_for_byte() {
        // What the shell's `data` prints for each file: DATA, the file, then "\nEND\n".
        for file in [
            "",
            "{\"a\":1}\n",
            "{\"a\":1}\n{\"b\":2}\n",
            "{\"a\":1}\n{\"torn",
            "\n\n",
            "{\"x\":\"END\"}\n",
        ] {
            let framed = format!("DATA\n{file}\nEND\nOK\n");
            let mut r = std::io::Cursor::new(framed.into_bytes());
            assert_eq!(String::from_utf8(data(&mut r).unwrap()).unwrap(), file);
            // The next answer is untouched.
            assert_eq!(status_line(&mut r).unwrap(), "OK");
        }
        let mut cut = std::io::Cursor::new(b"DATA\n{\"a\":1}\n".to_vec());
        assert!(data(&mut cut).is_err());
    }

    /// The state shell itself (run by the local `sh`, as the host's runs it): appends under the
    /// lock and without it, and an append that fails says why.
    #[test]
    fn the_state_shell_appends_and_says_why_an_append_failed() {
        let home = tempfile::tempdir().unwrap();
        let mut sh = std::process::Command::new("sh")
            .args(["-c", SHELL])
            .env("XDG_STATE_HOME", home.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = sh.stdin.take().unwrap();
        let mut output = BufReader::new(sh.stdout.take().unwrap());
        let mut ask = |lines: &[&str]| {
            for l in lines {
                writeln!(input, "{l}").unwrap();
            }
            input.flush().unwrap();
        };
        let file = home.path().join("backtrack/t/history.jsonl");
        // Without the lock the host looks at the file and tells its size.
        ask(&["append", "t", "unknown", "{\"target\":\"t\"}", "{\"a\":1}"]);
        assert_eq!(append_answer(&mut output).unwrap(), Ok(Some(8)));
        ask(&["lock", "t", "{\"pid\":1}"]);
        // Written a moment ago: not quiet (what was read beside the lock is read again).
        let locked = status_line(&mut output).unwrap();
        assert!(locked.starts_with("LOCKED "), "{locked}");
        assert!(!quiet_before(&locked), "{locked}");
        assert_eq!(data(&mut output).unwrap(), b"{\"a\":1}\n");
        // Under the lock the run's copy says how the file ends: a torn end is ended first.
        std::fs::write(&file, "{\"a\":1}\n{\"torn").unwrap();
        ask(&["append", "t", "torn", "", "{\"b\":2}"]);
        assert_eq!(append_answer(&mut output).unwrap(), Ok(None));
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "{\"a\":1}\n{\"torn\n{\"b\":2}\n"
        );
        assert_eq!(
            std::fs::read_to_string(home.path().join("backtrack/t/target.json")).unwrap(),
            "{\"target\":\"t\"}\n"
        );
        // A journal that cannot be written: the shell's own words come back, and it goes on.
        std::fs::create_dir_all(home.path().join("backtrack/u/history.jsonl")).unwrap();
        ask(&["append", "u", "unknown", "", "{\"c\":3}"]);
        let why = append_answer(&mut output).unwrap().unwrap_err();
        assert!(
            why.contains("history.jsonl") && why.to_lowercase().contains("directory"),
            "{why}"
        );
        // An empty record (a request cut short) is refused, the journal left as it was.
        ask(&["append", "t", "clean", "", ""]);
        let why = append_answer(&mut output).unwrap().unwrap_err();
        assert!(why.contains("empty record"), "{why}");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "{\"a\":1}\n{\"torn\n{\"b\":2}\n"
        );
        ask(&["unlock", "t"]);
        assert_eq!(status_line(&mut output).unwrap(), "OK");
        drop(input);
        assert!(sh.wait().unwrap().success());
    }
}

/// A server on a free loopback port that answers one request with `answer`: its port, and the
/// thread to join once the request was made.
#[cfg(test)]
fn serve_once(answer: &'static [u8]) -> (u16, std::thread::JoinHandle<()>) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = c.read(&mut buf).unwrap();
        c.write_all(answer).unwrap();
    });
    (port, server)
}

#[cfg(test)]
mod gate_tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};

    use super::GATE;

    /// Runs the gate with the local `sh` in a home of its own, `docker` on PATH being `fake`
    /// (None: no docker there), `input` on its stdin; returns its stdout and what the fake
    /// docker was handed.
    fn gate(fake: Option<&str>, input: &[u8], prepare: impl FnOnce(&std::path::Path)) -> (String, String, String) {
        let home = tempfile::tempdir().unwrap();
        let bin = home.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let handed = home.path().join("handed");
        if let Some(script) = fake {
            let path = bin.join("docker");
            std::fs::write(&path, script.replace("HANDED", &handed.display().to_string())).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        for tool in [
            "mktemp", "mkfifo", "cat", "rm", "mkdir", "mv", "tail", "wc", "sync", "chmod", "kill", "sleep", "curl",
        ] {
            if let Some(found) = ["/usr/bin", "/bin"]
                .iter()
                .map(|d| std::path::Path::new(d).join(tool))
                .find(|p| p.exists())
            {
                std::os::unix::fs::symlink(found, bin.join(tool)).ok();
            }
        }
        prepare(home.path());
        let mut child = Command::new("/bin/sh")
            .args(["-c", GATE, "sh", "targets/web"])
            .env_clear()
            .env("PATH", &bin)
            .env("HOME", home.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // A gate that ends before reading (NODOCKER) closes its end: that is no failure here.
        let _ = stdin.write_all(input).and_then(|()| stdin.flush());
        // The channel stays open while the engine answers: wait until the calls were handed on
        // (or a while, when none will be) before closing it.
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_millis(if fake.is_some() { 2000 } else { 200 });
        while std::time::Instant::now() < deadline
            && std::fs::metadata(&handed).map_or(true, |m| m.len() == 0)
            && child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let journal = std::fs::read_to_string(home.path().join(".local/state/backtrack/targets/web/history.jsonl"))
            .unwrap_or_default();
        let handed = std::fs::read_to_string(&handed).unwrap_or_default();
        (String::from_utf8_lossy(&out.stdout).to_string(), journal, handed)
    }

    /// A docker CLI whose dial-stdio hands on what it reads, to a file.
    const FAKE: &str = "#!/bin/sh\n[ \"$1 $2\" = 'system dial-stdio' ] || exit 9\nexec cat > HANDED\n";

    #[test]
    fn the_gate_writes_the_intent_first_then_hands_the_calls_on() {
        let input =
            b"unknown\n{\"target\":\"web\"}\n{\"phase\":\"started\"}\n\nPOST /v1.41/containers/web/stop HTTP/1.1\r\n\r\n";
        let (out, journal, handed) = gate(Some(FAKE), input, |_| {});
        assert_eq!(out, "OK\n");
        assert_eq!(journal, "{\"phase\":\"started\"}\n");
        assert_eq!(handed, "POST /v1.41/containers/web/stop HTTP/1.1\r\n\r\n");
    }

    /// A docker CLI whose dial-stdio hands on what it reads until the request that closes the
    /// connection, then ends (as the engine's connection does after answering it).
    const CLOSING: &str = "#!/bin/sh\n[ \"$1 $2\" = 'system dial-stdio' ] || exit 9\n\
        while IFS= read -r l; do printf '%s\\n' \"$l\" >> HANDED; case \"$l\" in Connection:*) exit 0;; esac; done\n";

    /// With a probe URL the gate waits for the calls to be answered (the engine's connection
    /// ends), then probes with the host's curl and says how it went after them.
    #[test]
    fn a_gate_with_a_probe_asks_it_once_the_calls_are_answered() {
        assert!(
            Command::new("curl").arg("--version").output().is_ok(),
            "the test needs curl (as the hosts do for a probe in the swap's round trip)"
        );
        let (port, server) = super::serve_once(b"HTTP/1.1 204 No Content\r\n\r\n");
        let input = format!(
            "unknown\n\n{{\"phase\":\"started\"}}\nhttp://127.0.0.1:{port}/health\n\
             POST /v1.41/containers/web/start HTTP/1.1\r\nContent-Length: 0\r\n\r\n\
             GET /v1.41/containers/web/json HTTP/1.1\r\nConnection: close\r\n\r\n"
        );
        let (out, journal, handed) = gate(Some(CLOSING), input.as_bytes(), |_| {});
        server.join().unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.first(), Some(&"OK"), "{out:?}");
        assert!(
            lines.get(1).is_some_and(|l| l.starts_with("PROBE 0 204 ")),
            "the probe's answer after the calls: {out:?}"
        );
        assert_eq!(super::HostProbe::parse(lines[1]), Some(super::HostProbe::Status(204)));
        assert_eq!(journal, "{\"phase\":\"started\"}\n");
        assert!(handed.contains("Connection: close"), "{handed:?}");
    }

    #[test]
    fn a_gate_that_cannot_write_the_intent_hands_nothing_on() {
        let input = b"unknown\n\n{\"phase\":\"started\"}\n\nPOST /v1.41/containers/web/stop HTTP/1.1\r\n\r\n";
        let (out, journal, handed) = gate(Some(FAKE), input, |home| {
            // The journal's folder cannot be made: a file is where it would be.
            std::fs::create_dir_all(home.join(".local/state/backtrack")).unwrap();
            std::fs::write(home.join(".local/state/backtrack/targets"), "").unwrap();
        });
        assert!(out.ends_with("\nERR\n"), "{out:?}");
        assert!(out.contains("targets"), "it says why: {out:?}");
        assert_eq!(journal, "");
        assert_eq!(handed, "", "no call reached the engine");
    }

    /// The gate is opened ahead of the swap; a swap that goes another way (the host turned out
    /// near, the plan is start-first, or it failed first) closes it unused. That once appended
    /// an empty line, ahead of the first record (so `target.json` was never written).
    #[test]
    fn a_gate_closed_before_its_intent_writes_nothing() {
        let (out, journal, handed) = gate(Some(FAKE), b"", |home| {
            let dir = home.join(".local/state/backtrack/targets/web");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("history.jsonl"), "{\"phase\":\"finished\"}\n").unwrap();
        });
        assert_eq!(out, "");
        assert_eq!(journal, "{\"phase\":\"finished\"}\n");
        assert_eq!(handed, "");
    }

    #[test]
    fn a_gate_without_a_docker_cli_says_so_before_reading_anything() {
        let (out, journal, handed) = gate(None, b"unknown\n\n{\"phase\":\"started\"}\n", |_| {});
        assert_eq!(out, "NODOCKER\n");
        assert_eq!((journal.as_str(), handed.as_str()), ("", ""));
    }
}

#[cfg(test)]
mod probe_tests {
    use std::io::{BufRead, BufReader, Write};

    use super::{HostProbe, SHELL};

    /// Asks the state shell (the local `sh`, with this machine's `curl`) to probe `url`.
    fn probe(url: &str) -> String {
        let mut sh = std::process::Command::new("sh")
            .args(["-c", SHELL])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = sh.stdin.take().unwrap();
        writeln!(input, "probe\n-\n{url}").unwrap();
        drop(input);
        let mut line = String::new();
        BufReader::new(sh.stdout.take().unwrap()).read_line(&mut line).unwrap();
        sh.wait().unwrap();
        line.trim_end().to_string()
    }

    #[test]
    fn the_state_shell_probes_from_the_host_and_tells_refused_from_answered() {
        assert!(
            std::process::Command::new("curl").arg("--version").output().is_ok(),
            "the test needs curl (as the hosts do for a probe in one round trip)"
        );
        let (port, server) = super::serve_once(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        let answered = probe(&format!("http://127.0.0.1:{port}/health"));
        server.join().unwrap();
        let words: Vec<&str> = answered.split_whitespace().collect();
        assert_eq!(&words[..3], ["PROBE", "0", "503"], "{answered}");
        // Nothing listens there any more.
        let refused = probe(&format!("http://127.0.0.1:{port}/health"));
        assert!(refused.starts_with("PROBE 7 000"), "{refused}");
    }

    #[test]
    fn curl_answers_map_to_what_was_reached() {
        assert_eq!(HostProbe::from_curl(0, 200, true), HostProbe::Status(200));
        let refused = HostProbe::from_curl(7, 0, false);
        assert!(
            matches!(refused, HostProbe::Failed { reached: false, .. }),
            "{refused:?}"
        );
        // A timeout after connecting reached a server (a hung app), one before did not.
        assert!(matches!(
            HostProbe::from_curl(28, 0, true),
            HostProbe::Failed { reached: true, .. }
        ));
        assert!(matches!(
            HostProbe::from_curl(28, 0, false),
            HostProbe::Failed { reached: false, .. }
        ));
        assert!(matches!(
            HostProbe::from_curl(52, 0, true),
            HostProbe::Failed { reached: true, .. }
        ));
    }
}
