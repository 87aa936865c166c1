//! Usage errors in one line: clap renders a usage error in several lines, and every PERE program
//! prints it as one, so a script's log or a test reads it as a single line.

/// A command-line usage error, which clap renders in several lines (the error, tips, the usage,
/// a pointer to `--help`), in one line: `TOOL: <error>; <tip> (see TOOL --help)`.
///
/// `rendered` is clap's text (`err.render().to_string()`); taking text rather than a
/// `clap::Error` keeps this crate free of dependencies.
pub fn usage_line(tool: &str, rendered: &str) -> String {
    let mut text = String::new();
    let (mut in_usage, mut listing) = (false, false);
    for line in rendered.lines().map(str::trim) {
        in_usage = (in_usage || line.starts_with("Usage:")) && !line.is_empty();
        if in_usage || line.is_empty() || line.starts_with("For more information") {
            continue;
        }
        // The lines after one ending in `:` are a list (`<SERVER>`, `<CHANNEL>`).
        let separator = match () {
            () if text.is_empty() => "",
            () if text.ends_with(':') => " ",
            () if listing && !line.starts_with("tip:") => ", ",
            () => "; ",
        };
        listing = text.ends_with(':') || (listing && separator == ", ");
        text.push_str(separator);
        text.push_str(line.strip_prefix("error: ").unwrap_or(line));
    }
    format!("{tool}: {text} (see {tool} --help)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_in_one_line() {
        let clap = "error: unexpected argument '--cuont' found\n\n  tip: a similar argument exists: '--count'\n\n\
                    Usage: pere-sub --count <N> <SERVER>\n       <CHANNEL>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_line("pere-sub", clap),
            "pere-sub: unexpected argument '--cuont' found; tip: a similar argument exists: '--count' \
             (see pere-sub --help)"
        );
        let missing = "error: the following required arguments were not provided:\n  <SERVER>\n  <CHANNEL>\n\n\
                       Usage: pere-sub <SERVER> <CHANNEL>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_line("pere-sub", missing),
            "pere-sub: the following required arguments were not provided: <SERVER>, <CHANNEL> (see pere-sub --help)"
        );
    }
}
