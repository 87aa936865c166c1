//! The end-to-end test harness: start the real `pere-server`, `pere-pub` and `pere-sub`
//! binaries, read what they print, and talk to the server over HTTP with real clients.
//!
//! Nothing here sleeps to synchronise: every wait is for an observable fact (a line printed, an
//! event received, an HTTP answer) under a timeout, so a failure shows as a clear panic.
#![deny(missing_docs, missing_debug_implementations)]
#![forbid(unsafe_code)]

pub mod node;
pub mod scripted;

// The private redis-server lives in the dev-only crate pere-testkit, which pere-core's Redis
// tests use too: one copy, and no test reaching outside its crate.
pub use pere_testkit::redis_server;
pub use pere_testkit::{RedisCluster, RedisSentinel, RedisServer};

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsource_stream::{Event as SseEvent, Eventsource};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Reads from `stream` until `enough` says so of what arrived, the peer closes, or [`WAIT`]
/// passes; returns what arrived (as text, lossily).
pub async fn read_until(
    stream: &mut tokio::net::TcpStream,
    enough: impl Fn(&str) -> bool,
) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        loop {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
            if enough(&String::from_utf8_lossy(&seen)) {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&seen).into_owned()
}

/// One thread of a running process, as `/proc` shows it.
#[derive(Debug, Clone)]
pub struct ProcThread {
    /// Its thread id (the process id for the first thread).
    pub tid: u32,
    /// Its name (`comm`), as the thread set it, or as it inherited it until it does.
    pub name: String,
}

/// The threads of process `pid` (Linux `/proc`); a thread that ends while they are read is left
/// out.
pub fn threads(pid: u32) -> Vec<ProcThread> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .filter_map(Result::ok)
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
            Some(ProcThread {
                tid,
                name: name.trim().to_owned(),
            })
        })
        .collect()
}

/// The path of a workspace binary, next to the test executable's directory.
///
/// The binaries are built by `cargo build --workspace --bins` (the README's test command does it
/// first); each binary crate also has its own integration test, so a plain `cargo test
/// --workspace` builds them too.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A child process whose stdout and stderr lines are collected as they come.
#[derive(Debug)]
pub struct Proc {
    /// The child; killed when this is dropped.
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    errors: Arc<Mutex<Vec<String>>>,
    changed: Arc<Notify>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    // Open when the process was started to be told things (`start_talking`).
    stdin: Option<tokio::process::ChildStdin>,
    // The child's config directory, unless the test gave one: removed when this is dropped.
    _config: Option<tempfile::TempDir>,
}

impl Proc {
    /// Starts `name` (a workspace binary) with `args`.
    pub fn start(name: &str, args: &[&str]) -> Proc {
        Self::start_with(Command::new(bin_path(name)).args(args))
    }

    /// Starts a prepared command. Unless the command sets `XDG_CONFIG_HOME`, the child gets a
    /// fresh temporary one (and no `PERE_DEVICE` from the test's environment), so a tool that
    /// keeps its device id there never writes into the real home.
    pub fn start_with(command: &mut Command) -> Proc {
        Self::spawn(command, false)
    }

    /// Starts a prepared command with its stdin open, for [`Proc::tell`].
    pub fn start_talking(command: &mut Command) -> Proc {
        Self::spawn(command, true)
    }

    /// Writes `line` and a newline to the process's stdin.
    pub async fn tell(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt as _;
        let stdin = self
            .stdin
            .as_mut()
            .expect("a process started with start_talking");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to the process");
        stdin.flush().await.expect("flush to the process");
    }

