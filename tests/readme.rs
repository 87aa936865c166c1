//! The README's snippets, read from README.md, so they cannot drift from what is tested: the
//! tour's commands (the tools and the curl lines) run against a real server, and the Rust
//! library's example is `examples/library.rs`, which the build compiles. (The pere.js snippets
//! run in Chromium: `tests/browser.rs`.)

use pere_e2e::node::workspace;
use pere_e2e::{bin_path, Proc, TestServer};

/// The README's address of the server, which a test's server replaces in the snippets.
const README_SERVER: &str = "127.0.0.1:4567";

fn readme() -> String {
    std::fs::read_to_string(workspace().join("README.md")).expect("README.md")
}

/// The fenced blocks of language `lang` in the README's text from `heading` on, up to the next
/// heading of any level (a line starting with `#`, outside a block).
fn blocks(readme: &str, heading: &str, lang: &str) -> Vec<String> {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("the README has {heading:?}"));
    let mut found = Vec::new();
    let mut current: Option<String> = None;
    for line in readme[start + heading.len()..].lines() {
        match &mut current {
            Some(block) if line == "```" => found.push(std::mem::take(block)),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
                continue;
            }
            None if line == format!("```{lang}") => {
                current = Some(String::new());
                continue;
            }
            None if line.starts_with('#') => break,
            None => continue,
        }
        current = None;
    }
    found
}

#[test]
fn the_library_example_is_the_readmes() {
    let readme = readme();
    let snippet = blocks(&readme, "### The Rust library", "rust");
    assert_eq!(snippet.len(), 1, "one Rust block in *The Rust library*");
    let example = std::fs::read_to_string(workspace().join("examples").join("library.rs"))
        .expect("examples/library.rs");
    let body = example
        .split_once("    // The README's example, from here...\n")
        .and_then(|(_, rest)| rest.split_once("    // ...to here.\n"))
        .map(|(body, _)| body)
        .expect("the example marks the README's lines");
    let dedented: String = body
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        dedented, snippet[0],
        "examples/library.rs holds the README's example as the README has it"
    );
}

/// The tour's one build makes the tools it then runs: with a target selection such as
/// `--examples`, cargo builds only what is selected, so `--bins` must be there too.
#[test]
fn the_tours_build_makes_its_tools() {
    let readme = readme();
    let tour = &readme[readme.find("**A tour.**").expect("the README has its tour")..];
    let build = tour
        .split('`')
        .find(|s| s.starts_with("cargo build"))
        .expect("the tour names its build");
    let selects = |flag: &str| build.split_whitespace().any(|w| w == flag);
    assert!(selects("--release") && selects("--workspace"), "{build}");
    assert!(
        !selects("--examples") || selects("--bins") || selects("--all-targets"),
        "`{build}` would build the examples without pere-sub and pere-pub"
    );
    for tool in ["pere-sub", "pere-pub"] {
        assert!(
            tour.contains(&format!("./target/release/{tool} ")),
            "the tour runs {tool}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tour_runs_as_written() {
    let readme = readme();
    let tour = blocks(&readme, "**A tour.**", "sh");
    assert_eq!(
        tour.len(),
        2,
        "the tour's tools, then its curl lines: {tour:#?}"
    );
    let server = TestServer::start(&[]).await;
    let host = server.host_port();
    let bins = bin_path("pere-server")
        .parent()
        .expect("target directory")
        .to_str()
        .expect("UTF-8 path")
        .to_owned();
    let as_here = |text: &str| {
        text.replace(README_SERVER, &host)
            .replace("./target/release", &bins)
    };

    // The tools, each in a terminal of its own: here, each a process of its own.
    let tools: Vec<Proc> = tour[0]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            Proc::start_with(
                tokio::process::Command::new("sh").args(["-c", &format!("exec {}", as_here(line))]),
            )
        })
        .collect();
    assert_eq!(tools.len(), 2, "pere-sub and pere-pub");
    let sub = &tools[0];
    sub.wait_line(|l| l.starts_with("RX EVT> id: 1, data: {"))
        .await;
    sub.wait_line(|l| l.starts_with("TX ACK> id: 1, status: rx ok"))
        .await;

    // The curl lines, as one script: each must succeed and answer JSON.
    let mut curl = tokio::process::Command::new("sh");
    curl.args(["-e", "-c", &as_here(&tour[1])]);
    let mut curl = Proc::start_with(&mut curl);
    assert_eq!(curl.wait_exit().await, 0, "{:?}", curl.errors());
    let printed = curl.lines().join("\n");
    let answers: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&printed)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}: {printed}"));
    assert_eq!(answers.len(), 3, "{:?}", curl.lines());
    let devices = &answers[0];
    assert!(
        devices
            .as_object()
            .is_some_and(|d| d.values().any(|d| d["online"] == true)),
        "the subscriber is online: {devices}"
    );
    assert_eq!(
        answers[1]["channels"][0]["channel"], "CHANNEL_1",
        "{}",
        answers[1]
    );
    assert_eq!(
        answers[2]["satisfied"], true,
        "the subscriber acknowledged the waited push: {}",
        answers[2]
    );
}
