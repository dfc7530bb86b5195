//! Ctrl-C and SIGTERM during an operation that moves the target: instead of dying half way, the
//! operation sees the flag at its next step and finishes or reverts.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// From now on, Ctrl-C and SIGTERM set the flag instead of killing the process.
pub fn install() {
    tokio::spawn(async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if !INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!("interrupted: finishing the current step, then putting the previous version back");
            }
        }
    });
}

pub fn requested() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
