//! The ControlMaster process of an [`SshSession`]: `open` starts the system `ssh` as the master
//! on a control socket in a private folder, with the forwards known ahead, and waits (bounded)
//! until it has logged in, telling apart why it could not; the connection's own session (the
//! caller's state shell, after `PRELUDE` names the host's engine) and its input and output;
//! closing without waiting on the host.

use std::io::{BufRead, BufReader};
use std::process::{ChildStdin, ChildStdout, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::forward::{Premade, forwardable, tcp_target};
use super::{Ahead, SshError, SshOptions, SshSession, base_args, own_group, shell_quote};
use crate::domain::address::SshDestination;

/// Runs first in the connection's own session, before the caller's command: one line naming the
/// engine the docker CLI would use there, read from what it reads (`DOCKER_HOST`, then
/// `DOCKER_CONTEXT`, then the config's current context, then the default socket) without
/// starting it; empty when a context of the user's choosing decides (then only the docker CLI
/// itself can say).
const PRELUDE: &str = r#"e=unix:///var/run/docker.sock
if [ -n "${DOCKER_HOST+set}" ]; then e=${DOCKER_HOST:-$e}
elif [ -n "${DOCKER_CONTEXT+set}" ]; then [ "$DOCKER_CONTEXT" = default ] || e=
else
  c="${DOCKER_CONFIG:-$HOME/.docker}/config.json"
  if [ -f "$c" ]; then
    while IFS= read -r l || [ -n "$l" ]; do
      case "$l" in *'"currentContext"'*)
        case "$l" in *'"currentContext": "default"'*|*'"currentContext":"default"'*) ;; *) e= ;; esac ;;
      esac
    done < "$c"
  fi
fi
echo "ENGINE $e"
eval "exec $1""#;

