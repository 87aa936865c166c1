//! Startup errors of every binary are one clear line on stderr, with a hint where one helps, and
//! never a backtrace, whatever `RUST_BACKTRACE` says.

use pere_e2e::redis_server::{unrelated_ca_pem, TLS_PASSWORD};
use pere_e2e::{bin_path, Proc, RedisServer, TestServer};

/// Runs `name` with `args` under `RUST_BACKTRACE=1`; checks it exits with `code`, prints nothing
/// on stdout and exactly one stderr line, which holds each of `wanted`; returns that line.
async fn check_one_line(name: &str, args: &[&str], code: i32, wanted: &[&str]) -> String {
    let mut command = tokio::process::Command::new(bin_path(name));
    command
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1");
    let mut proc = Proc::start_with(&mut command);
    assert_eq!(
        proc.wait_exit().await,
        code,
        "{name} {args:?}: {:?}",
        proc.errors()
    );
    let errors = proc.errors();
    assert_eq!(errors.len(), 1, "{name} {args:?}: one line: {errors:#?}");
    let line = errors[0].clone();
    assert!(line.starts_with(&format!("{name}: ")), "{line}");
    assert!(!line.to_lowercase().contains("backtrace"), "{line}");
    for w in wanted {
        assert!(
            line.contains(w),
            "{name} {args:?}: {w:?} missing from {line:?}"
        );
    }
    assert!(
        proc.lines().is_empty(),
        "{name} {args:?}: {:?}",
        proc.lines()
    );
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_says_what_to_do_in_one_line() {
    let server = TestServer::start(&[]).await;
    let port = server.host_port().rsplit(':').next().unwrap().to_owned();
    let args = ["--store", "memory", "-o", "127.0.0.1", "-p", &port];
    check_one_line("pere-server", &args, 1, &["cannot listen on", "-p 0"]).await;

    let dir = tempfile::tempdir().unwrap();
    let _first = TestServer::start_in(dir.path(), &[]).await;
    let data_dir = dir.path().to_str().unwrap();
    let args = ["-o", "127.0.0.1", "-p", "0", "--data-dir", data_dir];
    check_one_line(
        "pere-server",
        &args,
        1,
        &["in use by another PERE server", "--data-dir"],
    )
    .await;

    // A data directory that cannot be: each cause is said once.
    let file = tempfile::NamedTempFile::new().unwrap();
    let inside_a_file = file.path().join("data");
    let args = [
        "-o",
        "127.0.0.1",
        "-p",
        "0",
        "--data-dir",
        inside_a_file.to_str().unwrap(),
    ];
    let line = check_one_line("pere-server", &args, 1, &["cannot open the store"]).await;
    let os_error = line.rsplit(": ").next().unwrap();
    assert_eq!(line.matches(os_error).count(), 1, "{line}");

    // A wrong setting exits 2, as every one does (README, *The server*).
    check_one_line(
        "pere-server",
        &["--jwt-secret", "short"],
        2,
        &["--jwt-secret", "at least 32 bytes"],
    )
    .await;
    check_one_line(
        "pere-server",
        &["token", "--jwt-secret", &"k".repeat(32), "--sub", "a b"],
        1,
        &["--sub"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_whose_certificate_the_server_cannot_trust_stops_it_in_one_line() {
    let redis = RedisServer::start_tls(false);
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let unrelated = dir.path().join("unrelated-ca.pem");
    std::fs::write(&unrelated, unrelated_ca_pem()).unwrap();
    let base = ["-o", "127.0.0.1", "-p", "0", "--store", &url];
    let shown = format!("rediss://:***@127.0.0.1:{}/0", redis.port());
    let wanted = [
        "cannot use the Redis store at",
        shown.as_str(),
        "TLS",
        "certificate",
        "--redis-ca",
    ];
    // A CA that did not sign the server's certificate, then none (the system's CAs).
    let with_another_ca = [&base[..], &["--redis-ca", unrelated.to_str().unwrap()]].concat();
    for args in [&with_another_ca[..], &base[..]] {
        let started = std::time::Instant::now();
        let line = check_one_line("pere-server", args, 1, &wanted).await;
        assert!(!line.contains(TLS_PASSWORD), "{line}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "refused in {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_and_the_load_generator_fail_in_one_line() {
    check_one_line(
        "pere-pub",
        &["127.0.0.1:1", "a/b"],
        2,
        &[r#"invalid channel "a/b""#],
    )
    .await;
    check_one_line(
        "pere-sub",
        &["ws://example.invalid", "C", "H1"],
        2,
        &["http:// or https://"],
    )
    .await;
    check_one_line(
        "pere-sub",
        &["127.0.0.1:1", "C", "H 1"],
        2,
        &[r#"invalid device id "H 1""#],
    )
    .await;
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    check_one_line(
        "pere-sub",
        &[&address, "C", "H1", "--retries", "1", "-q"],
        1,
        &["cannot reach", "after 1 attempts"],
    )
    .await;
    check_one_line(
        "pere-bench",
        &["probe", "--server-pid", "4194304"],
        1,
        &["none of the given processes is alive"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_are_one_line_too() {
    for (name, args, wanted) in [
        (
            "pere-server",
            vec!["--port"],
            "a value is required for '--port <PORT>'",
        ),
        (
            "pere-server",
            vec!["--host", "999.1.1.1"],
            "invalid value \"999.1.1.1\" for host in --host",
        ),
        (
            "pere-pub",
            vec!["--cuont", "1", "h:1", "C"],
            "tip: a similar argument exists: '--count'",
        ),
        (
            "pere-sub",
            vec![],
            "required arguments were not provided: <SERVER>, <CHANNEL>",
        ),
        (
            "pere-bench",
            vec!["probe"],
            "required arguments were not provided: --server-pid",
        ),
    ] {
        let see = format!("(see {name} --help)");
        check_one_line(name, &args, 2, &[wanted, see.as_str()]).await;
    }
}
