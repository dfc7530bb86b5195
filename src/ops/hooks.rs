//! Hooks: the programs of `[hooks]` (argv lists, never a shell), run on the operator's machine in
//! the config file's folder, with the operation in their environment (`BACKTRACK_OP`,
//! `BACKTRACK_FROM_VERSION`, `BACKTRACK_TO_VERSION`, `BACKTRACK_DIGEST`, `BACKTRACK_TARGET`,
//! `BACKTRACK_HOSTS`, `BACKTRACK_RESULT`, `BACKTRACK_REASON`), their output shown line by line
//! with a prefix, and killed past their timeout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::output::Printer;

/// The default time a hook may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a hook is told about the operation.
#[derive(Debug, Clone, Default)]
pub struct HookEnv {
    pub op: String,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub digest: Option<String>,
    pub target: String,
    pub hosts: Vec<String>,
    pub result: Option<String>,
    pub reason: Option<String>,
}

impl HookEnv {
    fn vars(&self) -> Vec<(&'static str, String)> {
        let o = |v: &Option<String>| v.clone().unwrap_or_default();
        vec![
            ("BACKTRACK_OP", self.op.clone()),
            ("BACKTRACK_FROM_VERSION", o(&self.from_version)),
            ("BACKTRACK_TO_VERSION", o(&self.to_version)),
            ("BACKTRACK_DIGEST", o(&self.digest)),
            ("BACKTRACK_TARGET", self.target.clone()),
            ("BACKTRACK_HOSTS", self.hosts.join(",")),
            ("BACKTRACK_RESULT", o(&self.result)),
            ("BACKTRACK_REASON", o(&self.reason)),
        ]
    }
}

/// The `[hooks]` of a run, with where they run from; `None` everywhere with `--no-hooks`.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub pre: Option<Vec<String>>,
    pub post: Option<Vec<String>>,
    pub on_revert: Option<Vec<String>>,
    pub timeout: Duration,
    pub dir: PathBuf,
}

impl Hooks {
    pub fn from_project(project: &crate::settings::Project, skip: bool) -> Self {
        if skip {
            return Self::default();
        }
        Self {
            pre: project.hooks.pre.clone(),
            post: project.hooks.post.clone(),
            on_revert: project.hooks.on_revert.clone(),
            timeout: project.hooks.timeout.unwrap_or(DEFAULT_TIMEOUT),
            dir: project
                .config_path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("run the {phase} hook `{program}`: {source}")]
    Spawn {
        phase: &'static str,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("run the {phase} hook `{program}`: it exited with {status}")]
    Failed {
        phase: &'static str,
        program: String,
        status: String,
    },
    #[error("run the {phase} hook `{program}`: it did not finish within {}; it was killed", crate::domain::duration::format(*timeout))]
    TimedOut {
        phase: &'static str,
        program: String,
        timeout: Duration,
    },
}

/// Runs one hook to its end (or its timeout). `Ok(None)` when no hook is configured for `phase`.
pub async fn run(
    printer: &Printer,
    phase: &'static str,
    argv: Option<&[String]>,
    env: &HookEnv,
    hooks: &Hooks,
) -> Result<Option<String>, HookError> {
    let Some((program, args)) = argv.and_then(|a| a.split_first()) else {
        return Ok(None);
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(&hooks.dir)
        .envs(env.vars())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        phase,
        program: program.clone(),
        source,
    })?;
    let prefix = format!("[{phase} hook]");
    let pump = |r: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
        let prefix = prefix.clone();
        let printer = printer.clone();
        async move {
            let Some(r) = r else { return };
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                printer.note(format!("{prefix} {}", crate::output::escape(&line)));
            }
        }
    };
    let out = pump(child.stdout.take().map(|s| Box::new(s) as Box<_>));
    let err = pump(child.stderr.take().map(|s| Box::new(s) as Box<_>));
    let waited = tokio::time::timeout(hooks.timeout, async {
        let (status, _, _) = tokio::join!(child.wait(), out, err);
        status
    })
    .await;
    match waited {
        Err(_) => {
            let _ = child.kill().await;
            Err(HookError::TimedOut {
                phase,
                program: program.clone(),
                timeout: hooks.timeout,
            })
        }
        Ok(Err(source)) => Err(HookError::Spawn {
            phase,
            program: program.clone(),
            source,
        }),
        Ok(Ok(status)) if status.success() => Ok(Some(format!("{phase} hook `{program}`: ok"))),
        Ok(Ok(status)) => Err(HookError::Failed {
            phase,
            program: program.clone(),
            status: status
                .code()
                .map_or_else(|| status.to_string(), |c| format!("code {c}")),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(timeout: Duration) -> Hooks {
        Hooks {
            timeout,
            dir: std::env::temp_dir(),
            ..Default::default()
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_hook_sees_the_operation_and_its_exit_status_counts() {
        let printer = Printer::new(crate::cli::OutputFormat::Table, false);
        let env = HookEnv {
            op: "rollback".into(),
            to_version: Some("1.1.0".into()),
            target: "container web".into(),
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("seen");
        let script = format!(
            "echo \"$BACKTRACK_OP $BACKTRACK_TO_VERSION $BACKTRACK_TARGET\" > {}",
            out.display()
        );
        let argv = vec!["/bin/sh".to_string(), "-c".into(), script];
        let ok = rt().block_on(run(&printer, "pre", Some(&argv), &env, &hooks(Duration::from_secs(5))));
        assert!(ok.unwrap().is_some());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "rollback 1.1.0 container web\n");
        let failing = vec!["/bin/sh".to_string(), "-c".into(), "exit 3".into()];
        let err = rt()
            .block_on(run(
                &printer,
                "post",
                Some(&failing),
                &env,
                &hooks(Duration::from_secs(5)),
            ))
            .unwrap_err();
        assert!(err.to_string().contains("exited with code 3"), "{err}");
        assert!(
            rt().block_on(run(&printer, "pre", None, &env, &hooks(Duration::from_secs(5))))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed() {
        let printer = Printer::new(crate::cli::OutputFormat::Table, false);
        let argv = vec!["/bin/sleep".to_string(), "30".into()];
        let started = std::time::Instant::now();
        let err = rt()
            .block_on(run(
                &printer,
                "pre",
                Some(&argv),
                &HookEnv::default(),
                &hooks(Duration::from_millis(300)),
            ))
            .unwrap_err();
        assert!(matches!(err, HookError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let missing = vec!["/no/such/program".to_string()];
        let err = rt()
            .block_on(run(
                &printer,
                "pre",
                Some(&missing),
                &HookEnv::default(),
                &hooks(Duration::from_secs(1)),
            ))
            .unwrap_err();
        assert!(err.to_string().contains("/no/such/program"), "{err}");
    }
}
