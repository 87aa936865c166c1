//! A private `redis-server` for a test: on a free loopback port, in a temporary directory,
//! stopped when dropped. Shared by the end-to-end harness and the Redis store's own tests.
//!
//! A missing `redis-server` fails the test with a clear message: a backend's tests never skip.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long `redis-server` may take to say it is ready.
const READY_WAIT: Duration = Duration::from_secs(20);

/// A running `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    aof: bool,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server keeping nothing on disk.
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// Starts a server with `appendonly yes` and `appendfsync always` when `aof`: every
    /// acknowledged write is on disk, so a restart keeps it.
    pub fn start_with(aof: bool) -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory for redis-server");
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn(port, aof, dir.path()) {
                return RedisServer {
                    child: Some(child),
                    port,
                    aof,
                    dir,
                };
            }
        }
        panic!("redis-server did not start on a free port after 5 tries");
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server abruptly (SIGKILL): what is not on disk is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (its AOF, if any, is read back).
    pub fn restart(&mut self) {
        self.kill();
        let child = (0..50).find_map(|_| {
            // The port may linger for a moment after the kill.
            spawn(self.port, self.aof, self.dir.path()).or_else(|| {
                std::thread::sleep(Duration::from_millis(100));
                None
            })
        });
        self.child = Some(child.expect("redis-server restarted on its port"));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("bound address").port()
}

/// Starts `redis-server` and waits for its ready line; `None` when it exits first (its port
/// was taken meanwhile).
fn spawn(port: u16, aof: bool, dir: &std::path::Path) -> Option<Child> {
    let port_text = port.to_string();
    let mut args = vec![
        "--port",
        &port_text,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--logfile",
        "",
        "--daemonize",
        "no",
        "--dir",
        dir.to_str().expect("UTF-8 path"),
    ];
    if aof {
        args.extend(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        args.extend(["--appendonly", "no"]);
    }
    let mut child = match Command::new("redis-server").args(&args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn() {
        Ok(child) => child,
        Err(err) => panic!(
            "cannot run redis-server ({err}): the Redis tests need it; ./tests/run-all.sh installs it \
             (apt-get install redis-server)"
        ),
    };
    let stdout = child.stdout.take().expect("redis-server stdout");
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("Ready to accept connections") {
                let _ = ready_tx.send(true);
            }
        }
        // Output closed: the server exited (or was stopped later, when nobody listens).
        let _ = ready_tx.send(false);
    });
    match ready_rx.recv_timeout(READY_WAIT) {
        Ok(true) => Some(child),
        Ok(false) => {
            let _ = child.wait();
            None
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server did not get ready within {READY_WAIT:?}");
        }
    }
}
