//! HTTP/2 and HTTPS with real clients: curl with prior knowledge on the plain port, reqwest over
//! TLS (ALPN) with a certificate made here. Many SSE streams share one connection, each ends
//! cleanly, flow control holds one stream without holding the others, and a shutdown closes them.
//! Over TLS the protected mode's rules hold too: the server's own origin is `https://`, and a
//! name that is not this machine's gets 421.

use std::net::SocketAddr;

use futures_util::StreamExt;
use pere_e2e::{bin_path, Feed, Proc, TestServer, WAIT};
use reqwest::Version;
use tokio::process::Command;

/// A server over TLS with a certificate for `localhost` made for it, and a client trusting it.
struct TlsServer {
    proc: Proc,
    address: SocketAddr,
    _dir: tempfile::TempDir,
    pem: String,
}

impl TlsServer {
    async fn start(extra: &[&str]) -> TlsServer {
        let dir = tempfile::tempdir().unwrap();
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let pem = certified.cert.pem();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, &pem).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        let mut args = vec!["--store", "memory", "-o", "127.0.0.1", "-p", "0"];
        args.extend([
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ]);
        args.extend_from_slice(extra);
        let proc = Proc::start("pere-server", &args);
        let first = proc.wait_line(|l| l.contains("listening on")).await;
        let address = first
            .split_whitespace()
            .find_map(|w| w.strip_prefix("https://"))
            .unwrap_or_else(|| panic!("an https:// address in {first:?}"))
            .parse()
            .expect("address");
        TlsServer {
            proc,
            address,
            _dir: dir,
            pem,
        }
    }

    /// A client that trusts the server's certificate and reaches `localhost` at its address.
    fn client(&self, http1_only: bool) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap())
            .resolve("localhost", self.address)
            .https_only(true);
        if http1_only {
            builder = builder.http1_only();
        }
        builder.build().unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.address.port())
    }
}

/// Established TCP connections to the server's port, counted on the server's side.
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[1].ends_with(&local) && fields[3] == "01"
        })
        .count()
}

async fn open_feed(client: &reqwest::Client, url: &str, device: &str) -> Feed {
    let response = tokio::time::timeout(WAIT, client.get(url).header("device", device).send())
        .await
        .expect("feed answered in time")
        .expect("feed");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.version(),
        Version::HTTP_2,
        "the feed is an HTTP/2 stream"
    );
    Feed::from_response(response)
}

