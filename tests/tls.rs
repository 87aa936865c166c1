//! The tools and the library over HTTPS: a `pere-server` with a certificate that a private CA
//! (made here with rcgen) signed, reached by `pere-pub` and `pere-sub` with `--ca` (or
//! `PERE_CA`) and by `Publisher` and `Subscriber` with `ca_pem`; without the CA, the tools fail at
//! once with one line saying what to give, and the library refuses rather than retries.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use pere_client::{Error, Item, Publisher, Refusal, Subscriber};
use pere_e2e::{Proc, WAIT};

/// A TLS server whose certificate (for 127.0.0.1 and localhost) a private CA signed.
struct TlsServer {
    proc: Proc,
    /// `https://127.0.0.1:PORT`.
    base: String,
    /// The CA's certificate, PEM, in a file.
    ca: PathBuf,
    dir: tempfile::TempDir,
}

impl TlsServer {
    async fn start() -> TlsServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (ca, cert, key) = private_ca(dir.path());
        let proc = Proc::start(
            "pere-server",
            &[
                "--store",
                "memory",
                "-o",
                "127.0.0.1",
                "-p",
                "0",
                "--tls-cert",
                path(&cert),
                "--tls-key",
                path(&key),
            ],
        );
        let first = proc.wait_line(|l| l.contains("listening on")).await;
        let base = first
            .split_whitespace()
            .find(|w| w.starts_with("https://"))
            .unwrap_or_else(|| panic!("an https:// address in {first:?}"))
            .to_owned();
        TlsServer {
            proc,
            base,
            ca,
            dir,
        }
    }

    fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.ca).expect("the CA file")
    }
}

fn path(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Writes a CA certificate, and a server certificate for 127.0.0.1 and localhost that it
/// signed with its key, into `dir`; returns the CA's, the certificate's and the key's paths.
fn private_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "PERE private test CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("key"))
        .expect("CA certificate");
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("certificate parameters");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &*ca).expect("certificate");
    let files = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server-key.pem"),
    );
    std::fs::write(&files.0, ca.pem()).expect("write the CA");
    std::fs::write(&files.1, cert.pem()).expect("write the certificate");
    std::fs::write(&files.2, key.serialize_pem()).expect("write the key");
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_publish_and_subscribe_over_https_with_a_private_ca() {
    let server = TlsServer::start().await;
    let sub = Proc::start(
        "pere-sub",
        &[
            &server.base,
            "SECURE",
            "H0039000000001",
            "--ca",
            path(&server.ca),
            "--count",
            "2",
        ],
    );
    server
        .proc
        .wait_line(|l| l.contains("FEED REQ> device: H0039000000001, channel: SECURE"))
        .await;
    // The CA from the environment, as every flag of the tools can be given.
    let mut publisher = Proc::start_with(
        tokio::process::Command::new(pere_e2e::bin_path("pere-pub"))
            .args([&server.base, "SECURE", "P0039000000001"])
            .args(["--interval", "0", "--count", "2"])
            .env("PERE_CA", &server.ca),
    );
    assert_eq!(publisher.wait_exit().await, 0, "{:?}", publisher.errors());
    let pushed: Vec<String> = publisher
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("PUSH EVT> "))
        .collect();
    assert_eq!(pushed.len(), 2, "{:?}", publisher.lines());
    assert!(pushed[1].ends_with(", Event-Id: 2"), "{pushed:?}");

    let mut sub = sub;
    assert_eq!(sub.wait_exit().await, 0, "{:?}", sub.errors());
    let received: Vec<String> = sub
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("RX EVT> ") || l.starts_with("TX ACK> "))
        .collect();
    assert_eq!(received.len(), 4, "{received:?}");
    assert!(
        received[0].starts_with("RX EVT> id: 1, data: {"),
        "{received:?}"
    );
    assert_eq!(received[3], "TX ACK> id: 2, status: rx ok");
    // Both receipts recorded, in one request or two: pere-sub coalesces.
    server
        .proc
        .wait_receipts(2, |l| {
            l.contains("FEEDBACK> channel: SECURE, device: H0039000000001, Last-Event-Id: ")
        })
        .await;
}