    /// Closes the process's stdin: it reads the end of its input.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    fn spawn(command: &mut Command, talking: bool) -> Proc {
        let given =
            |command: &Command, name: &str| command.as_std().get_envs().any(|(k, _)| k == name);
        let config = if given(command, "XDG_CONFIG_HOME") {
            None
        } else {
            let dir = tempfile::tempdir().expect("temporary config directory");
            command.env("XDG_CONFIG_HOME", dir.path());
            Some(dir)
        };
        if !given(command, "PERE_DEVICE") {
            command.env_remove("PERE_DEVICE");
        }
        let mut child = command
            .stdin(if talking {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn binary");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(Notify::new());
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let stdin = child.stdin.take();
        let mut readers = Vec::new();
        for (pipe, sink) in [
            (
                Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                lines.clone(),
            ),
            (Box::new(stderr), errors.clone()),
        ] {
            let changed = changed.clone();
            readers.push(tokio::spawn(async move {
                let mut reader = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    sink.lock().unwrap().push(line);
                    changed.notify_waiters();
                }
                changed.notify_waiters();
            }));
        }
        Proc {
            child,
            lines,
            errors,
            changed,
            readers,
            stdin,
            _config: config,
        }
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Every stderr line so far.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Waits until at least `count` stdout lines satisfy `matches`; returns those lines.
    pub async fn wait_lines(&self, count: usize, matches: impl Fn(&str) -> bool) -> Vec<String> {
        let what = format!("{count} matching lines");
        self.wait_for(Self::lines, &what, matches, |found| found.len() >= count)
            .await
    }

    /// Waits until the server's `FEEDBACK>` lines that satisfy `matches` have recorded `count`
    /// receipts in all; returns those lines. A coalesced request logs one line for all the
    /// receipts it recorded (`receipts: N`), so a client's receipts may take fewer lines than
    /// it has events.
    pub async fn wait_receipts(&self, count: usize, matches: impl Fn(&str) -> bool) -> Vec<String> {
        let what = format!("{count} receipts");
        let matches = |l: &str| l.contains(" FEEDBACK> ") && matches(l);
        self.wait_for(Self::lines, &what, matches, |found| {
            found.iter().map(|l| receipts_in(l)).sum::<usize>() >= count
        })
        .await
    }

    /// Waits for the first stderr line (warnings, errors) that satisfies `matches`.
    pub async fn wait_error_line(&self, matches: impl Fn(&str) -> bool) -> String {
        self.wait_for(Self::errors, "a matching line", matches, |found| {
            !found.is_empty()
        })
        .await
        .remove(0)
    }

    /// Waits until the lines of `which` (stdout or stderr) that satisfy `matches` are `enough`.
    async fn wait_for(
        &self,
        which: fn(&Self) -> Vec<String>,
        what: &str,
        matches: impl Fn(&str) -> bool,
        enough: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                // Listening before looking: a line read in between wakes this wait.
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let found: Vec<String> = which(self).into_iter().filter(|l| matches(l)).collect();
                if enough(&found) {
                    return found;
                }
                notified.await;
            }
        })
        .await;
        match found {
            Ok(found) => found,
            Err(_) => panic!(
                "waited {WAIT:?} for {what}\nstdout:\n{}\nstderr:\n{}",
                self.lines().join("\n"),
                self.errors().join("\n")
            ),
        }
    }

    /// Waits for the first stdout line that satisfies `matches`.
    pub async fn wait_line(&self, matches: impl Fn(&str) -> bool) -> String {
        self.wait_lines(1, matches).await.remove(0)
    }

    /// Waits for the process to exit and for everything it printed to be read; returns its exit
    /// code.
    pub async fn wait_exit(&mut self) -> i32 {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("process did not exit")
            .expect("wait");
        for reader in self.readers.drain(..) {
            tokio::time::timeout(WAIT, reader)
                .await
                .expect("output read to the end")
                .expect("reader");
        }
        status.code().unwrap_or(-1)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }
}

/// The storage backends the end-to-end suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreUnderTest {
    /// `--store memory`.
    Memory,
    /// `--store sqlite` in a fresh temporary data directory.
    Sqlite,
    /// `--store redis://...` on a private `redis-server` started for the test.
    Redis,
}

/// Runs each named `async fn(StoreUnderTest)` as one test per storage backend, in modules
/// `memory`, `sqlite` and `redis`.
#[macro_export]
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::StoreUnderTest::Memory).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::StoreUnderTest::Sqlite).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::StoreUnderTest::Redis).await
                }
            )*
        }
    };
}

/// A running `pere-server` on a free loopback port.
#[derive(Debug)]
pub struct TestServer {
    /// The server process.
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// An HTTP client for this server.
    pub http: reqwest::Client,
    // Removed when the server is dropped.
    _data_dir: Option<tempfile::TempDir>,
    // Stopped when the server is dropped (after it: fields drop in order).
    _redis: Option<RedisServer>,
}

impl TestServer {
    /// Starts the server with the memory store and `extra` flags.
    pub async fn start(extra: &[&str]) -> TestServer {
        Self::start_on(StoreUnderTest::Memory, extra).await
    }

