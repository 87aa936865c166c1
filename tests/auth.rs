//! End-to-end tests of who may use the server: the protected, open and token modes, every
//! endpoint against every kind of token on both kinds of feed connection, where tokens travel,
//! the `token` subcommand, the tools' `--token`, and CORS.

use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use pere_e2e::{Proc, TestServer, WAIT};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "test-secret-of-at-least-32-bytes-0123456789";
const OTHER_SECRET: &str = "another-secret-of-at-least-32-bytes-xxxxxxx";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A token for `sub`, signed with `secret`, expiring `ttl` seconds from now (negative: past).
fn token(
    secret: &str,
    sub: &str,
    publish: &[&str],
    subscribe: &[&str],
    admin: bool,
    ttl: i64,
) -> String {
    let claims = json!({
        "sub": sub,
        "exp": now() + ttl,
        "pere": {"publish": publish, "subscribe": subscribe, "admin": admin},
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

async fn start_with_secret(extra: &[&str]) -> TestServer {
    let mut args = vec!["--jwt-secret", SECRET];
    args.extend_from_slice(extra);
    TestServer::start(&args).await
}

/// One answer read from a raw connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn code(&self) -> Option<String> {
        let json: Value = serde_json::from_str(&self.body).ok()?;
        json["error"]["code"].as_str().map(str::to_owned)
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// Reads one response: its head, then a `Content-Length` body (an SSE answer: the head alone).
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Answer {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("answer in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before an answer: {}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut answer = Answer {
        status,
        head,
        body: String::new(),
    };
    let length: usize = answer
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("body in time")
            .unwrap();
        assert!(n > 0, "closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    answer.body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    buf.drain(..head_end + length);
    answer
}

/// Sends `request` on a new connection (after `GET /health` on the same one when `after_health`)
/// and reads its answer.
async fn send(address: &str, request: &str, after_health: bool) -> Answer {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut buf = Vec::new();
    if after_health {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let health = read_answer(&mut stream, &mut buf).await;
        assert_eq!(health.status, 200, "{health:?}");
    }
    stream.write_all(request.as_bytes()).await.unwrap();
    read_answer(&mut stream, &mut buf).await
}

/// A request's bytes, with a token header and a device header when given.
fn request(
    method: &str,
    path: &str,
    token: Option<&str>,
    device: Option<&str>,
    body: Option<&str>,
) -> String {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    if let Some(token) = token {
        out.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(device) = device {
        out.push_str(&format!("device: {device}\r\n"));
    }
    match body {
        Some(body) => out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        None => out.push_str("\r\n"),
    }
    out
}

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Nothing,
    Publish,
    Subscribe,
    Admin,
    /// Admin, or subscribe rights and being the device named in the path.
    OwnOrAdmin,
}

/// The tokens of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    NoToken,
    Expired,
    WrongSignature,
    OtherChannel,
    OtherDevice,
    AdminOnly,
    Valid,
}

impl Case {
    const ALL: [Case; 7] = [
        Case::NoToken,
        Case::Expired,
        Case::WrongSignature,
        Case::OtherChannel,
        Case::OtherDevice,
        Case::AdminOnly,
        Case::Valid,
    ];

    /// The token and the `device` header of this case; the request's device is always D1.
    fn credentials(self) -> (Option<String>, Option<&'static str>) {
        let day = 86_400;
        match self {
            Case::NoToken => (None, None),
            Case::Expired => (Some(token(SECRET, "D1", &["A"], &["A"], true, -3600)), None),
            Case::WrongSignature => (
                Some(token(OTHER_SECRET, "D1", &["A"], &["A"], true, day)),
                None,
            ),
            Case::OtherChannel => (
                Some(token(SECRET, "D1", &["B", "A.*"], &["B"], false, day)),
                None,
            ),
            // A token for D2, on a request that says it is D1.
            Case::OtherDevice => (
                Some(token(SECRET, "D2", &["*"], &["*"], true, day)),
                Some("D1"),
            ),
            Case::AdminOnly => (Some(token(SECRET, "ADM", &[], &[], true, day)), None),
            Case::Valid => (Some(token(SECRET, "D1", &["A"], &["A"], false, day)), None),
        }
    }

    fn expected(self, needs: Needs) -> (u16, Option<&'static str>) {
        if needs == Needs::Nothing {
            return (200, None);
        }
        match (self, needs) {
            (Case::NoToken, _) => (401, Some("missing_token")),
            (Case::Expired, _) => (401, Some("expired_token")),
            (Case::WrongSignature, _) => (401, Some("invalid_token")),
            (Case::OtherDevice, _) => (403, Some("device_mismatch")),
            (Case::OtherChannel, _) => (403, Some("forbidden")),
            (Case::AdminOnly, Needs::Admin | Needs::OwnOrAdmin) => (200, None),
            (Case::AdminOnly, _) => (403, Some("forbidden")),
            (Case::Valid, Needs::Admin) => (403, Some("forbidden")),
            (Case::Valid, _) => (200, None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_against_every_kind_of_token_on_both_kinds_of_connection() {
    let server = start_with_secret(&[]).await;
    let address = server.host_port();
    // Event 1 of channel A, for the receipt and the event views.
    let seed = token(SECRET, "P1", &["A"], &[], false, 600);
    let pushed = send(
        &address,
        &request("POST", "/push/A", Some(&seed), None, Some("{\"n\":1}")),
        false,
    )
    .await;
    assert_eq!(pushed.status, 200, "{pushed:?}");

    let receipt = r#"{"device":"D1","id":1,"status":"ok"}"#;
    let endpoints: &[(&str, &str, Option<&str>, Needs)] = &[
        ("GET", "/", None, Needs::Nothing),
        ("GET", "/subscriber.html", None, Needs::Nothing),
        ("GET", "/pere.js", None, Needs::Nothing),
        ("GET", "/health", None, Needs::Nothing),
        ("POST", "/push/A", Some("{\"n\":2}"), Needs::Publish),
        ("GET", "/feed/A", None, Needs::Subscribe),
        ("POST", "/feedback/A", Some(receipt), Needs::Subscribe),
        ("GET", "/receipts/A", None, Needs::Subscribe),
        ("GET", "/presence/A", None, Needs::Subscribe),
        ("GET", "/admin/connections", None, Needs::Admin),
        ("GET", "/admin/events/A", None, Needs::Admin),
        ("GET", "/admin/devices/A", None, Needs::Admin),
        ("GET", "/admin/receipts/A/1", None, Needs::Admin),
        ("PUT", "/devices/A/D9", None, Needs::Admin),
        ("DELETE", "/devices/A/D9", None, Needs::Admin),
        ("GET", "/events/A", None, Needs::Admin),
        ("GET", "/events/A/1", None, Needs::Admin),
        ("GET", "/devices/A/D1/pending", None, Needs::OwnOrAdmin),
    ];
    let mut checked = 0;
    for case in Case::ALL {
        let (token, device) = case.credentials();
        for &(method, path, body, needs) in endpoints {
            // A feed is tried as a connection's first request (the dedicated loop) and after
            // another request on a kept-alive connection (hyper): the same door, the same answer.
            let kinds: &[bool] = if path.starts_with("/feed/") {
                &[false, true]
            } else {
                &[false]
            };
            for &after_health in kinds {
                let answer = send(
                    &address,
                    &request(method, path, token.as_deref(), device, body),
                    after_health,
                )
                .await;
                let (status, code) = case.expected(needs);
                let what =
                    format!("{case:?} {method} {path} (after /health: {after_health}): {answer:?}");
                assert_eq!(answer.status, status, "{what}");
                assert_eq!(answer.code().as_deref(), code, "{what}");
                if status == 401 {
                    assert!(
                        answer
                            .header("www-authenticate")
                            .is_some_and(|c| c.starts_with("Bearer")),
                        "{what}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, Case::ALL.len() * (endpoints.len() + 1));
    // Refusals are logged with the path only: no token ever appears in the log.
    server
        .proc
        .wait_line(|l| l.contains(" REFUSED> GET /admin/connections: 401 missing_token"))
        .await;
    assert!(server
        .proc
        .lines()
        .iter()
        .chain(server.proc.errors().iter())
        .all(|l| !l.contains("eyJ")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_travel_in_the_header_the_query_or_a_cookie_and_never_reach_the_log() {
    let server = start_with_secret(&["--log-level", "debug"]).await;
    let address = server.host_port();
    let sub = token(SECRET, "H1", &["Q"], &["Q"], false, 600);
    for after_health in [false, true] {
        let by_query = request(
            "GET",
            &format!("/feed/Q?access_token={sub}"),
            None,
            None,
            None,
        );
        assert_eq!(send(&address, &by_query, after_health).await.status, 200);
        let by_cookie = format!(
            "GET /feed/Q HTTP/1.1\r\nHost: localhost\r\nCookie: theme=dark; pere_token={sub}\r\n\r\n"
        );
        assert_eq!(send(&address, &by_cookie, after_health).await.status, 200);
        let wrong_scheme = format!(
            "GET /feed/Q HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {sub}\r\n\r\n"
        );
        assert_eq!(
            send(&address, &wrong_scheme, after_health)
                .await
                .code()
                .as_deref(),
            Some("invalid_token")
        );
    }
    // The token's device is the device: the feeds were H1's.
    server
        .proc
        .wait_lines(4, |l| {
            l.contains(" FEED REQ> ") && l.contains("device: H1,")
        })
        .await;
    server
        .proc
        .wait_lines(2, |l| {
            l.contains(" REFUSED> GET /feed/Q: 401 invalid_token")
        })
        .await;
    assert!(server
        .proc
        .lines()
        .iter()
        .chain(server.proc.errors().iter())
        .all(|l| !l.contains(&sub[..20])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_posts_receipts_only_as_itself() {
    let server = start_with_secret(&[]).await;
    let address = server.host_port();
    let publisher = token(SECRET, "P1", &["R"], &[], false, 600);
    assert_eq!(
        send(
            &address,
            &request("POST", "/push/R", Some(&publisher), None, Some("{}")),
            false
        )
        .await
        .status,
        200
    );
    let d2 = token(SECRET, "D2", &[], &["R"], false, 600);
    let forged = send(
        &address,
        &request(
            "POST",
            "/feedback/R",
            Some(&d2),
            None,
            Some(r#"{"device":"D1","id":1}"#),
        ),
        false,
    )
    .await;
    assert_eq!(
        (forged.status, forged.code().as_deref()),
        (403, Some("device_mismatch")),
        "{forged:?}"
    );
    let own = send(
        &address,
        &request("POST", "/feedback/R", Some(&d2), None, Some(r#"{"id":1}"#)),
        false,
    )
    .await;
    assert_eq!(own.status, 200, "{own:?}");
    let receipt: Value = serde_json::from_str(&own.body).unwrap();
    assert_eq!(
        receipt["device"], "D2",
        "without a device named, the token's device acknowledges"
    );
    // A form receipt with a device header that is not the token's: refused at the door.
    let form = format!(
        "POST /feedback/R HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {d2}\r\ndevice: D1\r\nlast_event_id: 1\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 9\r\n\r\nstatus=ok"
    );
    assert_eq!(
        send(&address, &form, false).await.code().as_deref(),
        Some("device_mismatch")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_subscribers_read_feeds_and_nothing_else() {
    let server = start_with_secret(&["--anonymous-subscribe"]).await;
    let address = server.host_port();
    server
        .proc
        .wait_line(|l| {
            l.contains("security: tokens required") && l.contains("--anonymous-subscribe")
        })
        .await;
    let publisher = token(SECRET, "P1", &["N"], &[], false, 600);
    assert_eq!(
        send(
            &address,
            &request("POST", "/push/N", Some(&publisher), None, Some("{\"n\":1}")),
            false
        )
        .await
        .status,
        200
    );
    for after_health in [false, true] {
        let feed = send(
            &address,
            &request("GET", "/feed/N", None, None, None),
            after_health,
        )
        .await;
        assert_eq!(feed.status, 200, "{feed:?}");
        // A device needs a token: naming one without is refused, not ignored.
        let named = send(
            &address,
            &request("GET", "/feed/N", None, Some("D1"), None),
            after_health,
        )
        .await;
        assert_eq!(
            (named.status, named.code().as_deref()),
            (401, Some("missing_token")),
            "{named:?}"
        );
    }
    for (method, path, body) in [
        ("GET", "/receipts/N", None),
        ("GET", "/presence/N", None),
        ("POST", "/feedback/N", Some(r#"{"device":"D1","id":1}"#)),
        ("POST", "/push/N", Some("{}")),
        ("GET", "/admin/connections", None),
    ] {
        let answer = send(&address, &request(method, path, None, None, body), false).await;
        assert_eq!(
            (answer.status, answer.code().as_deref()),
            (401, Some("missing_token")),
            "{method} {path}"
        );
    }
    // An anonymous listener receives the events.
    let mut feed = server.feed("N", &[]).await;
    assert_eq!(feed.next().await.data, "{\"n\":1}");
}

/// A local address of this machine that is not a loopback one, if it has any (the kernel picks
/// the source address of a route; a UDP connect sends nothing).
fn non_loopback_address() -> Option<IpAddr> {
    [
        "10.255.255.255:9",
        "192.0.2.255:9",
        "172.31.255.255:9",
        "192.168.255.255:9",
    ]
    .iter()
    .find_map(|target| {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        socket.connect(target).ok()?;
        let ip = socket.local_addr().ok()?.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_the_protected_mode_answers_this_machine_only_unless_open() {
    // On every address, so that the same server can be reached from loopback and from outside.
    let protected = TestServer::start(&["-o", "0.0.0.0"]).await;
    protected
        .proc
        .wait_line(|l| l.contains("security: protected mode"))
        .await;
    let port = protected.host_port().rsplit(':').next().unwrap().to_owned();
    let local = send(
        &format!("127.0.0.1:{port}"),
        &request("POST", "/push/P", None, Some("D1"), Some("{}")),
        false,
    )
    .await;
    assert_eq!(
        local.status, 200,
        "loopback clients are answered as in the original: {local:?}"
    );

    let open = TestServer::start(&["-o", "0.0.0.0", "--open"]).await;
    open.proc
        .wait_line(|l| l.contains("security: open mode"))
        .await;
    let open_port = open.host_port().rsplit(':').next().unwrap().to_owned();

    let Some(ip) = non_loopback_address() else {
        // The peer check itself is unit-tested (auth::tests::only_loopback_peers_are_local).
        eprintln!("no non-loopback address on this machine: the refusal of outside peers is not tried end to end");
        return;
    };
    let outside = SocketAddr::new(ip, port.parse().unwrap()).to_string();
    for after_health in [false, true] {
        let feed = request("GET", "/feed/P", None, Some("D1"), None);
        // The refusal comes before anything else, /health included.
        let answer = if after_health {
            send(
                &outside,
                &request("GET", "/health", None, None, None),
                false,
            )
            .await
        } else {
            send(&outside, &feed, false).await
        };
        assert_eq!(
            (answer.status, answer.code().as_deref()),
            (403, Some("forbidden")),
            "{answer:?}"
        );
        assert!(
            answer.body.contains("--open") && answer.body.contains("--jwt-secret"),
            "says how: {answer:?}"
        );
    }
    let push = send(
        &outside,
        &request("POST", "/push/P", None, Some("D1"), Some("{}")),
        false,
    )
    .await;
    assert_eq!(push.code().as_deref(), Some("forbidden"));

    let outside_open = SocketAddr::new(ip, open_port.parse().unwrap()).to_string();
    let answer = send(
        &outside_open,
        &request("POST", "/push/P", None, Some("D1"), Some("{}")),
        false,
    )
    .await;
    assert_eq!(
        answer.status, 200,
        "--open answers every client: {answer:?}"
    );
    let feed = send(
        &outside_open,
        &request("GET", "/feed/P", None, Some("D1"), None),
        false,
    )
    .await;
    assert_eq!(feed.status, 200, "{feed:?}");
}

/// A token with `claims` (and `sub`, `exp` and a publish grant for A), signed with [`SECRET`].
fn token_with(claims: Value) -> String {
    let mut all = json!({"sub": "D1", "exp": now() + 600, "pere": {"publish": ["A"]}});
    for (key, value) in claims.as_object().unwrap() {
        all[key] = value.clone();
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &all,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audience_may_be_one_name_or_an_array_that_holds_it() {
    let server = start_with_secret(&["--jwt-audience", "pere"]).await;
    let address = server.host_port();
    let push = |token: &str| request("POST", "/push/A", Some(token), None, Some("{}"));
    // RFC 7519: `aud` is a string, or an array of strings of which this server must be one.
    for (aud, status) in [
        (json!("pere"), 200),
        (json!(["other", "pere"]), 200),
        (json!(["pere"]), 200),
        (json!(["other", "more"]), 401),
        (json!("other"), 401),
        (json!([]), 401),
    ] {
        let answer = send(&address, &push(&token_with(json!({"aud": aud}))), false).await;
        assert_eq!(answer.status, status, "aud {aud}: {answer:?}");
    }
    let without = send(&address, &push(&token_with(json!({}))), false).await;
    assert_eq!(
        without.code().as_deref(),
        Some("invalid_token"),
        "aud is required"
    );
}

/// `request`'s bytes with `Host: host` instead of the helper's own.
fn addressed(request: &str, host: &str) -> String {
    request.replacen("Host: localhost\r\n", &format!("Host: {host}\r\n"), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protected_mode_answers_only_requests_addressed_to_this_machine() {
    // A page of evil.example that made its name resolve to 127.0.0.1 (DNS rebinding) has the
    // browser send its requests from this machine, but addressed to evil.example.
    let server = TestServer::start(&[]).await;
    let address = server.host_port();
    let port = address.rsplit(':').next().unwrap().to_owned();
    let admin = request("GET", "/admin/channels", None, None, None);
    let push = "POST /push/Rebound HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n\
                Content-Length: 1\r\n\r\nx"
        .to_owned();
    let feed = request("GET", "/feed/Rebound", None, Some("D1"), None);
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_owned(),
        format!("localhost.evil.example:{port}"),
        format!("10.0.0.1:{port}"),
    ] {
        for (what, request, after_health) in [
            ("admin view", &admin, false),
            ("push", &push, false),
            ("feed on its own connection", &feed, false),
            ("feed after a request", &feed, true),
        ] {
            let answer = send(&address, &addressed(request, &host), after_health).await;
            assert_eq!(
                (answer.status, answer.code().as_deref()),
                (421, Some("unknown_host")),
                "{what} addressed to {host}: {answer:?}"
            );
            assert!(
                answer.body.contains("--allowed-host"),
                "says what to do: {answer:?}"
            );
        }
    }
    server
        .proc
        .wait_line(|l| l.contains(" REFUSED> GET /admin/channels: 421 unknown_host"))
        .await;
    assert_eq!(
        server.get_json("/admin/channels").await["channels"],
        json!([]),
        "nothing was pushed"
    );
    // This machine's names, with or without the port, and those of --allowed-host.
    let server = TestServer::start(&["--allowed-host", "pere.test"]).await;
    let address = server.host_port();
    let port = address.rsplit(':').next().unwrap().to_owned();
    for host in [
        format!("localhost:{port}"),
        "localhost".to_owned(),
        format!("127.0.0.1:{port}"),
        "127.0.0.2".to_owned(),
        format!("[::1]:{port}"),
        format!("pere.test:{port}"),
        "PERE.test".to_owned(),
    ] {
        let answer = send(&address, &addressed(&admin, &host), false).await;
        assert_eq!(answer.status, 200, "{host}: {answer:?}");
    }
    // HTTP/2: the :authority is the host.
    for (name, status) in [
        ("evil.example", 421),
        ("pere.test", 200),
        ("localhost", 200),
    ] {
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .resolve(name, address.parse().unwrap())
            .build()
            .unwrap();
        let answer = client
            .get(format!("http://{name}:{port}/admin/channels"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.version(), reqwest::Version::HTTP_2);
        assert_eq!(answer.status().as_u16(), status, "HTTP/2 to {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_host_must_be_a_name() {
    let mut wrong = Proc::start("pere-server", &["--allowed-host", "http://pere.test:80"]);
    assert_eq!(wrong.wait_exit().await, 2);
    assert!(
        wrong.errors().join("\n").contains("allowed-host"),
        "{:?}",
        wrong.errors()
    );
}

/// A simple request (one a page of any site may send without asking: a form's, or `fetch`'s
/// with `text/plain`) with `extra` header lines.
fn simple(method: &str, path: &str, extra: &[String], body: &str) -> String {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    for line in extra {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_another_site_cannot_change_anything_with_the_cookie() {
    let server = start_with_secret(&["--allow-origin", "https://app.example"]).await;
    let address = server.host_port();
    let port = address.rsplit(':').next().unwrap().to_owned();
    let publisher = token(SECRET, "P1", &["X"], &[], false, 600);
    let device = token(SECRET, "D1", &[], &["X"], false, 600);
    let admin = token(SECRET, "ADM", &[], &[], true, 600);
    let cookie = |token: &str| format!("Cookie: theme=dark; pere_token={token}");
    let evil = "Origin: https://evil.example".to_owned();
    let pushed = |answer: &Answer| -> u64 {
        let json: Value = serde_json::from_str(&answer.body).unwrap();
        json["id"].as_u64().unwrap_or_else(|| panic!("{answer:?}"))
    };

    // What a page of evil.example can make a browser holding the cookie send: refused, whatever
    // the browser says of where it comes from.
    let here = format!("localhost:{port}");
    let push = |headers: &[String]| {
        let mut all = vec![cookie(&publisher)];
        all.extend_from_slice(headers);
        addressed(&simple("POST", "/push/X", &all, "x"), &here)
    };
    for (what, headers) in [
        ("another origin", vec![evil.clone()]),
        ("an opaque origin", vec!["Origin: null".to_owned()]),
        ("cross-site", vec!["Sec-Fetch-Site: cross-site".to_owned()]),
        ("same-site", vec!["Sec-Fetch-Site: same-site".to_owned()]),
        (
            "another origin, cross-site",
            vec![evil.clone(), "Sec-Fetch-Site: cross-site".to_owned()],
        ),
        (
            "the server's host on another scheme",
            vec![format!("Origin: https://localhost:{port}")],
        ),
        ("no browser's word at all", vec![]),
    ] {
        let answer = send(&address, &push(&headers), false).await;
        assert_eq!(
            (answer.status, answer.code().as_deref()),
            (403, Some("cross_origin")),
            "{what}: {answer:?}"
        );
        assert!(
            answer.body.contains("--allow-origin") && answer.body.contains("Authorization"),
            "says what to do: {answer:?}"
        );
    }
    server
        .proc
        .wait_line(|l| l.contains(" REFUSED> POST /push/X: 403 cross_origin"))
        .await;
    // Receipts and device changes too.
    let receipt = simple(
        "POST",
        "/feedback/X",
        &[cookie(&device), evil.clone(), "last_event_id: 1".to_owned()],
        "",
    );
    let register = simple("PUT", "/devices/X/D9", &[cookie(&admin), evil.clone()], "");
    let remove = simple(
        "DELETE",
        "/devices/X/D9",
        &[cookie(&admin), evil.clone()],
        "",
    );
    for (what, request) in [
        ("receipt", receipt),
        ("register", register),
        ("remove", remove),
    ] {
        let answer = send(&address, &request, false).await;
        assert_eq!(
            answer.code().as_deref(),
            Some("cross_origin"),
            "{what}: {answer:?}"
        );
    }

    // Nothing was stored: the first push the server takes is event 1.
    let same_origin = send(
        &address,
        &push(&[format!("Origin: http://localhost:{port}")]),
        false,
    )
    .await;
    assert_eq!(
        (same_origin.status, pushed(&same_origin)),
        (200, 1),
        "{same_origin:?}"
    );
    // The server's own pages, a listed origin, and what the browser calls same-origin or the
    // user's own action pass with the cookie.
    for headers in [
        vec!["Origin: https://app.example".to_owned()],
        vec!["Sec-Fetch-Site: same-origin".to_owned()],
        vec!["Sec-Fetch-Site: none".to_owned()],
        vec![
            "Origin: https://proxy.example".to_owned(),
            "Sec-Fetch-Site: same-origin".to_owned(),
        ],
    ] {
        let answer = send(&address, &push(&headers), false).await;
        assert_eq!(answer.status, 200, "{headers:?}: {answer:?}");
    }
    // A token in a header or the query is no browser's doing: any origin.
    let bearer = simple(
        "POST",
        "/push/X",
        &[format!("Authorization: Bearer {publisher}"), evil.clone()],
        "x",
    );
    assert_eq!(send(&address, &bearer, false).await.status, 200);
    let query = simple(
        "POST",
        &format!("/push/X?access_token={publisher}"),
        std::slice::from_ref(&evil),
        "x",
    );
    assert_eq!(send(&address, &query, false).await.status, 200);
    // Reading is no change: a feed with the cookie from another origin opens (CORS decides
    // whether the page may read it).
    let feed = format!(
        "GET /feed/X HTTP/1.1\r\nHost: localhost\r\n{}\r\n{evil}\r\n\r\n",
        cookie(&device)
    );
    for after_health in [false, true] {
        assert_eq!(send(&address, &feed, after_health).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_key_a_page_of_another_site_cannot_change_anything() {
    // Being on this machine (or, with --open, on the network) is the credential then, and a
    // browser there lends it to every page it shows.
    for mode in [&[][..], &["--open"][..]] {
        let mut args = vec!["--allow-origin", "https://app.example"];
        args.extend_from_slice(mode);
        let server = TestServer::start(&args).await;
        let address = server.host_port();
        let port = address.rsplit(':').next().unwrap().to_owned();
        let here = format!("localhost:{port}");
        let push = |origin: Option<&str>| {
            let extra: Vec<String> = origin.map(|o| format!("Origin: {o}")).into_iter().collect();
            addressed(&simple("POST", "/push/Y", &extra, "x"), &here)
        };
        for origin in ["https://evil.example", "null"] {
            let answer = send(&address, &push(Some(origin)), false).await;
            assert_eq!(
                (answer.status, answer.code().as_deref()),
                (403, Some("cross_origin")),
                "{mode:?} {origin}: {answer:?}"
            );
            assert!(answer.body.contains("--allow-origin"), "{answer:?}");
        }
        let cross = simple(
            "PUT",
            "/devices/Y/D1",
            &["Sec-Fetch-Site: cross-site".to_owned()],
            "",
        );
        assert_eq!(
            send(&address, &cross, false).await.code().as_deref(),
            Some("cross_origin")
        );
        let own = format!("http://localhost:{port}");
        for origin in [None, Some(own.as_str()), Some("https://app.example")] {
            let answer = send(&address, &push(origin), false).await;
            assert_eq!(answer.status, 200, "{mode:?} {origin:?}: {answer:?}");
        }
    }
    // `*` lets any page in where there are no credentials.
    let any = TestServer::start(&["--allow-origin", "*"]).await;
    let answer = send(
        &any.host_port(),
        &simple(
            "POST",
            "/push/Y",
            &["Origin: https://evil.example".to_owned()],
            "x",
        ),
        false,
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_subcommand_mints_tokens_the_server_accepts() {
    let mut mint = Proc::start(
        "pere-server",
        &[
            "token",
            "--jwt-secret",
            SECRET,
            "--sub",
            "D7",
            "--publish",
            "orders.*",
            "--subscribe",
            "orders.eu",
            "--admin",
            "--ttl",
            "2h",
        ],
    );
    assert_eq!(mint.wait_exit().await, 0, "{:?}", mint.errors());
    let minted = mint.lines().join("");
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    let claims: Value = jsonwebtoken::decode(
        &minted,
        &DecodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        &validation,
    )
    .expect("the minted token verifies")
    .claims;
    assert_eq!(claims["sub"], "D7");
    assert_eq!(
        claims["pere"],
        json!({"publish": ["orders.*"], "subscribe": ["orders.eu"], "admin": true})
    );
    let ttl = claims["exp"].as_i64().unwrap() - now();
    assert!((7000..=7200).contains(&ttl), "{ttl}");

    let server = start_with_secret(&[]).await;
    let address = server.host_port();
    let push = |channel: &str| {
        request(
            "POST",
            &format!("/push/{channel}"),
            Some(&minted),
            None,
            Some("{}"),
        )
    };
    assert_eq!(send(&address, &push("orders.us"), false).await.status, 200);
    assert_eq!(
        send(&address, &push("orders"), false)
            .await
            .code()
            .as_deref(),
        Some("forbidden")
    );

    // Without a key, one clear line and a failure.
    let mut keyless = Proc::start("pere-server", &["token", "--sub", "D7"]);
    assert_ne!(keyless.wait_exit().await, 0);
    assert_eq!(keyless.errors().len(), 1, "{:?}", keyless.errors());
    assert!(keyless.errors()[0].contains("no key to sign with"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_tokens_from_a_private_key_verify_with_the_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("es.key");
    let public = dir.path().join("es.pub");
    std::fs::write(&private, ES256_PRIVATE).unwrap();
    std::fs::write(&public, ES256_PUBLIC).unwrap();
    let mut mint = Proc::start(
        "pere-server",
        &[
            "token",
            "--jwt-private-key",
            private.to_str().unwrap(),
            "--sub",
            "E1",
            "--publish",
            "ec",
        ],
    );
    assert_eq!(mint.wait_exit().await, 0, "{:?}", mint.errors());
    let minted = mint.lines().join("");
    let server = TestServer::start(&["--jwt-public-key", public.to_str().unwrap()]).await;
    server
        .proc
        .wait_line(|l| l.contains("security: tokens required (ES256)"))
        .await;
    let address = server.host_port();
    assert_eq!(
        send(
            &address,
            &request("POST", "/push/ec", Some(&minted), None, Some("{}")),
            false
        )
        .await
        .status,
        200
    );
    // An HS256 token is refused by a server that verifies ES256.
    let hs = token(SECRET, "E1", &["ec"], &[], false, 600);
    assert_eq!(
        send(
            &address,
            &request("POST", "/push/ec", Some(&hs), None, Some("{}")),
            false
        )
        .await
        .code()
        .as_deref(),
        Some("invalid_token")
    );
}

const ES256_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgb0D6giMkUBaIBnq2
RG3ntjZRW6Hm0PA/HXus8DdwOCWhRANCAAQ60iIJkjOXva8i6WZPfrDHQjJSidF8
PcZv3CGS/ZfRyVsZK+FsTSrLusYGA5f71jp/Ipjqp4/ow1/HJ1fTk/xu
-----END PRIVATE KEY-----
";

const ES256_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEOtIiCZIzl72vIulmT36wx0IyUonR
fD3Gb9whkv2X0clbGSvhbE0qy7rGBgOX+9Y6fyKY6qeP6MNfxydX05P8bg==
-----END PUBLIC KEY-----
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_send_their_token() {
    let server = start_with_secret(&[]).await;
    let host = server.host_port();
    let sub_token = token(SECRET, "H1", &[], &["T"], false, 600);
    let pub_token = token(SECRET, "P1", &["T"], &[], false, 600);

    // pere-sub's device is its token's; it subscribes and acknowledges as H1.
    let subscriber = Proc::start(
        "pere-sub",
        &[&host, "T", "--token", &sub_token, "--count", "1"],
    );
    server
        .proc
        .wait_line(|l| l.contains(" FEED REQ> ") && l.contains("device: H1,"))
        .await;

    let mut publisher = Proc::start(
        "pere-pub",
        &[
            &host, "T", "--token", &pub_token, "--count", "1", "--data", "hello",
        ],
    );
    assert_eq!(publisher.wait_exit().await, 0, "{:?}", publisher.errors());
    server
        .proc
        .wait_line(|l| l.contains(" FEEDBACK> ") && l.contains("H1"))
        .await;
    let mut subscriber = subscriber;
    assert_eq!(subscriber.wait_exit().await, 0, "{:?}", subscriber.errors());

    // Without a token, refused for good (exit status 2).
    let mut refused = Proc::start("pere-pub", &[&host, "T", "--count", "1", "--data", "hello"]);
    assert_eq!(refused.wait_exit().await, 2);

    // pere-bench sends it too: one push, unpaced, no subscribers.
    // Its channels are named PREFIX c N.
    let bench_token = token(SECRET, "P2", &["Bc*"], &[], false, 600);
    let url = server.url("");
    let mut bench = Proc::start(
        "pere-bench",
        &[
            "push",
            "-u",
            &url,
            "-n",
            "0",
            "-m",
            "1",
            "--token",
            &bench_token,
            "--prefix",
            "B",
            "--json",
            "-q",
        ],
    );
    assert_eq!(bench.wait_exit().await, 0, "{:?}", bench.errors());
    let report: Value = serde_json::from_str(&bench.lines().join("")).expect("a JSON report");
    assert_eq!(
        (
            report["published"]["ok"].as_u64(),
            report["published"]["errors"].as_u64()
        ),
        (Some(1), Some(0)),
        "{report}"
    );
    server
        .proc
        .wait_line(|l| l.contains(" PUSH EVT> channel: Bc0, device: P2,"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_use_only_for_listed_origins() {
    let closed = TestServer::start(&[]).await;
    let foreign = closed
        .http
        .get(closed.url("/health"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "no cross-origin use by default"
    );

    let server =
        TestServer::start(&["--allow-origin", "https://app.example,https://ops.example"]).await;
    let preflight = |origin: &'static str| {
        server
            .http
            .request(reqwest::Method::OPTIONS, server.url("/feedback/C"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let listed = preflight("https://ops.example").await.unwrap();
    assert_eq!(listed.status(), 204);
    assert_eq!(
        listed.headers()["access-control-allow-origin"],
        "https://ops.example"
    );
    assert!(listed.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(listed.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    let unlisted = preflight("https://evil.example").await.unwrap();
    assert!(unlisted
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    assert!(unlisted
        .headers()
        .get("access-control-allow-methods")
        .is_none());

    let any = TestServer::start(&["--allow-origin", "*"]).await;
    let answer = any
        .http
        .get(any.url("/health"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.headers()["access-control-allow-origin"],
        "*",
        "never the origin reflected"
    );
    assert!(answer
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
}
