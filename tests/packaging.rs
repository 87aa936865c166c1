//! What ships: the Docker build context leaves out everything Git does (build output, a local
//! store, installed npm packages, fuzzing output), so `docker build` never sends gigabytes of
//! `target/` or a developer's `pere-data/` to the daemon.

use std::path::Path;

use pere_e2e::node::workspace;

/// The patterns of an ignore file, without comments and blank lines.
fn patterns(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The Docker patterns that leave out what a `.gitignore` line found in directory `dir`
/// (relative to the root, "" for the root) leaves out; any one of them will do. Git anchors a
/// pattern with a slash before its end to its directory and lets one without match at any depth
/// below it; Docker anchors every pattern at the context's root, `**/` matching any depth. The
/// trailing `/` (directories only) Docker does not need.
fn docker_patterns(dir: &str, git: &str) -> Vec<String> {
    let git = git.trim_end_matches('/');
    let anchored = git.contains('/');
    let git = git.trim_start_matches('/');
    let under = |p: &str| {
        if dir.is_empty() {
            p.to_owned()
        } else {
            format!("{dir}/{p}")
        }
    };
    if anchored {
        vec![under(git)]
    } else {
        // At any depth below `dir`; `**/x` anywhere covers it too.
        let mut patterns = vec![under(&format!("**/{git}")), format!("**/{git}")];
        patterns.dedup();
        patterns
    }
}

#[test]
fn the_docker_context_leaves_out_what_git_leaves_out() {
    let root = workspace();
    let docker = patterns(&root.join(".dockerignore"));
    let mut missing = Vec::new();
    for (dir, file) in [("", ".gitignore"), ("fuzz", "fuzz/.gitignore")] {
        for git in patterns(&root.join(file)) {
            let wanted = docker_patterns(dir, &git);
            if !wanted.iter().any(|w| docker.contains(w)) {
                missing.push(format!("{file}: {git} (wants one of {wanted:?})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        ".dockerignore lacks what Git ignores: {missing:#?}"
    );
    for needed in [
        ".git",
        "**/target",
        "pere-data",
        "tests/browser/node_modules",
    ] {
        assert!(
            docker.iter().any(|d| d == needed),
            ".dockerignore must leave out {needed}"
        );
    }
    // The build needs the workspace's manifests and sources, including tests/support (the root
    // package's library): nothing may leave those out.
    for kept in [
        "crates",
        "tests",
        "tests/support",
        "examples",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        assert!(
            !docker.iter().any(|d| d == kept || d == "*" || d == "**"),
            ".dockerignore leaves out {kept}, which the build needs"
        );
    }
}
