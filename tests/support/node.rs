//! Runs the JavaScript tests' scripts (`tests/browser/*.mjs`: Debian's Chromium through
//! `playwright-core`, Node's `eventsource`) and other client programs against a server, and
//! collects what they print.
//!
//! A script takes the server's URL and its own arguments, prints what it saw, and ends with
//! `PASS` (exit 0) or `FAIL: reason` (exit 1). Screenshots and other artefacts go to
//! [`artefact_dir`], under the target directory. A missing tool (Node, the npm packages, Chromium,
//! the Python environment) fails the test with what to run: nothing here skips.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::Proc;

/// How long a whole script may run: a browser starting on a loaded machine is slow.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The target directory the test executables run from.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/PROFILE/deps/TEST
    exe.ancestors()
        .nth(3)
        .expect("target directory")
        .to_path_buf()
}

/// Where the artefacts of the test named `test` go (`target/test-artefacts/TEST`).
pub fn artefact_dir(test: &str) -> PathBuf {
    target_dir().join("test-artefacts").join(test)
}

/// What a script printed, and how it ended.
#[derive(Debug)]
pub struct Outcome {
    /// The exit code (-1 when killed by a signal).
    pub code: i32,
    /// Every stdout line.
    pub lines: Vec<String>,
    /// Every stderr line.
    pub errors: Vec<String>,
}

impl Outcome {
    /// Panics with everything the script printed unless it passed.
    pub fn assert_passed(&self) {
        assert!(
            self.code == 0 && self.lines.last().is_some_and(|l| l == "PASS"),
            "the script failed (exit {})\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.lines.join("\n"),
            self.errors.join("\n")
        );
    }

    /// Panics unless the script passed and printed `prefix` lines giving exactly `expected`.
    pub fn assert_tagged(&self, prefix: &str, expected: &[&str]) {
        self.assert_passed();
        assert_eq!(
            self.tagged(prefix),
            expected,
            "stdout:\n{}",
            self.lines.join("\n")
        );
    }

    /// The text after `prefix` on each stdout line that starts with it.
    pub fn tagged(&self, prefix: &str) -> Vec<String> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::to_owned)
            .collect()
    }
}

/// Starts `node tests/browser/SCRIPT` with `args`, its stdin open for [`Proc::tell`]; its
/// artefacts go to [`artefact_dir`]`(test)`.
///
/// # Panics
/// When Node or the pinned npm packages are missing: `./tests/run-all.sh` installs them.
pub fn start_script(test: &str, script: &str, args: &[&str]) -> Proc {
    let dir = workspace().join("tests").join("browser");
    assert!(
        dir.join("node_modules").join("playwright-core").is_dir()
            && dir.join("node_modules").join("eventsource").is_dir(),
        "the npm packages of tests/browser are missing: run ./tests/run-all.sh (or `npm ci` in tests/browser)"
    );
    let mut command = Command::new("node");
    command
        .current_dir(&dir)
        .arg(script)
        .args(args)
        .env("PERE_ARTEFACTS", artefact_dir(test));
    start_program(command, "node (./tests/run-all.sh installs Node.js)")
}

/// Starts any client program with its stdin open; `what` names it in the panic if it is missing.
///
/// # Panics
/// When the program cannot be started.
pub fn start_program(mut command: Command, what: &str) -> Proc {
    let program = command.as_std().get_program().to_owned();
    let found = Path::new(&program).is_file()
        || std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(&program).is_file()));
    assert!(found, "{} is missing: {what}", program.to_string_lossy());
    Proc::start_talking(&mut command)
}

/// Waits for a started script to end, under [`SCRIPT_TIMEOUT`].
pub async fn finish(mut proc: Proc) -> Outcome {
    proc.close_stdin();
    let code = match tokio::time::timeout(SCRIPT_TIMEOUT, proc.child.wait()).await {
        Ok(status) => status.expect("wait for the script").code().unwrap_or(-1),
        Err(_) => panic!(
            "the script ran longer than {SCRIPT_TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
            proc.lines().join("\n"),
            proc.errors().join("\n")
        ),
    };
    // Everything printed is read once the pipes close.
    proc.wait_exit().await;
    Outcome {
        code,
        lines: proc.lines(),
        errors: proc.errors(),
    }
}

/// Runs `node tests/browser/SCRIPT URL ARGS...` to its end: the one entry point of the browser
/// tests (see [`start_script`] for scripts the test talks to while they run).
pub async fn run_script(test: &str, script: &str, args: &[&str]) -> Outcome {
    finish(start_script(test, script, args)).await
}