    /// Starts the server on the given backend (SQLite in a fresh temporary directory).
    pub async fn start_on(store: StoreUnderTest, extra: &[&str]) -> TestServer {
        match store {
            StoreUnderTest::Memory => {
                let mut args = vec!["--store", "memory"];
                args.extend_from_slice(extra);
                Self::start_args(&args).await
            }
            StoreUnderTest::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary data directory");
                let mut server = Self::start_in(dir.path(), extra).await;
                server._data_dir = Some(dir);
                server
            }
            StoreUnderTest::Redis => {
                let redis = RedisServer::start();
                let mut server = Self::start_redis(&redis.url(), extra).await;
                server._redis = Some(redis);
                server
            }
        }
    }

    /// Starts a node on the Redis store at `url` (a server the caller keeps, for several nodes).
    pub async fn start_redis(url: &str, extra: &[&str]) -> TestServer {
        let mut args = vec!["--store", url];
        args.extend_from_slice(extra);
        Self::start_args(&args).await
    }

    /// Starts the server on the SQLite store in `data_dir` (kept by the caller, for restarts).
    pub async fn start_in(data_dir: &std::path::Path, extra: &[&str]) -> TestServer {
        let dir = data_dir.to_str().expect("UTF-8 path");
        let mut args = vec!["--store", "sqlite", "--data-dir", dir];
        args.extend_from_slice(extra);
        Self::start_args(&args).await
    }

    /// Starts the server with these arguments, on a free loopback port unless they name an
    /// address (`-o`) or a port (`-p`).
    pub async fn start_args(args: &[&str]) -> TestServer {
        let mut all = vec![];
        if !args.contains(&"-o") {
            all.extend(["-o", "127.0.0.1"]);
        }
        if !args.contains(&"-p") {
            all.extend(["-p", "0"]);
        }
        all.extend_from_slice(args);
        let proc = Proc::start("pere-server", &all);
        let first = proc.wait_line(|l| l.contains("listening on")).await;
        let base = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("address in the first line")
            .to_owned();
        TestServer {
            proc,
            base,
            http: reqwest::Client::new(),
            _data_dir: None,
            _redis: None,
        }
    }

    /// Kills the server with SIGKILL and waits for it to be gone.
    pub async fn kill(mut self) {
        self.proc.child.start_kill().expect("kill");
        let _ = self.proc.child.wait().await;
    }

    /// Sends the server SIGTERM, as an operator does, without waiting for it to exit.
    pub fn terminate(&self) {
        let pid = self.proc.pid().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(sent.success());
    }

    /// Stops the server with SIGTERM, as an operator does, and waits for it to exit cleanly;
    /// returns what it wrote to stderr.
    pub async fn stop(mut self) -> Vec<String> {
        self.terminate();
        assert_eq!(self.proc.wait_exit().await, 0, "{:?}", self.proc.errors());
        self.proc.errors()
    }

    /// A new connection that has sent `GET path` and nothing more; what it reads is the test's.
    pub async fn raw_get(&self, path: &str) -> tokio::net::TcpStream {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(self.host_port())
            .await
            .expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        stream
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `host:port`, as the command-line tools take it.
    pub fn host_port(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    /// Publishes `body` on `channel`; returns the id the server gave it.
    pub async fn push(&self, channel: &str, body: &str) -> u64 {
        let response = self
            .http
            .post(self.url(&format!("/push/{channel}")))
            .body(body.to_owned())
            .send()
            .await
            .expect("push");
        assert_eq!(
            response.status(),
            200,
            "push answered {}",
            response.status()
        );
        let json: serde_json::Value = response.json().await.expect("push answer");
        json["id"].as_u64().expect("id in push answer")
    }

    /// GETs `path` and parses the JSON answer.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self.http.get(self.url(path)).send().await.expect("get");
        assert!(
            response.status().is_success(),
            "GET {path} answered {}",
            response.status()
        );
        response.json().await.expect("json")
    }

    /// GETs `path` and returns the answer's text, whatever its status.
    pub async fn get_text(&self, path: &str) -> String {
        let response = self.http.get(self.url(path)).send().await.expect("get");
        response.text().await.expect("text")
    }

    /// How many answers with `status` the server gave on `route` (its path template, as the
    /// metrics label it: `/feedback/{channel}`), from its metrics. An answer is counted as it
    /// leaves, so every answer a client has read is in.
    pub async fn answers(&self, route: &str, status: u16) -> u64 {
        let text = self.get_text("/metrics").await;
        let (route, status) = (format!("route=\"{route}\""), format!("status=\"{status}\""));
        text.lines()
            .filter(|l| {
                l.starts_with("pere_http_responses_total{")
                    && l.contains(&route)
                    && l.contains(&status)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// How many requests the server refused with error `code`, from its metrics
    /// (`pere_refused_requests_total`; 0 when none was).
    pub async fn refusals(&self, code: &str) -> u64 {
        let text = self.get_text("/metrics").await;
        let sample = format!("pere_refused_requests_total{{code=\"{code}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&sample)?.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    }

    /// The ids of the events `device` owes a receipt on `channel`
    /// (`GET /devices/:channel/:device/pending`).
    pub async fn pending(&self, channel: &str, device: &str) -> Vec<u64> {
        let pending = self
            .get_json(&format!("/devices/{channel}/{device}/pending"))
            .await;
        pending["pending"]
            .as_array()
            .unwrap_or_else(|| panic!("a list of events: {pending}"))
            .iter()
            .map(|e| e["id"].as_u64().expect("an id"))
            .collect()
    }

    /// Posts a JSON receipt; returns the status and the JSON answer.
    pub async fn ack(
        &self,
        channel: &str,
        device: &str,
        id: u64,
        status: &str,
    ) -> (u16, serde_json::Value) {
        let response = self
            .http
            .post(self.url(&format!("/feedback/{channel}")))
            .json(&serde_json::json!({"device": device, "id": id, "status": status}))
            .send()
            .await
            .expect("feedback");
        let code = response.status().as_u16();
        (
            code,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    /// Opens a feed with the given request headers.
    pub async fn feed(&self, channel: &str, headers: &[(&str, &str)]) -> Feed {
        self.feed_path(&format!("/feed/{channel}"), headers).await
    }

    /// Opens a feed at a full path (with a query string, say).
    pub async fn feed_path(&self, path: &str, headers: &[(&str, &str)]) -> Feed {
        let mut request = self
            .http
            .get(self.url(path))
            .header("accept", "text/event-stream");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = tokio::time::timeout(WAIT, request.send())
            .await
            .expect("feed answer in time")
            .expect("feed");
        assert_eq!(
            response.status(),
            200,
            "feed answered {}",
            response.status()
        );
        Feed {
            events: response.bytes_stream().eventsource().boxed(),
        }
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proc.pid()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

/// An open SSE feed.
pub struct Feed {
    events:
        BoxStream<'static, Result<SseEvent, eventsource_stream::EventStreamError<reqwest::Error>>>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Feed")
    }
}

impl Feed {
    /// The feed of an answer already received (over any client: HTTP/2, TLS).
    pub fn from_response(response: reqwest::Response) -> Feed {
        Feed {
            events: response.bytes_stream().eventsource().boxed(),
        }
    }

    /// The next event (of any type), or a panic after [`WAIT`].
    pub async fn next(&mut self) -> SseEvent {
        match tokio::time::timeout(WAIT, self.events.next()).await {
            Ok(Some(Ok(event))) => event,
            Ok(other) => panic!("feed ended: {other:?}"),
            Err(_) => panic!("no event within {WAIT:?}"),
        }
    }

    /// The next `n` events' ids.
    pub async fn next_ids(&mut self, n: usize) -> Vec<u64> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(self.next().await.id.parse().expect("numeric id"));
        }
        ids
    }

    /// Waits for the stream to end (the server closed it); returns the events seen before.
    pub async fn until_end(&mut self) -> Vec<SseEvent> {
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.events.next()).await {
                Ok(Some(Ok(event))) => seen.push(event),
                Ok(_) => return seen,
                Err(_) => panic!("feed still open after {WAIT:?}"),
            }
        }
    }
}

/// How many receipts a server's `FEEDBACK>` line recorded: `receipts: N` for a cumulative or
/// batched request, one for a single receipt.
fn receipts_in(line: &str) -> usize {
    line.split_once("receipts: ")
        .and_then(|(_, rest)| rest.split(',').next()?.trim().parse().ok())
        .unwrap_or(1)
}
