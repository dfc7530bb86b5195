//! Ctrl-C and SIGTERM. Until an operation starts changing the target (it `arm`s), an interrupt
//! cancels at once with exit 130: nothing was changed, so there is nothing to finish (this covers
//! prompts and pulls). Once armed, the operation sees the flag at its next step and finishes or
//! reverts instead of dying half way.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static ARMED: AtomicBool = AtomicBool::new(false);
/// What an interrupt leads to once armed, told to the person who pressed Ctrl-C.
static THEN: std::sync::Mutex<&str> =
    std::sync::Mutex::new("finishing the current step, then putting the previous version back");

/// From now on, Ctrl-C and SIGTERM are handled here instead of killing the process.
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
            if !ARMED.load(Ordering::SeqCst) {
                eprintln!("\ncancelled: nothing was changed");
                std::process::exit(crate::error::INTERRUPTED);
            }
            if !INTERRUPTED.swap(true, Ordering::SeqCst) {
                let then = *THEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                eprintln!("interrupted: {then}");
            }
        }
    });
}

/// The target is about to change: from here an interrupt finishes the step and reverts.
pub fn arm() {
    ARMED.store(true, Ordering::SeqCst);
}

/// Like [`arm`], for an operation whose interrupt leads to something else than a revert (`then`
/// is told to the person, e.g. "removing the scratch copy").
pub fn arm_then(then: &'static str) {
    *THEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = then;
    arm();
}

pub fn requested() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
