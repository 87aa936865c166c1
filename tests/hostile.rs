//! Hostile input against the real server with tight limits: every bound a client can push on
//! gets its exact answer, and the server still answers after each.

use std::time::Duration;

use pere_e2e::{read_until, TestServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` on a new connection; returns what came back once a whole head arrived.
async fn send(server: &TestServer, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.host_port()).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_until(&mut stream, |s| {
        s.contains("\r\n\r\n") && (s.contains('}') || s.contains("text/event-stream"))
    })
    .await
}

fn status(answer: &str) -> u16 {
    answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

async fn still_answers(server: &TestServer, after: &str) {
    let health = server.http.get(server.url("/health")).send().await;
    assert_eq!(
        health.map(|r| r.status().as_u16()).ok(),
        Some(200),
        "/health after {after}"
    );
}

fn server_args() -> Vec<&'static str> {
    vec![
        "--max-connections",
        "40",
        "--connection-reserve",
        "8",
        "--max-streams-per-device",
        "2",
        "--body-timeout",
        "2s",
        "--max-body",
        "1024",
    ]
}

/// The statuses and error codes of the answers in `answers`, in order.
fn answered(answers: &str) -> Vec<(u16, Option<String>)> {
    answers
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|answer| {
            let status = answer[..3].parse().expect("a status");
            let code = answer
                .split("\"code\": \"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .map(str::to_owned);
            (status, code)
        })
        .collect()
}

/// A head hyper would answer with a bare status, sent behind a request it serves on the same
/// connection, is answered in JSON once that request's answer is out, and the connection
/// closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_hyper_refuses_behind_a_served_request_is_answered_in_json() {
    let server = TestServer::start(&server_args()).await;
    let served = "POST /push/P HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}";
    let mut many = String::from("GET /health HTTP/1.1\r\nHost: localhost\r\n");
    for n in 0..120 {
        many.push_str(&format!("X-{n}: v\r\n"));
    }
    many.push_str("\r\n");
    let cases = [
        (
            "a malformed request line",
            "GET /a b HTTP/1.1\r\nHost: localhost\r\n\r\n".to_owned(),
            400,
            "malformed_request",
        ),
        ("120 headers", many, 431, "request_head_too_large"),
        (
            "lengths that disagree",
            "POST /push/P HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
                .to_owned(),
            400,
            "malformed_request",
        ),
    ];
    for (what, refused, status, code) in cases {
        let mut stream = TcpStream::connect(server.host_port()).await.unwrap();
        stream
            .write_all(format!("{served}{refused}").as_bytes())
            .await
            .unwrap();
        let mut answers = String::new();
        let _ = tokio::time::timeout(WAIT, stream.read_to_string(&mut answers)).await;
        assert_eq!(
            answered(&answers),
            vec![(200, None), (status, Some(code.to_owned()))],
            "{what}: {answers}"
        );
    }
    // A head that grows past 16 KiB without ending, after an answer was read: hyper is kept
    // from the rest of it, and the answer does not wait for an end that is never sent.
    let mut stream = TcpStream::connect(server.host_port()).await.unwrap();
    stream.write_all(served.as_bytes()).await.unwrap();
    let first = read_until(&mut stream, |s| s.contains('}')).await;
    assert_eq!(answered(&first), vec![(200, None)], "{first}");
    let endless = format!(
        "GET /health HTTP/1.1\r\nHost: localhost\r\nCookie: {}",
        "c".repeat(20_000)
    );
    stream.write_all(endless.as_bytes()).await.unwrap();
    let mut answers = String::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_string(&mut answers)).await;
    assert_eq!(
        answered(&answers),
        vec![(431, Some("request_head_too_large".to_owned()))],
        "{answers}"
    );
    still_answers(&server, "heads refused behind served requests").await;
    assert_eq!(server.refusals("malformed_request").await, 2);
    assert_eq!(server.refusals("request_head_too_large").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_answers_with_its_code_and_the_server_stays_up() {
    let server = TestServer::start(&server_args()).await;
    server.push("H", "first").await;

    // (what, request, status, code): one request each, on a fresh connection.
    let long_resume = format!(
        "GET /feed/H HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: {}\r\n\r\n",
        "9".repeat(65)
    );
    let huge_head = format!(
        "GET /feed/H HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: {}\r\n\r\n",
        "9".repeat(100_000)
    );
    let table: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "a Last-Event-ID longer than an id",
            long_resume.into_bytes(),
            400,
            "bad_event_id",
        ),
        (
            "a 100 KB request head",
            huge_head.into_bytes(),
            431,
            "request_head_too_large",
        ),
        (
            "the channel `..`",
            b"POST /push/.. HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\nx".to_vec(),
            400,
            "bad_channel",
        ),
        (
            "the channel `.`",
            b"GET /feed/. HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
            400,
            "bad_channel",
        ),
        (
            "a declared body over --max-body",
            b"POST /push/H HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000\r\n\r\n".to_vec(),
            413,
            "body_too_large",
        ),
        (
            "a TLS handshake on the plain port",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n".to_vec(),
            400,
            "tls_on_plain_port",
        ),
        (
            "garbage",
            b"hello there\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "a path with a space",
            b"GET /admin/chan nels HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "a feed with a header without a name",
            b"GET /feed/H HTTP/1.1\r\nHost: localhost\r\n: x\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "a receipt of an HTTP version not served",
            b"POST /feedback/H HTTP/2.5\r\nContent-Length: 0\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "a push with a control byte in a header's value",
            b"POST /push/H HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nX-Note: a\x01b\r\n\r\n{}"
                .to_vec(),
            400,
            "malformed_request",
        ),
        (
            "an HTTP version not served",
            b"GET /health HTTP/3.0\r\nHost: localhost\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "a transfer coding not read",
            b"POST /push/H HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "a device id with a slash",
            b"GET /feed/H HTTP/1.1\r\nHost: localhost\r\ndevice: a/b\r\n\r\n".to_vec(),
            400,
            "bad_device",
        ),
    ];
    for (what, request, expected, code) in table {
        let answer = send(&server, &request).await;
        assert_eq!(status(&answer), expected, "{what}: {answer}");
        assert!(answer.contains(code), "{what}: {answer}");
        still_answers(&server, what).await;
    }
    // Heads refused before hyper read them are counted as the door's refusals are.
    assert_eq!(server.refusals("malformed_request").await, 7);
    assert_eq!(server.refusals("tls_on_plain_port").await, 1);
    assert_eq!(server.refusals("request_head_too_large").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_writing_a_large_body_reads_the_413() {
    let server = TestServer::start(&server_args()).await;
    let stream = TcpStream::connect(server.host_port()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let size = 2 * 1024 * 1024;
    let sending = tokio::spawn(async move {
        let head = format!("POST /push/H HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: {size}\r\n\r\n");
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..size / chunk.len() {
            writer.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(writer)
    });
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, reader.read_to_end(&mut answer))
        .await
        .expect("answered in time")
        .expect("no reset");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    assert!(
        sending.await.unwrap().is_ok(),
        "the whole body could be written"
    );
    still_answers(&server, "a large body").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_ends_times_out() {
    let server = TestServer::start(&server_args()).await;
    let mut stream = TcpStream::connect(server.host_port()).await.unwrap();
    stream
        .write_all(
            b"POST /push/H HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
    let answer = read_until(&mut stream, |s| s.contains('}')).await;
    assert_eq!(status(&answer), 408, "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    still_answers(&server, "a body that never ends").await;
}

/// A receipt read by the server's own reader is held to the same time as any request: one
/// body timeout (2 s here), not one for the reader and another for hyper after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_body_that_never_ends_times_out_once() {
    let server = TestServer::start(&server_args()).await;
    server.push("H", "first").await;
    let mut stream = TcpStream::connect(server.host_port()).await.unwrap();
    let started = std::time::Instant::now();
    stream
        .write_all(
            b"POST /feedback/H HTTP/1.1\r\nHost: localhost\r\ndevice: D1\r\nlast_event_id: 1\r\nContent-Length: 20\r\n\r\nstatus=",
        )
        .await
        .unwrap();
    let answer = read_until(&mut stream, |s| s.contains('}')).await;
    let waited = started.elapsed();
    assert_eq!(status(&answer), 408, "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{answer}"
    );
    assert!(
        waited < Duration::from_secs(4),
        "answered after {waited:?}: the body timeout is 2 s"
    );
    still_answers(&server, "a receipt body that never ends").await;
}

/// A receipt whose path `http` refuses (`<`, which `httparse` lets through) is handed to hyper
/// with every byte read so far, its body's start included: one answer, 400, and nothing of the
/// body taken for a request of its own or for a receipt.
#[tokio::test]
async fn a_receipt_on_a_refused_path_gets_one_answer_whatever_of_its_body_was_read() {
    let server = TestServer::start(&server_args()).await;
    server.push("H", "first").await;
    let mut stream = TcpStream::connect(server.host_port()).await.unwrap();
    stream
        .write_all(
            b"POST /feedback/H<x HTTP/1.1\r\nHost: localhost\r\ndevice: D1\r\nlast_event_id: 1\r\nContent-Length: 12\r\n\r\nstatus=",
        )
        .await
        .unwrap();
    stream.write_all(b"rx+ok").await.unwrap();
    // Read until the server closes the connection.
    let answer = read_until(&mut stream, |_| false).await;
    assert_eq!(status(&answer), 400, "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    let devices = server.get_json("/admin/devices/H").await;
    assert!(devices.get("D1").is_none(), "{devices}");
    still_answers(&server, "a receipt on a refused path").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_capped_per_device_and_in_all_and_short_requests_keep_their_reserve() {
    let server = TestServer::start(&server_args()).await;
    // HEAD of a feed opens nothing and makes no recipient.
    let head = send(
        &server,
        b"HEAD /feed/S HTTP/1.1\r\nHost: localhost\r\ndevice: HeadOnly\r\n\r\n",
    )
    .await;
    assert_eq!(status(&head), 200, "{head}");
    assert!(server
        .get_json("/admin/devices/S")
        .await
        .get("HeadOnly")
        .is_none());

    // Two streams per device, the third refused.
    let _first = server.feed("S", &[("device", "D1")]).await;
    let _second = server.feed("S", &[("device", "D1")]).await;
    let third = send(
        &server,
        b"GET /feed/S HTTP/1.1\r\nHost: localhost\r\ndevice: D1\r\n\r\n",
    )
    .await;
    assert_eq!(status(&third), 429, "{third}");
    assert!(
        third.contains("too_many_streams") && third.to_lowercase().contains("retry-after: 5"),
        "{third}"
    );

    // 40 connections, 8 kept for short requests: 32 streams in all.
    let mut held = Vec::new();
    for i in 0..30 {
        let mut stream = TcpStream::connect(server.host_port()).await.unwrap();
        stream
            .write_all(
                format!("GET /feed/S HTTP/1.1\r\nHost: localhost\r\ndevice: Many{i}\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let answer = read_until(&mut stream, |s| s.contains("retry:")).await;
        assert_eq!(status(&answer), 200, "stream {i}: {answer}");
        held.push(stream);
    }
    let full = send(&server, b"GET /feed/S HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(status(&full), 503, "{full}");
    assert!(
        full.contains("server_full") && full.to_lowercase().contains("retry-after: 5"),
        "{full}"
    );
    // The reserve still serves pushes and health.
    assert_eq!(server.push("S", "still served").await, 1);
    still_answers(&server, "streams filling the server").await;
    // A closed stream gives its place back once the server has seen it close.
    drop(held.pop());
    server
        .proc
        .wait_line(|l| l.contains(" FEED END> device: Many29,"))
        .await;
    let reopened = send(&server, b"GET /feed/S HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(status(&reopened), 200, "{reopened}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_position_too_large_for_an_id_is_beyond_the_head() {
    let server = TestServer::start(&server_args()).await;
    server.push("Far", "one").await;
    server.push("Far", "two").await;
    // 60 digits: a number, though no id is ever that large. It is beyond the head, as 99 would
    // be: the feed says so before it replays, rather than replay as if the client were new.
    let far = "9".repeat(60);
    for in_query in [false, true] {
        let mut feed = if in_query {
            server
                .feed_path(&format!("/feed/Far?lastEventId={far}"), &[])
                .await
        } else {
            server.feed("Far", &[("Last-Event-ID", &far)]).await
        };
        let reset = feed.next().await;
        assert_eq!(
            (reset.event.as_str(), reset.id.as_str()),
            ("pere-reset", ""),
            "{reset:?}"
        );
        let notice: serde_json::Value = serde_json::from_str(&reset.data).unwrap();
        assert_eq!(notice["head"], 2, "{notice}");
        assert_eq!(feed.next_ids(2).await, vec![1, 2]);
    }
}

/// A connection to `server` from `source`, a loopback address of this machine (127.0.0.2, say):
/// another client, as far as the server can tell.
async fn connect_from(source: &str, server: &TestServer) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket
        .connect(server.host_port().parse().unwrap())
        .await
        .unwrap()
}

/// The start of a request head that never ends: a client sending it a byte at a time.
const TRICKLE: &[u8] = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";

/// `GET /health`, whole.
fn health() -> String {
    "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n".to_owned()
}

/// How many of `streams` the server has closed, or closes within `within`; those still open
/// stay in `streams`.
async fn closed_of(streams: &mut Vec<TcpStream>, within: std::time::Duration) -> usize {
    let before = streams.len();
    let checks = streams.drain(..).map(|mut stream| async move {
        let closed = closed_within(&mut stream, within).await;
        (!closed).then_some(stream)
    });
    let open: Vec<TcpStream> = futures_util::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect();
    *streams = open;
    before - streams.len()
}

/// Sends `request` on `stream` and reads the JSON answer.
async fn ask(stream: &mut TcpStream, request: String) -> String {
    stream.write_all(request.as_bytes()).await.unwrap();
    read_until(stream, |s| s.contains("\r\n\r\n") && s.contains('}')).await
}

/// Whether the server closes `stream` within `within` (it reads nothing from a client that never
/// finishes its head).
async fn closed_within(stream: &mut TcpStream, within: std::time::Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_the_reserve_with_heads_that_never_end() {
    // 120 connections, 80 kept for short requests: 40 streams.
    let server =
        TestServer::start(&["--max-connections", "120", "--connection-reserve", "80"]).await;
    let mut feeds = Vec::new();
    for i in 0..40 {
        let mut stream = TcpStream::connect(server.host_port()).await.unwrap();
        let head = format!("GET /feed/Full HTTP/1.1\r\nHost: localhost\r\ndevice: F{i}\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let answer = read_until(&mut stream, |s| s.contains("retry:")).await;
        assert_eq!(status(&answer), 200, "feed {i}: {answer}");
        feeds.push(stream);
    }
    let full = send(
        &server,
        b"GET /feed/Full HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(status(&full), 503, "streams are at their cap: {full}");

    // Another client (127.0.0.2) opens more connections than the reserve and never finishes a
    // head. It may hold 64 (--max-slow-per-address); the rest are closed as soon as they are
    // slow (a second), or at once while it holds 64.
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut stream = connect_from("127.0.0.2", &server).await;
        stream.write_all(TRICKLE).await.unwrap();
        slow.push(stream);
    }
    // This machine's first address still gets its answers at once, not after the header
    // timeout (30 s) of a wave of slow heads.
    let quick = std::time::Duration::from_secs(10);
    let health = tokio::time::timeout(quick, server.http.get(server.url("/health")).send()).await;
    assert_eq!(
        health
            .ok()
            .and_then(Result::ok)
            .map(|r| r.status().as_u16()),
        Some(200),
        "/health while one address trickles"
    );
    let push = tokio::time::timeout(
        quick,
        server
            .http
            .post(server.url("/push/Full"))
            .body("still served")
            .send(),
    )
    .await;
    assert_eq!(
        push.ok().and_then(Result::ok).map(|r| r.status().as_u16()),
        Some(200),
        "a push while one address trickles"
    );
    // It holds 64 at most: the others were closed as soon as they were slow, or at once.
    let closed = closed_of(&mut slow, std::time::Duration::from_millis(500)).await;
    assert!(closed >= 36, "{closed} of 100 slow connections closed");
    server
        .proc
        .wait_error_line(|l| l.contains("127.0.0.2 holds 64 connections that have sent no whole"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_timeout_shortens_while_half_the_reserve_waits_for_heads() {
    let server =
        TestServer::start(&["--max-connections", "200", "--connection-reserve", "40"]).await;
    // 25 slow heads: more than half of the reserve of 40.
    let mut slow = Vec::new();
    for _ in 0..25 {
        let mut stream = connect_from("127.0.0.3", &server).await;
        stream.write_all(TRICKLE).await.unwrap();
        slow.push(stream);
    }
    // Answered once the server took every connection before it (they queue in order).
    still_answers(&server, "slow heads").await;
    // A new slow head now has a few seconds (--busy-header-timeout, 5 s), not 30.
    let mut late = connect_from("127.0.0.4", &server).await;
    late.write_all(TRICKLE).await.unwrap();
    assert!(
        closed_within(&mut late, std::time::Duration::from_secs(15)).await,
        "a slow head closed after the busy header timeout"
    );
    // The reserve still answers.
    still_answers(&server, "a slow head closed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_slow_connections_count_against_their_address() {
    let server = TestServer::start(&["--max-slow-per-address", "4"]).await;
    // A burst of clients that send their requests at once, from one address: none refused,
    // however many more than the cap.
    let mut burst = Vec::new();
    for _ in 0..40 {
        let mut stream = connect_from("127.0.0.7", &server).await;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        burst.push(stream);
    }
    for stream in &mut burst {
        let answer = read_until(stream, |s| s.contains('}')).await;
        assert_eq!(status(&answer), 200, "{answer}");
    }
    // Four slow ones may stay; a fifth is closed once it is slow (a second after its accept).
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut stream = connect_from("127.0.0.8", &server).await;
        stream.write_all(TRICKLE).await.unwrap();
        slow.push(stream);
    }
    let mut fifth = connect_from("127.0.0.8", &server).await;
    fifth.write_all(TRICKLE).await.unwrap();
    slow.push(fifth);
    // Whichever is found slow last; the others have the header timeout (30 s).
    let closed = closed_of(&mut slow, std::time::Duration::from_secs(5)).await;
    assert_eq!((closed, slow.len()), (1, 4), "one of five slow ones closed");
    server
        .proc
        .wait_error_line(|l| {
            l.contains("127.0.0.8 holds 4 connections that have sent no whole request within 1 s")
        })
        .await;
    // While it holds four, the address's new connections are closed at once, answered or not;
    // another address is served.
    let mut next = connect_from("127.0.0.8", &server).await;
    let _ = next
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    assert_eq!(read_until(&mut next, |s| s.contains('}')).await, "");
    let mut other = connect_from("127.0.0.9", &server).await;
    assert_eq!(status(&ask(&mut other, health()).await), 200);
    // A slow one that finishes its request leaves the count: the address is served again.
    slow[0].write_all(b"1\r\n\r\n").await.unwrap();
    let finished = read_until(&mut slow[0], |s| s.contains('}')).await;
    assert_eq!(status(&finished), 200, "{finished}");
    let mut again = connect_from("127.0.0.8", &server).await;
    assert_eq!(status(&ask(&mut again, health()).await), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_larger_than_the_body_limit_is_refused_at_once() {
    let server = TestServer::start(&server_args()).await;
    let head: &[u8] =
        b"POST /push/H HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n";
    // Chunks that announce more than --max-body (1024), and nothing more: 413 at once, as for a
    // Content-Length over the limit, not 408 once the body timeout (2 s) is over.
    for (what, pieces) in [
        (
            "the largest chunk size",
            vec![head, b"ffffffffffffffff\r\n"],
        ),
        (
            "sent apart from the head",
            vec![head, b"ffffffffffffffff\r\n"],
        ),
        (
            "after a small chunk",
            vec![head, b"5\r\nhello\r\n", b"ffffffffffffffff\r\n"],
        ),
        (
            "with an extension",
            vec![head, b"ffffffffffff;name=value\r\n"],
        ),
    ] {
        let mut stream = TcpStream::connect(server.host_port()).await.unwrap();
        if what == "the largest chunk size" {
            stream.write_all(&pieces.concat()).await.unwrap();
        } else {
            for piece in pieces {
                stream.write_all(piece).await.unwrap();
            }
        }
        let answer = read_until(&mut stream, |s| s.contains('}')).await;
        assert_eq!(status(&answer), 413, "{what}: {answer}");
        assert!(answer.contains("body_too_large"), "{what}: {answer}");
        still_answers(&server, what).await;
    }

    // Requests on one connection are told apart: a chunked body within the limit (with a
    // trailer), then a body of known length, then one too large, the last two pipelined.
    let mut stream = TcpStream::connect(server.host_port()).await.unwrap();
    stream
        .write_all(&[head, b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"].concat())
        .await
        .unwrap();
    let first = read_until(&mut stream, |s| s.contains('}')).await;
    assert_eq!(status(&first), 200, "{first}");
    let fixed = b"POST /push/H HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nworld";
    stream
        .write_all(&[&fixed[..], head, b"ffffffffffffffff\r\n"].concat())
        .await
        .unwrap();
    let both = read_until(&mut stream, |s| {
        s.matches('}').count() >= 2 && s.contains("413")
    })
    .await;
    let answers: Vec<&str> = both.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 2, "{both}");
    assert!(answers[0].starts_with("200 "), "{both}");
    assert!(
        answers[1].starts_with("413 ") && answers[1].contains("body_too_large"),
        "{both}"
    );
}

/// Posts `body` (of `content_type`) to `path` as device `device` with `key`; returns the
/// status, whether the answer says it was replayed, and the JSON answer.
async fn keyed_post(
    server: &TestServer,
    path: &str,
    device: &str,
    key: &str,
    (content_type, body): (&str, &str),
) -> (u16, bool, serde_json::Value) {
    let answer = server
        .http
        .post(server.url(path))
        .header("device", device)
        .header("Idempotency-Key", key)
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .expect("post");
    let status = answer.status().as_u16();
    let replayed = answer
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    (status, replayed, answer.json().await.unwrap_or_default())
}

fn text(body: &str) -> (&str, &str) {
    ("text/plain", body)
}

fn ndjson(body: &str) -> (&str, &str) {
    ("application/x-ndjson", body)
}

/// Asserts that nothing of publisher A (its device, bodies or status) is in what B was told.
fn tells_nothing_of_a(told: &serde_json::Value) {
    let told = told.to_string();
    for secret in ["PA", "HA", "secret", "shipped"] {
        assert!(!told.contains(secret), "{secret} in {told}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_per_publisher_and_tell_nothing_of_another() {
    let server = TestServer::start(&["-q"]).await;
    let push = "/push/Keys";
    let (status, replayed, first) =
        keyed_post(&server, push, "PA", "order-17", text("secret of A")).await;
    assert_eq!((status, replayed), (200, false), "{first}");
    // A's own retry is answered with its event, as before.
    let (status, replayed, again) =
        keyed_post(&server, push, "PA", "order-17", text("secret of A")).await;
    assert_eq!((status, replayed, &again["id"]), (200, true, &first["id"]));
    // The same key with another body is still A's conflict.
    let (status, _, conflict) =
        keyed_post(&server, push, "PA", "order-17", text("secret, changed")).await;
    assert_eq!(status, 409, "{conflict}");

    // B sends A's key and A's body: stored as B's own new event, nothing of A's told.
    let (status, replayed, answer) =
        keyed_post(&server, push, "PB", "order-17", text("secret of A")).await;
    assert_eq!((status, replayed), (200, false), "{answer}");
    let b_id = answer["id"].as_u64().expect("an id");
    assert_eq!(b_id, first["id"].as_u64().unwrap() + 1, "a new event");
    tells_nothing_of_a(&answer);
    let (status, replayed, again) =
        keyed_post(&server, push, "PB", "order-17", text("secret of A")).await;
    assert_eq!(
        (status, replayed, again["id"].as_u64()),
        (200, true, Some(b_id))
    );
    let stored: serde_json::Value = server
        .http
        .get(server.url(&format!("/events/Keys/{b_id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored["device"], "PB", "{stored}");

    // A batch line with A's key is B's own event too; B's own key replays B's own.
    let (status, replayed, batch) = keyed_post(
        &server,
        push,
        "PB",
        "batch-1",
        ndjson("{\"n\":1}\n{\"n\":2}\n"),
    )
    .await;
    assert_eq!((status, replayed), (200, false), "{batch}");
    let a_batch = "{\"text\":\"secret line\",\"idempotency_key\":\"batch-1.0\"}\n";
    let (status, _, a_answer) = server_envelope(&server, "PA", a_batch).await;
    assert_eq!(status, 200, "{a_answer}");
    let a_line = a_answer["ids"][0].as_u64().unwrap();
    let mixed = "{\"text\":\"secret line\",\"idempotency_key\":\"batch-1.0\"}\n\
                 {\"text\":\"mine\",\"idempotency_key\":\"order-17\"}\n";
    let (status, replayed, answer) = server_envelope(&server, "PC", mixed).await;
    assert_eq!((status, replayed), (200, false), "{answer}");
    let ids: Vec<u64> = answer["ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    assert_eq!(
        ids,
        [a_line + 1, a_line + 2],
        "two new events of C: {answer}"
    );
    assert_eq!(answer["replayed"], 0);
    tells_nothing_of_a(&answer);
    let own = "{\"text\":\"fresh\",\"idempotency_key\":\"fresh\"}\n\
               {\"text\":\"secret of A\",\"idempotency_key\":\"order-17\"}\n";
    let (status, _, answer) = server_envelope(&server, "PB", own).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["ids"][1].as_u64(),
        Some(b_id),
        "B's own key: {answer}"
    );
    assert_eq!(answer["replayed"], 1, "only B's own key replays: {answer}");

    // Receipt keys: B's key is its own, single or in a batch, and learns nothing of A's.
    let feedback = format!("/feedback/Keys?id={}&status=shipped-to-A", first["id"]);
    let (status, _, _) = keyed_post(&server, &feedback, "HA", "r-1", text("")).await;
    assert_eq!(status, 200);
    let feedback = format!("/feedback/Keys?id={}&status=ok", first["id"]);
    let (status, replayed, answer) = keyed_post(&server, &feedback, "HB", "r-1", text("")).await;
    assert_eq!((status, replayed), (200, false), "{answer}");
    assert_eq!(
        (answer["device"].as_str(), answer["status"].as_str()),
        (Some("HB"), Some("ok"))
    );
    tells_nothing_of_a(&answer);
    let lines = format!(
        "{{\"id\":{},\"status\":\"ok\",\"key\":\"r-1\"}}\n",
        first["id"]
    );
    let (status, replayed, answer) =
        keyed_post(&server, "/feedback/Keys", "HC", "rb", ndjson(&lines)).await;
    assert_eq!((status, replayed), (200, false), "{answer}");
    assert_eq!(answer["receipts"][0]["replayed"], false, "{answer}");
    tells_nothing_of_a(&answer);
    let (status, replayed, answer) =
        keyed_post(&server, "/feedback/Keys", "HB", "rb", ndjson(&lines)).await;
    assert_eq!(
        (status, replayed),
        (200, true),
        "B's own receipt key: {answer}"
    );
    tells_nothing_of_a(&answer);
}

/// Pushes an NDJSON batch of envelopes as `device`; returns what [`keyed_post`] returns.
async fn server_envelope(
    server: &TestServer,
    device: &str,
    lines: &str,
) -> (u16, bool, serde_json::Value) {
    let answer = server
        .http
        .post(server.url("/push/Keys"))
        .header("device", device)
        .header("content-type", "application/x-ndjson")
        .header("Pere-Batch", "envelope")
        .body(lines.to_owned())
        .send()
        .await
        .expect("post");
    let status = answer.status().as_u16();
    let replayed = answer
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    (status, replayed, answer.json().await.unwrap_or_default())
}

/// Pieces of heads, well formed or not, sent in every pair behind nothing or a served request,
/// the client then closing its side: each connection ends, and every answer is the server's
/// own (JSON, or an empty 204), never a bare status from hyper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_pair_of_head_pieces_gets_json_answers_and_the_connection_ends() {
    let server = TestServer::start(&server_args()).await;
    let long = "a".repeat(9_000);
    let pieces: Vec<&[u8]> = vec![
        b"\r\n",
        b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /a b HTTP/1.1\r\n",
        b"Content-Length: 3\r\n",
        b"Transfer-Encoding: gzip\r\n",
        b"X: \x01\r\n",
        b"\x16\x03\x01",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        long.as_bytes(),
        b"\r\n\r\n",
    ];
    let before: [&[u8]; 2] = [
        b"",
        b"POST /push/Z HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}",
    ];
    for first in before {
        for a in &pieces {
            for b in &pieces {
                let sent = [first, a, b].concat();
                let mut stream = TcpStream::connect(server.host_port()).await.unwrap();
                stream.write_all(&sent).await.unwrap();
                let _ = stream.shutdown().await;
                let mut answers = Vec::new();
                let ended = tokio::time::timeout(WAIT, stream.read_to_end(&mut answers)).await;
                let shown = String::from_utf8_lossy(&sent[..sent.len().min(120)]).into_owned();
                assert!(ended.is_ok(), "the connection stays open after {shown:?}");
                let answers = String::from_utf8_lossy(&answers);
                for answer in answers.split("HTTP/1.1 ").skip(1) {
                    let head = answer.split("\r\n\r\n").next().unwrap_or_default();
                    let own = head.contains("application/json")
                        || head.contains("text/event-stream")
                        || head.starts_with("204");
                    assert!(own, "a bare answer {head:?} to {shown:?}");
                }
            }
        }
    }
    still_answers(&server, "pairs of head pieces").await;
}
