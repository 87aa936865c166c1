//! What is wrong with a name: [`NameError`], its [`NameKind`] and its [`NameErrorReason`].

use std::fmt;

/// Which kind of name failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A channel name.
    Channel,
    /// A device id.
    Device,
    /// An SSE event type.
    EventType,
}

impl NameKind {
    /// The lower-case word used in messages and error codes.
    pub fn as_str(self) -> &'static str {
        match self {
            NameKind::Channel => "channel",
            NameKind::Device => "device",
            NameKind::EventType => "event type",
        }
    }
}

/// A channel name, device id or event type that breaks the naming rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError {
    /// What was being named.
    pub kind: NameKind,
    /// Why it was refused.
    pub reason: NameErrorReason,
}

/// Why a name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameErrorReason {
    /// The name is empty.
    Empty,
    /// The name is longer than the limit.
    TooLong {
        /// The limit, in bytes.
        max: usize,
    },
    /// The name holds a character outside `A-Za-z0-9_.:-`.
    BadCharacter,
    /// The name is `.` or `..`, which a URL path, a proxy or a file system may resolve away.
    DotSegment,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = self.kind.as_str();
        match self.reason {
            NameErrorReason::Empty => write!(f, "{what} must not be empty"),
            NameErrorReason::DotSegment => write!(f, "{what} must not be `.` or `..`"),
            NameErrorReason::TooLong { max } => write!(f, "{what} is longer than {max} characters"),
            NameErrorReason::BadCharacter => {
                write!(f, "{what} may hold only the characters A-Z a-z 0-9 _ . : -")
            }
        }
    }
}

impl std::error::Error for NameError {}
