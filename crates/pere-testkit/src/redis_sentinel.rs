//! A private Redis with Sentinel for a test: a primary, one replica of it and one sentinel
//! (quorum 1: alone, it can decide a failover and elect itself to make it), each on a free
//! loopback port, in a temporary directory, stopped when dropped. The sentinel notices a dead
//! primary after a second ([`DOWN_AFTER`]) and promotes the replica.
//!
//! A missing `redis-server` fails the test with a clear message: a backend's tests never skip.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::redis_server::{free_port, spawn_ready, spawn_until};

/// The name the sentinel knows the primary by.
pub const PRIMARY: &str = "pere";
/// How long the primary must be unreachable before the sentinel calls it down.
pub const DOWN_AFTER: Duration = Duration::from_secs(1);
/// How long the replication link, the sentinel's discovery of the replica, or a failover may
/// take before a test fails.
const SETTLE_WAIT: Duration = Duration::from_secs(20);
/// How often a wait asks again.
const POLL: Duration = Duration::from_millis(50);

/// A running primary, replica and sentinel.
#[derive(Debug)]
pub struct RedisSentinel {
    primary: Server,
    replica: Server,
    sentinel: Server,
    dir: tempfile::TempDir,
}

#[derive(Debug)]
struct Server {
    child: Option<Child>,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Server {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl RedisSentinel {
    /// Starts the primary, its replica and the sentinel, and waits until the replica is in sync
    /// and the sentinel knows it (it can fail over to it from then on).
    pub fn start() -> RedisSentinel {
        let dir = tempfile::tempdir().expect("temporary directory for Redis with Sentinel");
        let primary = data_server(dir.path(), "primary", None);
        let replica = data_server(dir.path(), "replica", Some(primary.port));
        let sentinel = sentinel(dir.path(), primary.port);
        let redis = RedisSentinel {
            primary,
            replica,
            sentinel,
            dir,
        };
        // In sync is more than the link being up: after its first copy, a replica is sent the
        // primary's writes only once it has acknowledged (within a second). A write seen on the
        // replica says that it is.
        redis.cli(redis.primary.port, &["SET", "testkit:synced", "1"]);
        redis.wait_for("the replica to be in sync", || {
            redis
                .cli(redis.replica.port, &["GET", "testkit:synced"])
                .trim()
                == "1"
        });
        redis.wait_for("the sentinel to know the replica", || {
            let replica = format!("127.0.0.1:{}", redis.replica.port);
            redis
                .cli(redis.sentinel.port, &["SENTINEL", "REPLICAS", PRIMARY])
                .contains(&replica)
        });
        redis
    }

    /// `redis+sentinel://127.0.0.1:PORT/pere`: the sentinel and the primary's name.
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://127.0.0.1:{}/{PRIMARY}",
            self.sentinel.port
        )
    }

    /// The port of the server started as the primary.
    pub fn primary_port(&self) -> u16 {
        self.primary.port
    }

    /// The port of the server started as the replica.
    pub fn replica_port(&self) -> u16 {
        self.replica.port
    }

    /// The port of the server the sentinel names as the primary now.
    pub fn current_primary(&self) -> u16 {
        let answer = self.cli(
            self.sentinel.port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", PRIMARY],
        );
        answer
            .lines()
            .nth(1)
            .and_then(|port| port.trim().parse().ok())
            .expect("the primary's port")
    }

    /// Stops the primary with SIGKILL, by its process id: what the replica has not got yet is
    /// gone with it.
    pub fn kill_primary(&mut self) {
        self.primary.kill();
    }

    /// Waits until the failover is over: the sentinel names the replica as the primary, healthy
    /// (not down, no failover in progress), as its clients look for it. Returns how long that
    /// took.
    pub fn wait_for_failover(&self) -> Duration {
        let started = Instant::now();
        let replica = self.replica.port.to_string();
        self.wait_for("the sentinel to promote the replica", || {
            let answer = self.cli(self.sentinel.port, &["SENTINEL", "MASTER", PRIMARY]);
            let lines: Vec<&str> = answer.lines().map(str::trim).collect();
            let field = |name: &str| {
                lines
                    .chunks(2)
                    .find(|pair| pair[0] == name)
                    .and_then(|pair| pair.get(1).copied())
            };
            field("port") == Some(replica.as_str()) && field("flags") == Some("master")
        });
        started.elapsed()
    }

