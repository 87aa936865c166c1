//! The one error of the tools that retrying cannot fix.

use std::fmt;

/// A failure that retrying cannot fix: a bad argument, or the server refusing for good.
/// The tools exit with status 2 on it.
#[derive(Debug)]
pub struct Fatal(pub String);

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}