/// Reads a stream to its end, which must be a clean one (no reset, no error).
async fn clean_end(feed: reqwest::Response) {
    let mut body = feed.bytes_stream();
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(chunk) = body.next().await {
            chunk.expect("the stream ends cleanly, not with an error");
        }
    })
    .await;
    assert!(ended.is_ok(), "stream still open after {WAIT:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_feeds_pushes_and_acknowledges_over_http2_with_prior_knowledge() {
    let server = TestServer::start(&["--keep-alive", "1"]).await;
    let h2c = [
        "--http2-prior-knowledge",
        "--silent",
        "--show-error",
        "--include",
    ];
    let mut feed = Command::new("curl");
    feed.args(h2c)
        .args(["--no-buffer", "-H", "device: D1"])
        .arg(server.url("/feed/C1"));
    let feed = Proc::start_with(&mut feed);
    feed.wait_line(|l| l.starts_with("HTTP/2 200")).await;
    server
        .proc
        .wait_line(|l| l.contains("FEED REQ> device: D1, channel: C1"))
        .await;

    let mut push = Command::new("curl");
    push.args(h2c)
        .args(["-X", "POST", "-H", "device: P1", "--data-binary", "over h2"])
        .arg(server.url("/push/C1"));
    let mut push = Proc::start_with(&mut push);
    assert_eq!(push.wait_exit().await, 0);
    assert_eq!(
        push.lines().first().map(String::as_str),
        Some("HTTP/2 200 "),
        "{:?}",
        push.lines()
    );
    assert!(
        push.lines().iter().any(|l| l.contains("\"id\":1")),
        "{:?}",
        push.lines()
    );

    feed.wait_line(|l| l == "id: 1").await;
    feed.wait_line(|l| l == "data: over h2").await;
    // Heartbeats flow on an idle HTTP/2 stream as on HTTP/1.1.
    feed.wait_line(|l| l == ": keep-alive").await;

    let mut receipt = Command::new("curl");
    receipt
        .args(h2c)
        .args([
            "-X",
            "POST",
            "-H",
            "device: D1",
            "-H",
            "last_event_id: 1",
            "--data",
            "status=ok",
        ])
        .arg(server.url("/feedback/C1"));
    let mut receipt = Proc::start_with(&mut receipt);
    assert_eq!(receipt.wait_exit().await, 0);
    assert_eq!(
        receipt.lines().first().map(String::as_str),
        Some("HTTP/2 200 "),
        "{:?}",
        receipt.lines()
    );
    server
        .proc
        .wait_line(|l| {
            l.contains("FEEDBACK> channel: C1, device: D1, Last-Event-Id: 1, status: ok")
        })
        .await;
    let summary = server.get_json("/events/C1/1").await;
    assert_eq!(
        summary["receipts"]["acknowledged"][0]["device"], "D1",
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_share_one_tls_connection_and_each_sees_every_push() {
    let server = TlsServer::start(&[]).await;
    let client = server.client(false);
    let url = server.url("/feed/C1");
    // The first stream makes the connection; the others find it ready and multiplex on it.
    let mut feeds = vec![open_feed(&client, &url, "D0").await];
    for device in ["D1", "D2", "D3", "D4"] {
        feeds.push(open_feed(&client, &url, device).await);
    }
    let push = client
        .post(server.url("/push/C1"))
        .header("device", "P1")
        .body("to all")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (push.status().as_u16(), push.version()),
        (200, Version::HTTP_2)
    );
    for (n, feed) in feeds.iter_mut().enumerate() {
        let event = feed.next().await;
        assert_eq!(
            (event.id.as_str(), event.data.as_str()),
            ("1", "to all"),
            "feed {n}"
        );
    }
    assert_eq!(
        connections_to(server.address.port()),
        1,
        "five feeds and a push, one connection"
    );
    let connections = client
        .get(server.url("/admin/connections"))
        .send()
        .await
        .unwrap();
    let connections: serde_json::Value = connections.json().await.unwrap();
    assert_eq!(connections["C1"], 5, "{connections}");

    // Receipts on the same connection.
    for device in ["D0", "D1", "D2", "D3", "D4"] {
        let receipt = client
            .post(server.url("/feedback/C1"))
            .json(&serde_json::json!({"device": device, "id": 1, "status": "ok"}))
            .send()
            .await
            .unwrap();
        assert_eq!(receipt.status(), 200);
    }

    // One stream closed by its client ends alone; the others go on.
    drop(feeds.remove(0));
    server
        .proc
        .wait_line(|l| l.contains("FEED END> device: D0, channel: C1, reason: closed"))
        .await;
    client
        .post(server.url("/push/C1"))
        .body("second")
        .send()
        .await
        .unwrap();
    for feed in &mut feeds {
        assert_eq!(feed.next().await.data, "second");
    }
    assert_eq!(connections_to(server.address.port()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http1_clients_too() {
    let server = TlsServer::start(&[]).await;
    let client = server.client(true);
    let response = client
        .get(server.url("/feed/C1"))
        .header("device", "D1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (response.status().as_u16(), response.version()),
        (200, Version::HTTP_11)
    );
    let mut feed = Feed::from_response(response);
    client
        .post(server.url("/push/C1"))
        .body("tls 1.1")
        .send()
        .await
        .unwrap();
    assert_eq!(feed.next().await.data, "tls 1.1");
}

/// Over TLS the server's own origin is `https://`: in protected mode (being on this machine is
/// the credential, which a browser lends to every page) a change from a page of that origin
/// passes, one from its `http://` twin or from another site is 403 `cross_origin`, and a request
/// addressed to a name that is not this machine's is 421 `unknown_host`; on HTTP/2 and HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_own_origin_is_https_and_other_names_are_refused() {
    let server = TlsServer::start(&[]).await;
    let port = server.address.port();
    let code = |body: &str| -> Option<String> {
        let json: serde_json::Value = serde_json::from_str(body).ok()?;
        json["error"]["code"].as_str().map(str::to_owned)
    };
    for http1_only in [false, true] {
        let version = if http1_only {
            Version::HTTP_11
        } else {
            Version::HTTP_2
        };
        let client = server.client(http1_only);
        for (origin, status, refusal) in [
            (format!("https://localhost:{port}"), 200, None),
            (
                format!("http://localhost:{port}"),
                403,
                Some("cross_origin"),
            ),
            ("https://evil.example".to_owned(), 403, Some("cross_origin")),
        ] {
            let answer = client
                .post(server.url("/push/TLS"))
                .header("origin", &origin)
                .header("content-type", "text/plain")
                .body("x")
                .send()
                .await
                .unwrap();
            let got = (answer.version(), answer.status().as_u16());
            let body = answer.text().await.unwrap();
            assert_eq!(got, (version, status), "{origin}: {body}");
            if let Some(refusal) = refusal {
                assert_eq!(code(&body).as_deref(), Some(refusal), "{origin}: {body}");
            }
        }
        // A name rebound to this machine: the certificate is not its own, which a browser would
        // refuse already; the server refuses it as well.
        let mut rebound = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .resolve("evil.example", server.address);
        if http1_only {
            rebound = rebound.http1_only();
        }
        let answer = rebound
            .build()
            .unwrap()
            .get(format!("https://evil.example:{port}/admin/channels"))
            .send()
            .await
            .unwrap();
        let got = (answer.version(), answer.status().as_u16());
        let body = answer.text().await.unwrap();
        assert_eq!(got, (version, 421), "{body}");
        assert_eq!(code(&body).as_deref(), Some("unknown_host"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_is_not_read_holds_back_only_itself() {
    let server = TestServer::start(&[]).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = server.url("/feed/C1");
    let stalled = client
        .get(&url)
        .header("device", "SLOW")
        .send()
        .await
        .unwrap();
    assert_eq!(stalled.version(), Version::HTTP_2);
    let mut reading = open_feed(&client, &url, "FAST").await;
    // More than the client's stream window (2 MiB in hyper): the stalled stream must wait for
    // its reader, and the connection must keep carrying the other.
    let body = "x".repeat(60 * 1024);
    let events = 40;
    for _ in 0..events {
        let push = client
            .post(server.url("/push/C1"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(push.status(), 200);
    }
    for id in 1..=events {
        let event = reading.next().await;
        assert_eq!((event.id, event.data.len()), (id.to_string(), body.len()));
    }
    // The stalled stream, read at last, has lost nothing.
    let mut stalled = Feed::from_response(stalled);
    for id in 1..=events {
        assert_eq!(stalled.next().await.id, id.to_string());
    }
    assert_eq!(
        connections_to(server.base.rsplit(':').next().unwrap().parse().unwrap()),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_of_one_connection_count_against_the_device_cap_each() {
    let server = TestServer::start(&["--max-streams-per-device", "2"]).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = server.url("/feed/C1");
    let _first = open_feed(&client, &url, "D1").await;
    let _second = open_feed(&client, &url, "D1").await;
    let third = client
        .get(&url)
        .header("device", "D1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (third.status().as_u16(), third.version()),
        (429, Version::HTTP_2)
    );
    let error: serde_json::Value = third.json().await.unwrap();
    assert_eq!(error["error"]["code"], "too_many_streams");
    // The connection still serves everything else.
    let _other = open_feed(&client, &url, "D2").await;
    assert_eq!(
        client
            .get(server.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_every_http2_stream_and_the_server_exits_in_time() {
    let server = TlsServer::start(&["--shutdown-timeout", "10"]).await;
    let client = server.client(false);
    let mut streams = Vec::new();
    for device in ["D1", "D2", "D3"] {
        let response = client
            .get(server.url("/feed/C1"))
            .header("device", device)
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        streams.push(response);
    }
    server.proc.wait_lines(3, |l| l.contains("FEED REQ>")).await;
    let pid = server.proc.pid();
    assert!(std::process::Command::new("kill")
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success());
    for stream in streams {
        clean_end(stream).await;
    }
    let mut proc = server.proc;
    assert_eq!(proc.wait_exit().await, 0);
    assert_eq!(
        proc.lines()
            .iter()
            .filter(|l| l.contains("reason: server shutting down"))
            .count(),
        3
    );
    assert!(
        !proc.errors().iter().any(|l| l.contains("still open")),
        "every connection closed before the timeout: {:?}",
        proc.errors()
    );
}

#[tokio::test]
async fn tls_needs_both_a_certificate_and_its_key() {
    let mut proc = Proc::start_with(Command::new(bin_path("pere-server")).args([
        "-p",
        "0",
        "--tls-cert",
        "cert.pem",
    ]));
    assert_ne!(proc.wait_exit().await, 0);
    assert_eq!(
        proc.errors(),
        ["pere-server: --tls-cert needs --tls-key (the certificate's private key, PEM)"]
    );
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.to_str().unwrap();
    let mut proc = Proc::start_with(Command::new(bin_path("pere-server")).args([
        "-p",
        "0",
        "--tls-cert",
        empty,
        "--tls-key",
        empty,
    ]));
    assert_ne!(proc.wait_exit().await, 0);
    assert_eq!(
        proc.errors(),
        [format!(
            "pere-server: --tls-cert {empty} holds no PEM certificate"
        )]
    );
}
