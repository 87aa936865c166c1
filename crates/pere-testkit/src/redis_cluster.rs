//! A private Redis Cluster for a test: a few `redis-server`s in cluster mode on free loopback
//! ports, in a temporary directory, joined by `redis-cli --cluster create` (primaries only), and
//! stopped when dropped. [`RedisCluster::move_slot`] moves a slot, keys and all, from its node to
//! another, as `redis-cli --cluster reshard` does, so a test can move a channel while it is used.
//!
//! A missing `redis-server` or `redis-cli` fails the test with a clear message: a backend's tests
//! never skip.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::redis_server::{
    free_port, make_certificates, spawn_ready, CA, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY,
};

/// How long the nodes may take to agree that every slot is served.
const SETTLE_WAIT: Duration = Duration::from_secs(20);
/// How often a wait asks again.
const POLL: Duration = Duration::from_millis(50);
/// Keys moved per `MIGRATE`.
const MIGRATE_BATCH: usize = 100;

/// A running Redis Cluster of primaries.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    tls: bool,
    dir: tempfile::TempDir,
}

#[derive(Debug)]
struct Node {
    child: Option<Child>,
    port: u16,
    // What it was started with, to start it again.
    args: Vec<String>,
}

impl Node {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl RedisCluster {
    /// Starts a cluster of `primaries` nodes (at least 3, as `redis-cli --cluster create`
    /// wants), each serving a third of the slots, and waits until every node says every slot is
    /// served.
    pub fn start(primaries: usize) -> RedisCluster {
        Self::launch(primaries, false)
    }

    /// As [`RedisCluster::start`], with nodes that speak only TLS, to clients and to each other,
    /// with certificates for `127.0.0.1` signed by a CA of the cluster's own
    /// ([`RedisCluster::ca_file`]); clients present no certificate.
    pub fn start_tls(primaries: usize) -> RedisCluster {
        Self::launch(primaries, true)
    }

    fn launch(primaries: usize, tls: bool) -> RedisCluster {
        let dir = tempfile::tempdir().expect("temporary directory for the cluster");
        if tls {
            make_certificates(dir.path());
        }
        let nodes: Vec<Node> = (0..primaries)
            .map(|i| start_node(dir.path(), i, tls))
            .collect();
        let cluster = RedisCluster { nodes, tls, dir };
        let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
        create.extend(
            cluster
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port)),
        );
        create.push("--cluster-yes".to_owned());
        let create: Vec<&str> = create.iter().map(String::as_str).collect();
        cluster.run_cli(cluster.nodes[0].port, &create);
        cluster.settle();
        cluster
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,…` (`rediss+cluster://` over TLS): every node
    /// as a seed.
    pub fn url(&self) -> String {
        let scheme = if self.tls {
            "rediss+cluster"
        } else {
            "redis+cluster"
        };
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("{scheme}://{}", hosts.join(","))
    }