/// Runs a tool to its end; returns its exit code, its stderr and how long it took.
async fn run_tool(name: &str, args: &[&str]) -> (i32, Vec<String>, Duration) {
    let started = std::time::Instant::now();
    let mut tool = Proc::start(name, args);
    let code = tool.wait_exit().await;
    (code, tool.errors(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_the_tools_stop_at_once_saying_what_to_give() {
    let server = TlsServer::start().await;
    for (tool, args) in [
        ("pere-sub", vec![server.base.as_str(), "SECURE", "H1"]),
        (
            "pere-pub",
            vec![server.base.as_str(), "SECURE", "P1", "--count", "1"],
        ),
    ] {
        let (code, errors, took) = run_tool(tool, &args).await;
        assert_eq!(code, 2, "{tool}: {errors:?}");
        // pere-pub says `PUSH FAILED.` of each failed attempt first, as the original did.
        let expected = if tool == "pere-pub" { 2 } else { 1 };
        assert_eq!(errors.len(), expected, "{tool}: {errors:?}");
        let line = errors.last().expect("a line");
        assert!(
            line.starts_with(&format!("{tool}: cannot connect to {}", server.base))
                && line.contains("TLS handshake failed: invalid peer certificate")
                && line.contains("the CAs trusted are the system's")
                && line.contains("--ca FILE"),
            "{line}"
        );
        // Refused on the first attempt, never retried (both tools retry forever by default).
        assert!(took < Duration::from_secs(10), "{tool} took {took:?}");
    }

    // A CA that signed nothing of this server's: the hint names --ca's.
    let other = server.dir.path().join("other");
    std::fs::create_dir(&other).expect("directory");
    let (other_ca, _, _) = private_ca(&other);
    let (code, errors, _) = run_tool(
        "pere-sub",
        &[&server.base, "SECURE", "H1", "--ca", path(&other_ca)],
    )
    .await;
    assert_eq!(code, 2, "{errors:?}");
    assert!(
        errors.len() == 1 && errors[0].contains("the CAs trusted are --ca's"),
        "{errors:?}"
    );

    // A file that is no CA is a one-line usage problem, named.
    let (code, errors, _) = run_tool(
        "pere-sub",
        &[
            &server.base,
            "SECURE",
            "H1",
            "--ca",
            path(&server.dir.path().join("server-key.pem")),
        ],
    )
    .await;
    assert_eq!(code, 2, "{errors:?}");
    assert!(
        errors.len() == 1 && errors[0].contains("holds no PEM certificate"),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_trusts_a_private_ca_given_as_pem() {
    let server = TlsServer::start().await;
    let mut feed = Subscriber::builder(&server.base, "LIB")
        .device("H0039000000002")
        .ca_pem(server.ca_pem())
        .build()
        .expect("subscriber");
    let connected = tokio::time::timeout(WAIT, feed.next())
        .await
        .expect("the feed opens in time");
    assert!(
        matches!(connected, Some(Ok(Item::Connected))),
        "{connected:?}"
    );
    let publisher = Publisher::builder(&server.base)
        .device("P0039000000002")
        .ca_pem(server.ca_pem())
        .build()
        .expect("publisher");
    let pushed = publisher
        .push("LIB", serde_json::json!({"over": "tls"}))
        .await
        .expect("pushed over HTTPS");
    assert_eq!(pushed.id(), Some(1));
    let item = tokio::time::timeout(WAIT, feed.next())
        .await
        .expect("the event arrives in time");
    let Some(Ok(Item::Event(event))) = item else {
        panic!("an event, not {item:?}");
    };
    assert_eq!(event.data, r#"{"over":"tls"}"#);
    let receipt = event
        .ack("shipped")
        .await
        .expect("the receipt goes over HTTPS")
        .expect("the stored receipt");
    assert_eq!(receipt.status, "shipped");

    // Without the CA: refused at once, as a TLS failure, never retried to the end.
    let untrusting = Publisher::builder(&server.base).build().expect("publisher");
    let started = std::time::Instant::now();
    let refused = untrusting.push("LIB", "x").await;
    assert!(
        matches!(&refused, Err(Error::Refused(Refusal::Tls(_)))),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no retries: {:?}",
        started.elapsed()
    );
    let mut untrusting = Subscriber::builder(&server.base, "LIB")
        .build()
        .expect("subscriber");
    let ended = tokio::time::timeout(WAIT, untrusting.next())
        .await
        .expect("an answer in time");
    assert!(
        matches!(&ended, Some(Err(Error::Refused(Refusal::Tls(_))))),
        "{ended:?}"
    );
    assert!(
        untrusting.next().await.is_none(),
        "the stream ends after a refusal"
    );
}

/// Over HTTPS too, a first head hyper would refuse with a bare status is answered in JSON: one
/// over 16 KiB, one with more headers than hyper reads. HTTP/2 (by ALPN) still reaches hyper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_hyper_refuses_is_answered_in_json_over_tls() {
    let server = TlsServer::start().await;
    let ca = reqwest::Certificate::from_pem(&server.ca_pem()).expect("the CA");
    let http1 = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .http1_only()
        .build()
        .expect("an HTTP/1.1 client");
    let long = http1
        .get(format!("{}/health", server.base))
        .header("Cookie", "c".repeat(20_000))
        .send()
        .await
        .expect("an answer to a long head");
    let mut many = http1.get(format!("{}/health", server.base));
    for n in 0..120 {
        many = many.header(format!("x-{n}"), "v");
    }
    let many = many.send().await.expect("an answer to 120 headers");
    for answer in [long, many] {
        assert_eq!(answer.status().as_u16(), 431);
        let body: serde_json::Value = answer.json().await.expect("a JSON body");
        assert_eq!(body["error"]["code"], "request_head_too_large", "{body}");
    }
    let http2 = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("a client");
    let health = http2
        .get(format!("{}/health", server.base))
        .send()
        .await
        .expect("an answer over HTTP/2");
    assert_eq!(health.version(), reqwest::Version::HTTP_2);
    assert_eq!(health.status().as_u16(), 200);
}
