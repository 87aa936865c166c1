//! Validated names: channel names, device ids and SSE event types.
//!
//! One rule for all three, so that a name is always safe in a URL path, an HTTP header, an SSE
//! field and a log line: 1 to 128 bytes of `A-Za-z0-9_.:-` (event types: at most 64), and never
//! `.` or `..`.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{NameError, NameErrorReason, NameKind};

/// The longest channel name or device id, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// The longest event type, in bytes; types are short labels, not payloads.
pub const MAX_EVENT_TYPE_LEN: usize = 64;

fn validate(kind: NameKind, value: &str, max: usize) -> Result<(), NameError> {
    let reason = if value.is_empty() {
        NameErrorReason::Empty
    } else if value == "." || value == ".." {
        NameErrorReason::DotSegment
    } else if value.len() > max {
        NameErrorReason::TooLong { max }
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    {
        NameErrorReason::BadCharacter
    } else {
        return Ok(());
    };
    Err(NameError { kind, reason })
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:expr, $max:expr) => {
        $(#[$doc])*
        // Arc<str>: names are cloned into every event, receipt and map key; a clone is a count bump.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `value`.
            ///
            /// # Errors
            /// A [`NameError`] when `value` is empty, too long, or holds a character outside
            /// `A-Za-z0-9_.:-`.
            pub fn new(value: &str) -> Result<Self, NameError> {
                validate($kind, value, $max)?;
                Ok(Self(Arc::from(value)))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A channel name: the unit of publishing, subscribing and ordering.
    ChannelName, NameKind::Channel, MAX_NAME_LEN
);
name_type!(
    /// A device id: a publisher or subscriber, stable across its connections.
    DeviceId, NameKind::Device, MAX_NAME_LEN
);
name_type!(
    /// An SSE event type (the `event:` field), for clients that listen by type.
    EventType, NameKind::EventType, MAX_EVENT_TYPE_LEN
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(ChannelName::new("CHANNEL_1").is_ok());
        assert!(ChannelName::new("a.b:c-d_e").is_ok());
        assert!(DeviceId::new(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn refuses_everything_else() {
        let err = ChannelName::new("").unwrap_err();
        assert_eq!(err.reason, NameErrorReason::Empty);
        let err = DeviceId::new(&"x".repeat(129)).unwrap_err();
        assert_eq!(err.reason, NameErrorReason::TooLong { max: 128 });
        for dots in [".", ".."] {
            assert_eq!(
                ChannelName::new(dots).unwrap_err().reason,
                NameErrorReason::DotSegment
            );
        }
        assert!(ChannelName::new("...").is_ok() && ChannelName::new(".a").is_ok());
        for bad in ["a b", "a/b", "é", "a\nb", "a%20", "a?b"] {
            let err = ChannelName::new(bad).unwrap_err();
            assert_eq!(err.reason, NameErrorReason::BadCharacter, "{bad:?}");
        }
        assert!(EventType::new(&"t".repeat(65)).is_err());
    }
}