    /// The CA (PEM) that signed a TLS cluster's certificates.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join(CA)
    }

    /// The nodes' ports, in the order they were started.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Runs one command with `redis-cli` on the node at `port` and returns what it printed.
    pub fn cli(&self, port: u16, command: &[&str]) -> String {
        self.run_cli(port, command)
    }

    /// The slot of `key`.
    pub fn slot_of(&self, key: &str) -> u16 {
        let answer = self.cli(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key]);
        answer.trim().parse().expect("a slot number")
    }

    /// The port of the node that serves `slot`, as the first node sees it.
    pub fn owner_of(&self, slot: u16) -> u16 {
        let nodes = self.cli(self.nodes[0].port, &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let serves = fields.iter().skip(8).any(|range| {
                let range = range.split_once("->-").map_or(*range, |(s, _)| s);
                match range.split_once('-') {
                    Some((a, b)) => {
                        a.parse::<u16>().is_ok_and(|a| a <= slot)
                            && b.parse::<u16>().is_ok_and(|b| slot <= b)
                    }
                    None => range.parse::<u16>() == Ok(slot),
                }
            });
            if serves {
                let address = fields.get(1).expect("a node's address");
                let port = address
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("a node's port");
                return port;
            }
        }
        panic!("no node serves slot {slot}: {nodes}");
    }

    /// Moves `slot`, with its keys, to the node at port `to`, the way `redis-cli --cluster
    /// reshard` does: the target imports it, the source migrates it, the keys go over in
    /// batches with `MIGRATE`, then every node is told its new owner. While it moves, commands
    /// on its keys are redirected (`ASK`) or refused for a moment (`TRYAGAIN`). Blocking: call
    /// it on a thread of its own (`spawn_blocking`) while the cluster is used.
    pub fn move_slot(&self, slot: u16, to: u16) {
        let from = self.owner_of(slot);
        if from == to {
            return;
        }
        let id = |port: u16| self.cli(port, &["CLUSTER", "MYID"]).trim().to_owned();
        let (from_id, to_id) = (id(from), id(to));
        let slot_arg = slot.to_string();
        self.cli(
            to,
            &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &from_id],
        );
        self.cli(
            from,
            &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &to_id],
        );
        let to_port = to.to_string();
        let batch = MIGRATE_BATCH.to_string();
        loop {
            let keys = self.cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot_arg, &batch]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            migrate.extend(keys.iter().copied());
            let answer = self.cli(from, &migrate);
            assert!(
                answer.trim() == "OK" || answer.trim() == "NOKEY",
                "MIGRATE: {answer}"
            );
        }
        // The target first, then the source: the slot is served throughout.
        self.cli(to, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id]);
        self.cli(from, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id]);
        for node in &self.nodes {
            if node.port != to && node.port != from {
                self.cli(
                    node.port,
                    &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id],
                );
            }
        }
    }

    /// Stops the node at `port` abruptly (SIGKILL, by its process id): the slots it serves are
    /// not served until it is back (and, by default, the cluster refuses every command once the
    /// others have seen it fail, after the node timeout of 2 s).
    pub fn kill_node(&mut self, port: u16) {
        self.node_mut(port).kill();
    }

    /// Starts the node at `port` again (same port, directory and cluster identity), and waits
    /// until every node says every slot is served. Its keys are gone: nothing is kept on disk.
    pub fn restart_node(&mut self, port: u16) {
        let node = self.node_mut(port);
        node.kill();
        let args: Vec<&str> = node.args.iter().map(String::as_str).collect();
        let child = (0..50).find_map(|_| {
            // The port may linger for a moment after the kill.
            spawn_ready(&args).or_else(|| {
                std::thread::sleep(Duration::from_millis(100));
                None
            })
        });
        node.child = Some(child.expect("the node restarted on its port"));
        self.settle();
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node of the cluster on port {port}"))
    }

    /// Waits until every node says that every slot is served.
    fn settle(&self) {
        let started = Instant::now();
        loop {
            let settled = self.nodes.iter().all(|node| {
                let info = self.cli(node.port, &["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            });
            if settled {
                return;
            }
            assert!(
                started.elapsed() < SETTLE_WAIT,
                "the cluster did not settle within {SETTLE_WAIT:?}"
            );
            std::thread::sleep(POLL);
        }
    }

    fn run_cli(&self, port: u16, command: &[&str]) -> String {
        let port = port.to_string();
        let mut cli = Command::new("redis-cli");
        cli.args(["-h", "127.0.0.1", "-p", &port]);
        if self.tls {
            cli.arg("--tls").arg("--cacert").arg(self.ca_file());
        }
        cli.args(command)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cli.spawn().unwrap_or_else(|err| {
            panic!("cannot run redis-cli ({err}): it comes with redis-server")
        });
        // `--cluster create` waits for ever for nodes that cannot meet: a test fails instead.
        let started = Instant::now();
        while child.try_wait().expect("redis-cli's status").is_none() {
            if started.elapsed() > SETTLE_WAIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-cli {command:?} did not finish within {SETTLE_WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let output = child.wait_with_output().expect("redis-cli's output");
        assert!(output.status.success(), "redis-cli {command:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

/// Starts the `i`-th node in a directory of its own under `dir`, on a free port and a free port
/// for the cluster's own bus.
fn start_node(dir: &Path, i: usize, tls: bool) -> Node {
    let own = dir.join(format!("node{i}"));
    std::fs::create_dir_all(&own).expect("a node's directory");
    let file = |name: &str| dir.join(name).to_str().expect("UTF-8 path").to_owned();
    for _ in 0..5 {
        let (port, bus) = (free_port(), free_port());
        let mut args: Vec<String> = Vec::new();
        if tls {
            args.extend(
                [
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--tls-cluster",
                    "yes",
                    "--tls-replication",
                    "yes",
                    "--tls-cert-file",
                    &file(SERVER_CERT),
                    "--tls-key-file",
                    &file(SERVER_KEY),
                    // What a node presents to the others on the cluster's bus, which always
                    // checks it.
                    "--tls-client-cert-file",
                    &file(CLIENT_CERT),
                    "--tls-client-key-file",
                    &file(CLIENT_KEY),
                    "--tls-ca-cert-file",
                    &file(CA),
                    "--tls-auth-clients",
                    "no",
                ]
                .map(str::to_owned),
            );
        } else {
            args.extend(["--port".to_owned(), port.to_string()]);
        }
        args.extend(
            [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
                "--cluster-config-file",
                "nodes.conf",
                // A stopped node is failed, and forgiven when back, within seconds.
                "--cluster-node-timeout",
                "2000",
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
            ]
            .map(str::to_owned),
        );
        let started: Vec<&str> = args.iter().map(String::as_str).collect();
        if let Some(child) = spawn_ready(&started) {
            return Node {
                child: Some(child),
                port,
                args,
            };
        }
    }
    panic!("a cluster node did not start on a free port after 5 tries");
}