    /// Starts the killed primary again on its port, as a replica of the primary now (as an
    /// operator would: the sentinel, left to itself, would make it one only after several
    /// seconds). Waits until it is in sync.
    pub fn restart_old_primary(&mut self) {
        self.primary.kill();
        let port = self.primary.port;
        let current = self.current_primary();
        let child = (0..50).find_map(|_| {
            // The port may linger for a moment after the kill.
            start_data(self.dir.path(), "primary", port, Some(current)).or_else(|| {
                std::thread::sleep(Duration::from_millis(100));
                None
            })
        });
        self.primary.child = Some(child.expect("the old primary restarted on its port"));
        let mark = format!("testkit:synced:{port}");
        self.cli(current, &["SET", &mark, "1"]);
        self.wait_for("the old primary to replicate the new one", || {
            self.cli(port, &["GET", &mark]).trim() == "1"
        });
    }

    /// Runs one command with `redis-cli` on the server at `port` and returns what it printed.
    pub fn cli(&self, port: u16, command: &[&str]) -> String {
        let port = port.to_string();
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(command)
            .output()
            .unwrap_or_else(|err| {
                panic!("cannot run redis-cli ({err}): it comes with redis-server")
            });
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(
                started.elapsed() < SETTLE_WAIT,
                "waited {SETTLE_WAIT:?} for {what}"
            );
            std::thread::sleep(POLL);
        }
    }
}

/// Starts a data server named `name` (its directory under `dir`), a replica of `primary` when
/// given, on a free port.
fn data_server(dir: &std::path::Path, name: &str, primary: Option<u16>) -> Server {
    for _ in 0..5 {
        let port = free_port();
        if let Some(child) = start_data(dir, name, port, primary) {
            return Server {
                child: Some(child),
                port,
            };
        }
    }
    panic!("redis-server ({name}) did not start on a free port after 5 tries");
}

fn start_data(dir: &std::path::Path, name: &str, port: u16, primary: Option<u16>) -> Option<Child> {
    let own = dir.join(name);
    std::fs::create_dir_all(&own).expect("a server's directory");
    let port = port.to_string();
    let mut args = vec![
        "--port",
        &port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--logfile",
        "",
        "--daemonize",
        "no",
        "--dir",
        own.to_str().expect("UTF-8 path"),
        // A replica gets its first copy at once, not after the default 5 s of waiting for
        // others to share the transfer.
        "--repl-diskless-sync-delay",
        "0",
    ];
    let replica_of = primary.map(|p| p.to_string());
    if let Some(primary) = &replica_of {
        args.extend(["--replicaof", "127.0.0.1", primary]);
    }
    spawn_ready(&args)
}

/// Starts the sentinel watching the primary at `primary`, with its configuration file (which it
/// rewrites) in `dir`.
fn sentinel(dir: &std::path::Path, primary: u16) -> Server {
    for _ in 0..5 {
        let port = free_port();
        let config = dir.join(format!("sentinel-{port}.conf"));
        let down_after = DOWN_AFTER.as_millis();
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\nlogfile \"\"\ndir {}\n\
                 sentinel monitor {PRIMARY} 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds {PRIMARY} {down_after}\n\
                 sentinel failover-timeout {PRIMARY} 5000\n",
                dir.display()
            ),
        )
        .expect("the sentinel's configuration");
        let config = config.to_str().expect("UTF-8 path").to_owned();
        if let Some(child) = spawn_until(&[&config, "--sentinel"], "+monitor master") {
            return Server {
                child: Some(child),
                port,
            };
        }
    }
    panic!("the sentinel did not start on a free port after 5 tries");
}
