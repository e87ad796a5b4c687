//! Errors that carry an exit code: 1 a check failed, 2 bad input (every other error).

/// An error that carries its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Set on data-parallel ranks other than 0: rank 0 says what every rank would (warnings, notes).
pub static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A line on stderr (a warning, a note, progress), unless this process is a quiet rank.
pub fn say(line: impl std::fmt::Display) {
    if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("{line}");
    }
}

/// A failed check (exit 1), as opposed to bad input (exit 2).
pub fn check_failed(message: impl Into<String>) -> anyhow::Error {
    Failure { code: 1, message: message.into() }.into()
}
