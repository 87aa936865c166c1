//! A private `redis-server` for a test: on a free loopback port, in a temporary directory,
//! stopped when dropped. Shared by the end-to-end harness and the Redis store's own tests.
//!
//! A missing `redis-server` fails the test with a clear message: a backend's tests never skip.
//! [`RedisServer::start_tls`] starts one that speaks only TLS, with certificates made for it
//! by a CA of its own, and a password.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long `redis-server` may take to say it is ready.
const READY_WAIT: Duration = Duration::from_secs(20);

/// The password of a TLS server: a deployment over TLS usually has one, and the tests check
/// it is never shown.
pub const TLS_PASSWORD: &str = "tls-test-password";

/// A running `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    aof: bool,
    tls: Option<Tls>,
    dir: tempfile::TempDir,
}

/// How a TLS server is set up: its files are in the server's directory.
#[derive(Debug, Clone, Copy)]
struct Tls {
    // Whether clients must present a certificate signed by the CA.
    client_auth: bool,
}

impl RedisServer {
    /// Starts a server keeping nothing on disk.
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// Starts a server with `appendonly yes` and `appendfsync always` when `aof`: every
    /// acknowledged write is on disk, so a restart keeps it.
    pub fn start_with(aof: bool) -> RedisServer {
        Self::launch(aof, None)
    }

    /// Starts a server that speaks only TLS (no plain port), with a certificate for
    /// `127.0.0.1` signed by a CA made for it ([`RedisServer::ca_file`]) and the password
    /// [`TLS_PASSWORD`]. With `client_auth`, clients must present a certificate signed by the
    /// same CA ([`RedisServer::client_cert_file`]).
    pub fn start_tls(client_auth: bool) -> RedisServer {
        Self::launch(false, Some(Tls { client_auth }))
    }

    fn launch(aof: bool, tls: Option<Tls>) -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory for redis-server");
        if tls.is_some() {
            make_certificates(dir.path());
        }
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn(port, aof, tls, dir.path()) {
                return RedisServer {
                    child: Some(child),
                    port,
                    aof,
                    tls,
                    dir,
                };
            }
        }
        panic!("redis-server did not start on a free port after 5 tries");
    }

    /// `redis://127.0.0.1:PORT/0`, or `rediss://:PASSWORD@127.0.0.1:PORT/0` over TLS.
    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}/0", self.port),
            Some(_) => format!("rediss://:{TLS_PASSWORD}@127.0.0.1:{}/0", self.port),
        }
    }

    /// The CA (PEM) that signed a TLS server's certificate and its clients'.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join(CA)
    }

    /// A client certificate (PEM) signed by the server's CA.
    pub fn client_cert_file(&self) -> PathBuf {
        self.dir.path().join(CLIENT_CERT)
    }

    /// The private key (PEM) of [`RedisServer::client_cert_file`].
    pub fn client_key_file(&self) -> PathBuf {
        self.dir.path().join(CLIENT_KEY)
    }

    /// Runs one command with `redis-cli` (over TLS, with the password and the client
    /// certificate, on a TLS server) and returns what it printed.
    pub fn cli(&self, command: &[&str]) -> String {
        let port = self.port.to_string();
        let mut cli = Command::new("redis-cli");
        cli.args(["-h", "127.0.0.1", "-p", &port]);
        if self.tls.is_some() {
            cli.arg("--tls")
                .arg("--cacert")
                .arg(self.ca_file())
                .arg("--cert")
                .arg(self.client_cert_file())
                .arg("--key")
                .arg(self.client_key_file())
                .args(["--no-auth-warning", "-a", TLS_PASSWORD]);
        }
        let output = cli.args(command).output().unwrap_or_else(|err| {
            panic!("cannot run redis-cli ({err}): it comes with redis-server")
        });
        assert!(output.status.success(), "redis-cli {command:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
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
            spawn(self.port, self.aof, self.tls, self.dir.path()).or_else(|| {
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

pub(crate) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("bound address").port()
}

/// The files of a TLS server, in its directory.
pub(crate) const CA: &str = "ca.pem";
pub(crate) const SERVER_CERT: &str = "server.pem";
pub(crate) const SERVER_KEY: &str = "server-key.pem";
pub(crate) const CLIENT_CERT: &str = "client.pem";
pub(crate) const CLIENT_KEY: &str = "client-key.pem";

/// A CA of its own, as PEM: one that signed nothing a test server shows, to be refused by.
pub fn unrelated_ca_pem() -> String {
    certificate_authority("PERE unrelated test CA").pem()
}

fn certificate_authority(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().expect("CA key");
    rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate")
}

/// Writes a CA, a server certificate for 127.0.0.1 and a client certificate, both signed by
/// it, with their keys, into `dir`.
pub(crate) fn make_certificates(dir: &Path) {
    let ca = certificate_authority("PERE test CA");
    let leaf = |names: Vec<String>, purpose: rcgen::ExtendedKeyUsagePurpose| {
        let mut params = rcgen::CertificateParams::new(names).expect("certificate parameters");
        params.extended_key_usages = vec![purpose];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &*ca).expect("certificate");
        (cert.pem(), key.serialize_pem())
    };
    let server = leaf(
        vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    let client = leaf(Vec::new(), rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    for (name, pem) in [
        (CA, ca.pem()),
        (SERVER_CERT, server.0),
        (SERVER_KEY, server.1),
        (CLIENT_CERT, client.0),
        (CLIENT_KEY, client.1),
    ] {
        std::fs::write(dir.join(name), pem).expect("write a certificate file");
    }
}

/// Starts `redis-server` and waits for its ready line; `None` when it exits first (its port
/// was taken meanwhile).
fn spawn(port: u16, aof: bool, tls: Option<Tls>, dir: &Path) -> Option<Child> {
    let file = |name: &str| dir.join(name).to_str().expect("UTF-8 path").to_owned();
    let tls_args: Vec<String> = match tls {
        None => vec!["--port".into(), port.to_string()],
        Some(tls) => vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            file(SERVER_CERT),
            "--tls-key-file".into(),
            file(SERVER_KEY),
            "--tls-ca-cert-file".into(),
            file(CA),
            "--tls-auth-clients".into(),
            (if tls.client_auth { "yes" } else { "no" }).into(),
            "--requirepass".into(),
            TLS_PASSWORD.into(),
        ],
    };
    let mut args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    args.extend([
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--logfile",
        "",
        "--daemonize",
        "no",
    ]);
    args.extend(["--dir", dir.to_str().expect("UTF-8 path")]);
    if aof {
        args.extend(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        args.extend(["--appendonly", "no"]);
    }
    spawn_ready(&args)
}

/// Starts `redis-server` with `args` and waits for its ready line; `None` when it exits first
/// (its port was taken meanwhile). Its log goes to stdout, which is read here.
pub(crate) fn spawn_ready(args: &[&str]) -> Option<Child> {
    spawn_until(args, "Ready to accept connections")
}

/// As [`spawn_ready`], the line that says it is ready containing `ready` (a sentinel says
/// which primary it monitors).
pub(crate) fn spawn_until(args: &[&str], ready: &'static str) -> Option<Child> {
    let mut child = match Command::new("redis-server").args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn() {
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
            if line.contains(ready) {
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
