//! What the user sees: the shared output helpers of `pere-client`, and how long texts are
//! shortened in failure lines.

pub use pere_client::output::*;
pub(crate) use pere_client::say;

/// The longest event text that a failure line shows in full; longer ones are cut, so a refused
/// 64 KiB body does not flood the terminal.
const MAX_SHOWN: usize = 1024;

/// `text`, or its first [`MAX_SHOWN`] bytes (at a character boundary) and its full length.
pub fn abbreviate(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_SHOWN {
        return text.into();
    }
    let mut end = MAX_SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut() {
        assert_eq!(abbreviate("short"), "short");
        let long = "é".repeat(1000);
        let cut = abbreviate(&long);
        assert!(
            cut.starts_with(&"é".repeat(512)) && cut.ends_with("… (2000 bytes)"),
            "{cut}"
        );
    }
}
