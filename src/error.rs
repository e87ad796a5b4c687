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

/// A failed check (exit 1), as opposed to bad input (exit 2).
pub fn check_failed(message: impl Into<String>) -> anyhow::Error {
    Failure { code: 1, message: message.into() }.into()
}