impl SshSession {
    /// Connects and authenticates, within the connect timeout, with `session` (a command line
    /// for the remote user's shell) as the connection's own session: it starts in the same
    /// flight as the login, so it is running on the host as soon as the connection is up, and
    /// its input and output are handed out once (`take_session_input`, `take_session_output`). Blocking (it runs once per
    /// run, before anything else can happen).
    pub fn open(
        dest: &SshDestination,
        options: &SshOptions,
        session: &str,
        ahead: &Ahead,
    ) -> Result<Arc<Self>, SshError> {
        let wire = crate::adapters::wire::Wire::new(dest.to_string());
        let dir = tempfile::Builder::new()
            .prefix("backtrack-ssh-")
            .tempdir_in(std::env::temp_dir())
            .map_err(|e| SshError::NoClient(format!("make a folder for the control socket: {e}")))?;
        let control = dir.path().join("c");
        let log_path = dir.path().join("master.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| SshError::NoClient(format!("create {}: {e}", log_path.display())))?;
        let secs = options.connect_timeout.as_secs().max(1);
        // Forwards known ahead: the master listens for them from the start.
        let mut premade = Vec::new();
        let mut listen = Vec::new();
        if let Some(path) = ahead.engine_socket.as_deref().filter(|p| forwardable(p)) {
            let local = dir.path().join("engine.sock");
            listen.push(format!("{}:{path}", local.display()));
            premade.push((Premade::Engine(path.to_string()), local));
        }
        for (i, (host, port)) in ahead.probes.iter().enumerate() {
            let local = dir.path().join(format!("probe-{i}.sock"));
            listen.push(format!("{}:{}", local.display(), tcp_target(host, *port)));
            premade.push((Premade::Probe(host.clone(), *port), local));
        }
        let mut cmd = std::process::Command::new("ssh");
        cmd.args(base_args(dest, options))
            .arg("-S")
            .arg(&control)
            .args(["-M", "-o", "ControlPersist=no"])
            .args(listen.iter().flat_map(|l| ["-L", l.as_str()]))
            .arg("-o")
            .arg(format!("ConnectTimeout={secs}"))
            .args(["-o", "ServerAliveInterval=3", "-o", "ServerAliveCountMax=3"])
            .arg("--")
            .arg(&dest.host)
            .arg(session_line(session))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut master = own_group(cmd).spawn().map_err(|e| SshError::NoClient(e.to_string()))?;
        // The master listens on its control socket once it has logged in (it appears whole:
        // ssh links it into place after `listen`); an ssh that exits first failed.
        let deadline = Instant::now() + options.connect_timeout + Duration::from_millis(500);
        let failed = loop {
            if control.exists() {
                break None;
            }
            if let Some(s) = master.try_wait().map_err(|e| SshError::NoClient(e.to_string()))? {
                break Some(Some(s));
            }
            if Instant::now() >= deadline {
                let _ = master.kill();
                let _ = master.wait();
                break Some(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if let Some(exited) = failed {
            return Err(match exited {
                Some(_) => classify_connect(dest, &std::fs::read_to_string(&log_path).unwrap_or_default()),
                None => SshError::Unreachable {
                    host: dest.to_string(),
                    detail: format!("no answer within {}s", options.connect_timeout.as_secs_f32()),
                },
            });
        }
        let (input, output) = (
            master.stdin.take().expect("piped stdin"),
            BufReader::new(master.stdout.take().expect("piped stdout")),
        );
        let session = Arc::new(Self {
            dest: dest.clone(),
            options: options.clone(),
            control,
            dir,
            dial_error: Arc::default(),
            forwards: tokio::sync::Mutex::default(),
            spare: Mutex::default(),
            master: Mutex::new(Some(master)),
            session_in: Mutex::new(Some(input)),
            session_out: Mutex::new(Some(output)),
            endpoint: OnceLock::new(),
            engine_socket: OnceLock::new(),
            premade,
            wire,
            locked_ahead: OnceLock::new(),
        });
        // The way to the engine is readied while the caller goes on (it takes the session's
        // first line and one `ssh -O forward`).
        let ready = session.clone();
        std::thread::spawn(move || {
            ready.engine_socket();
        });
        Ok(session)
    }

    /// The input of the connection's own session (the command given to `open`), once: `None`
    /// when it was taken before. Closing it ends that command.
    pub fn take_session_input(&self) -> Option<ChildStdin> {
        self.session_in.lock().ok()?.take()
    }

    /// The output of the connection's own session, once, past its first line (which names the
    /// engine; see `PRELUDE`): it blocks until that line has come.
    pub fn take_session_output(&self) -> Option<BufReader<ChildStdout>> {
        let mut out = self.session_out.lock().ok()?;
        if let Some(o) = out.as_mut() {
            self.read_endpoint(o);
        }
        out.take()
    }

    /// The engine the docker CLI on the host would use, as the session's first line said it:
    /// `Some("unix:///…")` and the like, `None` when it could not tell (a context of the user's
    /// choosing) or the session ended. Blocks until that line has come (the session starts
    /// with the connection).
    pub(super) fn endpoint(&self) -> Option<&str> {
        if self.endpoint.get().is_none()
            && let Ok(mut out) = self.session_out.lock()
            && let Some(o) = out.as_mut()
        {
            self.read_endpoint(o);
        }
        self.endpoint.get().and_then(Option::as_deref)
    }

    fn read_endpoint(&self, out: &mut BufReader<ChildStdout>) {
        self.endpoint.get_or_init(|| {
            let mut line = String::new();
            out.read_line(&mut line).ok()?;
            self.wire.session_started();
            let e = line.strip_prefix("ENGINE")?.trim();
            (!e.is_empty()).then(|| e.to_string())
        });
    }
}

impl Drop for SshSession {
    /// Ends the run's side of the connection without waiting on the host: forwards stop, the
    /// session's input closes (its command ends), and the master, whose channels are all
    /// closing, exits by itself; it is reaped in the background, and ended if it lingers.
    fn drop(&mut self) {
        for (_, _, task) in std::mem::take(self.forwards.get_mut()) {
            task.abort();
        }
        drop(self.session_in.get_mut().ok().and_then(Option::take));
        drop(self.spare.get_mut().ok().and_then(Option::take));
        if let Some(mut master) = self.master.get_mut().ok().and_then(Option::take) {
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if !matches!(master.try_wait(), Ok(None)) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = master.kill();
                let _ = master.wait();
            });
        }
    }
}

/// The remote command line of the connection's own session: `PRELUDE`, then `session`.
fn session_line(session: &str) -> String {
    format!("sh -c {} sh {}", shell_quote(PRELUDE), shell_quote(session))
}

/// Turns what `ssh` said when the connection failed into the error a person can act on.
fn classify_connect(dest: &SshDestination, said: &str) -> SshError {
    let host = dest.to_string();
    let detail = said
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with('@') && !l.starts_with("Warning: Permanently"))
        .unwrap_or("ssh exited without saying why")
        .to_string();
    if said.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        SshError::ChangedHostKey { host, detail }
    } else if said.contains("Host key verification failed") || said.contains("host key is known") {
        SshError::UnknownHostKey {
            host: dest.host.clone(),
            port: dest.port.unwrap_or(22),
            detail,
        }
    } else if said.contains("Permission denied") || said.contains("Too many authentication failures") {
        SshError::AuthRefused { host, detail }
    } else {
        SshError::Unreachable { host, detail }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::dest;
    use super::*;

    #[test]
    fn connect_failures_are_told_apart() {
        let d = dest();
        let cases = [
            (
                "No ED25519 host key is known for [ec2-1.example.com]:2222 and you have requested strict checking.\r\nHost key verification failed.\r\n",
                "UnknownHostKey",
            ),
            (
                "@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.\n",
                "ChangedHostKey",
            ),
            (
                "ubuntu@ec2-1.example.com: Permission denied (publickey).\n",
                "AuthRefused",
            ),
            (
                "ssh: connect to host ec2-1.example.com port 2222: Connection refused\n",
                "Unreachable",
            ),
            (
                "ssh: Could not resolve hostname nowhere: Name or service not known\n",
                "Unreachable",
            ),
        ];
        for (said, want) in cases {
            let e = classify_connect(&d, said);
            let got = format!("{e:?}");
            assert!(got.starts_with(want), "{said:?} -> {got}");
            assert!(e.hint().is_some(), "{got}");
        }
        let e = classify_connect(&d, "Host key verification failed.\n");
        assert!(
            e.hint().unwrap().contains("ssh-keyscan -p 2222 ec2-1.example.com"),
            "{:?}",
            e.hint()
        );
    }

    /// Runs the session line in a local `sh` with only `env` (and a home of its own) set, as
    /// sshd would on the host; returns its first two lines.
    fn session_start(env: &[(&str, &str)], config: Option<&str>) -> (String, String) {
        let home = tempfile::tempdir().unwrap();
        if let Some(c) = config {
            std::fs::create_dir_all(home.path().join(".docker")).unwrap();
            std::fs::write(home.path().join(".docker/config.json"), c).unwrap();
        }
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(session_line("echo 'the session runs'"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", home.path())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines().map(str::to_string);
        (lines.next().unwrap_or_default(), lines.next().unwrap_or_default())
    }

    #[test]
    fn the_session_names_the_engine_the_docker_cli_would_use_then_runs() {
        let default = "ENGINE unix:///var/run/docker.sock";
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, &'a str);
        let cases: &[Case] = &[
            (&[], None, default),
            (
                &[("DOCKER_HOST", "unix:///run/user/1000/docker.sock")],
                None,
                "ENGINE unix:///run/user/1000/docker.sock",
            ),
            (
                &[("DOCKER_HOST", "tcp://10.0.0.5:2375")],
                None,
                "ENGINE tcp://10.0.0.5:2375",
            ),
            // Set but empty: the default context, as the docker CLI reads it.
            (&[("DOCKER_HOST", "")], None, default),
            // DOCKER_HOST wins over a context, as it does for the docker CLI.
            (
                &[("DOCKER_HOST", "unix:///x.sock"), ("DOCKER_CONTEXT", "remote")],
                None,
                "ENGINE unix:///x.sock",
            ),
            (&[("DOCKER_CONTEXT", "default")], None, default),
            (&[("DOCKER_CONTEXT", "rootless")], None, "ENGINE"),
            (&[], Some("{\n  \"currentContext\": \"rootless\"\n}"), "ENGINE"),
            (&[], Some("{\"auths\":{},\"currentContext\":\"default\"}"), default),
            (&[], Some("{\"auths\": {}}"), default),
        ];
        for (env, config, want) in cases {
            let (first, second) = session_start(env, *config);
            assert_eq!(first.trim_end(), *want, "{env:?} {config:?}");
            assert_eq!(second, "the session runs", "{env:?} {config:?}");
        }
    }
}
