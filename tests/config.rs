//! Settings from a configuration file, the environment and the command line, with the real
//! binary: which source wins, and how a wrong value or key is named.

use std::path::Path;
use std::time::Duration;

use pere_e2e::{bin_path, threads, Proc};
use tokio::process::Command;

/// The variables these tests set; removed from the child's environment unless a test gives them.
const VARIABLES: [&str; 11] = [
    "PERE_HOST",
    "PERE_WORKERS",
    "PERE_STORE",
    "PERE_MAX_CONNECTIONS",
    "PERE_CONFIG",
    "PERE_REDIS_CA",
    "PERE_REDIS_CERT",
    "PERE_REDIS_KEY",
    "PERE_JWT_SECRET",
    "PERE_JWT_SECRET_FILE",
    "PERE_ANONYMOUS_SUBSCRIBE",
];

fn server(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(bin_path("pere-server"));
    for name in VARIABLES {
        command.env_remove(name);
    }
    command.args(args).envs(env.iter().copied());
    command
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config file");
    path.to_str().expect("UTF-8 path").to_owned()
}

/// The first line of a server started so: its address and store.
async fn first_line(args: &[&str], env: &[(&str, &str)]) -> String {
    let proc = Proc::start_with(&mut server(args, env));
    proc.wait_line(|l| l.contains("listening on")).await
}

/// A server that must refuse to start: its exit code and its stderr.
async fn refusal(args: &[&str], env: &[(&str, &str)]) -> (i32, Vec<String>) {
    let mut proc = Proc::start_with(&mut server(args, env));
    let code = proc.wait_exit().await;
    assert!(
        proc.lines().is_empty(),
        "nothing on stdout: {:?}",
        proc.lines()
    );
    (code, proc.errors())
}

#[tokio::test]
async fn a_flag_beats_its_variable_which_beats_the_file_which_beats_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "pere.toml",
        "host = \"127.0.0.2\"\nstore = \"memory\"\nport = 0\n",
    );
    let line = first_line(&["--config", &file], &[]).await;
    assert!(
        line.contains("http://127.0.0.2:") && line.contains("(store: memory;"),
        "the file's settings: {line}"
    );

    let line = first_line(&["--config", &file], &[("PERE_HOST", "127.0.0.3")]).await;
    assert!(
        line.contains("http://127.0.0.3:") && line.contains("(store: memory;"),
        "the variable over the file: {line}"
    );

    let line = first_line(
        &["--config", &file, "-o", "127.0.0.4"],
        &[("PERE_HOST", "127.0.0.3")],
    )
    .await;
    assert!(
        line.contains("http://127.0.0.4:"),
        "the flag over the variable: {line}"
    );

    // The file named by the variable, and the defaults for what no source gives.
    let only_port = write(dir.path(), "port.toml", "port = 0\nstore = \"memory\"\n");
    let line = first_line(&[], &[("PERE_CONFIG", &only_port)]).await;
    assert!(
        line.contains("http://127.0.0.1:"),
        "the default host: {line}"
    );
}

#[tokio::test]
async fn a_wrong_value_is_named_with_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "pere.toml",
        "max-connections = \"abc\"\nstore = \"memory\"\nport = 0\n",
    );
    const NUMBER: &str = "expected a whole number, 0 or more (such as 5000)";
    let (code, errors) = refusal(&["--config", &file], &[]).await;
    assert_eq!(code, 2);
    assert_eq!(errors, [format!("pere-server: invalid value \"abc\" for max-connections in the config file {file}: {NUMBER} (see pere-server --help)")]);

    let (code, errors) = refusal(&["--config", &file], &[("PERE_MAX_CONNECTIONS", "12x")]).await;
    assert_eq!(code, 2);
    assert_eq!(
        errors,
        [format!("pere-server: invalid value \"12x\" for max-connections in PERE_MAX_CONNECTIONS: {NUMBER} (see pere-server --help)")]
    );

    let (code, errors) = refusal(
        &["--config", &file, "--max-connections", "lots"],
        &[("PERE_MAX_CONNECTIONS", "12x")],
    )
    .await;
    assert_eq!(code, 2);
    assert_eq!(errors, [format!("pere-server: invalid value \"lots\" for max-connections in --max-connections: {NUMBER} (see pere-server --help)")]);

    // A negative number is a wrong value too, wherever it comes from, not an unknown flag.
    let negative = write(dir.path(), "negative.toml", "max-connections = -5\n");
    for (args, source) in [
        (
            vec!["--max-connections", "-5"],
            "--max-connections".to_owned(),
        ),
        (
            vec!["--config", &negative],
            format!("the config file {negative}"),
        ),
    ] {
        let (code, errors) = refusal(&args, &[]).await;
        assert_eq!(code, 2);
        assert_eq!(errors, [format!("pere-server: invalid value \"-5\" for max-connections in {source}: {NUMBER} (see pere-server --help)")]);
    }

    // Kinds of value other than numbers: a choice, whose value may hold a password and is
    // shown only as its parser shows it, with the stores there are.
    const STORES: &str = "the stores are sqlite (the default: durable, in --data-dir), memory (gone on restart), and redis://[:password@]host:port/db (several nodes on one Redis; rediss:// over TLS)";
    let choice = write(dir.path(), "store.toml", "store = \"disk\"\n");
    let (_, errors) = refusal(&["--config", &choice], &[]).await;
    assert_eq!(errors, [format!("pere-server: invalid store in the config file {choice}: \"disk\" is not a store: {STORES} (see pere-server --help)")]);
    let (_, errors) = refusal(&["-p", "0"], &[("PERE_STORE", "disk")]).await;
    assert_eq!(errors, [format!("pere-server: invalid store in PERE_STORE: \"disk\" is not a store: {STORES} (see pere-server --help)")]);
    let (_, errors) = refusal(&["--store", "foo"], &[]).await;
    assert_eq!(errors, [format!("pere-server: invalid store in --store: \"foo\" is not a store: {STORES} (see pere-server --help)")]);

    // A value the flag beats is not looked at.
    let line = first_line(
        &["--config", &file, "--max-connections", "50"],
        &[("PERE_MAX_CONNECTIONS", "12x")],
    )
    .await;
    assert!(line.contains("listening on"));
}

