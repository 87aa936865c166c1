//! An event's body as a publisher sends it: text, labelled JSON when it is JSON.

use serde::Serialize;

/// The body of one event: UTF-8 text, sent verbatim, as `application/json` when it is JSON and
/// as `text/plain` otherwise (the server checks a JSON body parses, and shows it as JSON in its
/// event views).
///
/// ```
/// use pere_client::Body;
///
/// assert!(!Body::from("hello").is_json());
/// assert!(Body::from(serde_json::json!({"order": 42})).is_json());
/// assert!(Body::detect(r#"{"order":42}"#.to_owned()).is_json());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    text: String,
    json: bool,
}

impl Body {
    /// Plain text, sent as `text/plain` whatever it holds.
    pub fn text(text: impl Into<String>) -> Self {
        Body {
            text: text.into(),
            json: false,
        }
    }

    /// A value serialized as JSON.
    ///
    /// # Errors
    /// `serde_json`'s, for a value that cannot be serialized (a map with non-string keys).
    pub fn json(value: &impl Serialize) -> Result<Self, serde_json::Error> {
        Ok(Body {
            text: serde_json::to_string(value)?,
            json: true,
        })
    }

    /// Any text, sent as JSON when it parses as JSON and as plain text otherwise: what
    /// `pere-pub --data` does with its argument and with each line of stdin.
    pub fn detect(text: String) -> Self {
        let json = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
        Body { text, json }
    }

    /// The text sent.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when the body is sent as JSON.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// The `Content-Type` it is sent with.
    pub fn content_type(&self) -> &'static str {
        if self.json {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        }
    }
}

impl From<&str> for Body {
    fn from(text: &str) -> Self {
        Body::text(text)
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Body::text(text)
    }
}

impl From<serde_json::Value> for Body {
    fn from(value: serde_json::Value) -> Self {
        // A `Value` always serializes (its map keys are strings).
        Body {
            text: value.to_string(),
            json: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_bodies_are_json_only_when_they_parse() {
        assert!(Body::detect(r#"{"a":1}"#.into()).is_json());
        assert!(Body::detect("42".into()).is_json());
        assert!(!Body::detect("hello".into()).is_json());
        assert!(!Body::detect("".into()).is_json());
        assert!(!Body::detect("{broken".into()).is_json());
        assert_eq!(Body::from("x").content_type(), "text/plain; charset=utf-8");
        assert_eq!(Body::json(&[1, 2]).unwrap().as_str(), "[1,2]");
    }
}