/// The server's async worker threads: its threads named as tokio names them (the others are
/// `main`, the log's writers and the allocator's). A thread names itself once it runs, so the
/// count is taken once no thread but the first still has the process's own name.
async fn worker_threads(pid: u32) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let threads = threads(pid);
        let first = threads
            .iter()
            .find(|t| t.tid == pid)
            .map(|t| t.name.as_str());
        let unnamed = threads
            .iter()
            .any(|t| t.tid != pid && Some(t.name.as_str()) == first);
        if !unnamed || tokio::time::Instant::now() > deadline {
            return threads
                .iter()
                .filter(|t| t.name == "tokio-rt-worker")
                .count();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn workers_start_as_many_threads_as_asked_and_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "pere.toml",
        "workers = 3\nstore = \"memory\"\nport = 0\n",
    );
    for (args, env, workers, said) in [
        (
            vec!["--store", "memory", "-p", "0", "--workers", "1"],
            vec![],
            1,
            "1 worker)",
        ),
        (vec!["--config", &file], vec![], 3, "3 workers)"),
        (
            vec!["--config", &file],
            vec![("PERE_WORKERS", "2")],
            2,
            "2 workers)",
        ),
    ] {
        let proc = Proc::start_with(&mut server(&args, &env));
        let line = proc.wait_line(|l| l.contains("listening on")).await;
        assert!(line.ends_with(said), "{args:?} {env:?}: {line}");
        assert_eq!(
            worker_threads(proc.pid()).await,
            workers,
            "{args:?} {env:?}"
        );
    }
    // 0, the default, is one per core.
    let cores = std::thread::available_parallelism().unwrap().get();
    let proc = Proc::start_with(&mut server(&["--store", "memory", "-p", "0"], &[]));
    let line = proc.wait_line(|l| l.contains("listening on")).await;
    assert_eq!(worker_threads(proc.pid()).await, cores, "{line}");

    const WORKERS: &str = "is not a number of worker threads: 0 (one per core) to 1024";
    for bad in ["1025", "-1", "many"] {
        let (code, errors) = refusal(&["--workers", bad], &[]).await;
        assert_eq!(code, 2);
        assert_eq!(errors, [format!("pere-server: invalid value \"{bad}\" for workers in --workers: \"{bad}\" {WORKERS} (see pere-server --help)")]);
    }
}

#[tokio::test]
async fn token_settings_are_checked_where_given_and_exit_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    const SHORT: &str = "a token secret is at least 32 bytes, and this one has 5 (`openssl rand -base64 48` makes one)";
    // The secret is never shown, wherever it comes from; its source is.
    let file = write(dir.path(), "pere.toml", "jwt-secret = \"short\"\n");
    let (code, errors) = refusal(&["--config", &file], &[]).await;
    assert_eq!(code, 2, "a wrong setting exits 2, as documented");
    assert_eq!(errors, [format!("pere-server: invalid jwt-secret in the config file {file}: {SHORT} (see pere-server --help)")]);
    let (code, errors) = refusal(&[], &[("PERE_JWT_SECRET", "short")]).await;
    assert_eq!(code, 2);
    assert_eq!(
        errors,
        [format!(
            "pere-server: invalid jwt-secret in PERE_JWT_SECRET: {SHORT} (see pere-server --help)"
        )]
    );
    let (code, errors) = refusal(&["--jwt-secret", "short"], &[]).await;
    assert_eq!(code, 2);
    assert_eq!(
        errors,
        [format!(
            "pere-server: invalid jwt-secret in --jwt-secret: {SHORT} (see pere-server --help)"
        )]
    );
    let secret_file = write(dir.path(), "secret", "short\n");
    let (code, errors) = refusal(&["--jwt-secret-file", &secret_file], &[]).await;
    assert_eq!(code, 2);
    assert_eq!(errors, [format!("pere-server: invalid value \"{secret_file}\" for jwt-secret-file in --jwt-secret-file: the secret it holds is too short: {SHORT} (see pere-server --help)")]);
    // Settings that do not go together are settings' mistakes too.
    let (code, errors) = refusal(&["--anonymous-subscribe"], &[]).await;
    assert_eq!(code, 2);
    assert_eq!(
        errors,
        ["pere-server: --anonymous-subscribe needs a token key (see pere-server --help)"]
    );
}

#[tokio::test]
async fn the_file_names_only_settings_there_are() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "pere.toml", "port = 0\nmax_connections = 10\n");
    let (code, errors) = refusal(&["--config", &file], &[]).await;
    assert_eq!(code, 2);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(&format!("pere-server: unknown setting \"max_connections\" in {file} (did you mean max-connections?)")),
        "{errors:?}"
    );

    let file = write(dir.path(), "typo.toml", "[server]\nport = 0\n");
    let (_, errors) = refusal(&["--config", &file], &[]).await;
    assert!(
        errors[0].starts_with(&format!(
            "pere-server: unknown setting \"server\" in {file}"
        )),
        "{errors:?}"
    );

    let broken = write(dir.path(), "broken.toml", "port = 0\nstore = memory\n");
    let (code, errors) = refusal(&["--config", &broken], &[]).await;
    assert_eq!(code, 2);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(&format!("pere-server: {broken} is not valid TOML (line 2)")),
        "{errors:?}"
    );

    let missing = dir.path().join("missing.toml");
    let (_, errors) = refusal(&["--config", missing.to_str().unwrap()], &[]).await;
    assert!(
        errors[0].starts_with("pere-server: cannot read the config file"),
        "{errors:?}"
    );
}

#[tokio::test]
async fn help_says_where_settings_come_from() {
    let mut proc = Proc::start_with(&mut server(&["--help"], &[]));
    assert_eq!(proc.wait_exit().await, 0);
    let help = proc.lines().join("\n");
    assert!(
        help.contains("--config <FILE>") && help.contains("[env: PERE_MAX_CONNECTIONS="),
        "{help}"
    );
    for flag in [
        "--redis-ca <FILE>",
        "--redis-cert <FILE>",
        "--redis-key <FILE>",
    ] {
        assert!(help.contains(flag), "{flag} in {help}");
    }
    assert!(
        help.contains(
            "A flag beats its variable, a variable beats the file, the file beats the default"
        ),
        "{help}"
    );
}

#[tokio::test]
async fn redis_tls_files_are_checked_where_given_and_refused_without_rediss() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let (code, errors) = refusal(
        &["--store", "rediss://127.0.0.1:1/0"],
        &[("PERE_REDIS_CA", missing)],
    )
    .await;
    assert_eq!(code, 2);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(&format!(
            "pere-server: invalid value \"{missing}\" for redis-ca in PERE_REDIS_CA: cannot read it:"
        )) && errors[0].ends_with("(see pere-server --help)"),
        "{errors:?}"
    );

    let not_pem = write(dir.path(), "ca.pem", "not a certificate\n");
    let file = write(
        dir.path(),
        "pere.toml",
        &format!("store = \"rediss://127.0.0.1:1/0\"\nredis-ca = \"{not_pem}\"\n"),
    );
    let (code, errors) = refusal(&["--config", &file], &[]).await;
    assert_eq!(code, 2);
    assert_eq!(errors, [format!("pere-server: invalid value \"{not_pem}\" for redis-ca in the config file {file}: holds no PEM certificate (see pere-server --help)")]);

    // A certificate that would do nothing: the URL is missing its `s`, or the store is not Redis.
    let ca = write(
        dir.path(),
        "real-ca.pem",
        &pere_e2e::redis_server::unrelated_ca_pem(),
    );
    let (code, errors) = refusal(
        &[
            "--store",
            "redis://:secret@127.0.0.1:1/0",
            "--redis-ca",
            &ca,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 2);
    assert_eq!(errors, ["pere-server: --redis-ca is for a rediss:// store (Redis over TLS), and the store is redis://:***@127.0.0.1:1/0 (see pere-server --help)"]);
    let (_, errors) = refusal(&["--store", "memory"], &[("PERE_REDIS_CA", &ca)]).await;
    assert_eq!(errors, ["pere-server: --redis-ca is for a rediss:// store (Redis over TLS), and the store is memory (see pere-server --help)"]);
    let (code, errors) = refusal(
        &["--store", "rediss://127.0.0.1:1/0", "--redis-cert", &ca],
        &[],
    )
    .await;
    assert_eq!(code, 2);
    assert_eq!(errors, ["pere-server: --redis-cert needs --redis-key (the certificate's private key, PEM) (see pere-server --help)"]);
}
