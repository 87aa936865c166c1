//! Test support: a scripted HTTP/1.1 server standing in for `pere-server`, and the binary under
//! test run as a child process whose stdout is read line by line.
//!
//! The fake server hands each request to the test, which inspects it and chooses the answer: a
//! complete response, or an event stream it writes frame by frame and ends by dropping. So a test
//! drives every step itself and waits only on things it can observe, never on the clock.
//! (Kept apart from the real server on purpose: the tools must not depend on the server crate, and
//! a script can produce what a correct server never does: duplicates, drops, failures.)

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A request as the fake server read it.
#[derive(Debug)]
pub struct Request {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The path with its query.
    pub path: String,
    /// The headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, as text.
    pub body: String,
}

impl Request {
    /// The value of header `name` (case-insensitive), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
enum Reply {
    Full {
        status: u16,
        content_type: &'static str,
        body: String,
    },
    Stream(mpsc::UnboundedReceiver<String>),
}

/// A request waiting for the test's answer.
#[derive(Debug)]
pub struct Exchange {
    /// The request to answer.
    pub request: Request,
    reply: oneshot::Sender<Reply>,
}

impl Exchange {
    /// Answers with a JSON body.
    pub fn json(self, status: u16, body: &str) {
        let _ = self.reply.send(Reply::Full {
            status,
            content_type: "application/json",
            body: body.to_owned(),
        });
    }

    /// Answers `200 text/event-stream`; the stream stays open until the writer is dropped.
    pub fn stream(self) -> StreamWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.reply.send(Reply::Stream(rx));
        StreamWriter(tx)
    }
}

/// Writes an open event stream; dropping it ends the stream and closes the connection.
#[derive(Debug)]
pub struct StreamWriter(mpsc::UnboundedSender<String>);

impl StreamWriter {
    /// Writes raw event-stream text, e.g. `"id: 1\ndata: x\n\n"`.
    pub fn send(&self, text: &str) {
        let _ = self.0.send(text.to_owned());
    }
}

/// The fake server.
#[derive(Debug)]
pub struct FakeServer {
    /// Where it listens.
    pub addr: SocketAddr,
    exchanges: mpsc::UnboundedReceiver<Exchange>,
}

impl FakeServer {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, exchanges) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, tx.clone()));
            }
        });
        FakeServer { addr, exchanges }
    }

    /// `host:port`, as the tools take it.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// The next request; fails the test after [`WAIT`].
    pub async fn next(&mut self) -> Exchange {
        timeout(WAIT, self.exchanges.recv())
            .await
            .expect("timed out waiting for a request")
            .expect("server gone")
    }

    /// The next request, which must be `method path`.
    pub async fn expect(&mut self, method: &str, path: &str) -> Exchange {
        let exchange = self.next().await;
        assert_eq!(
            (
                exchange.request.method.as_str(),
                exchange.request.path.as_str()
            ),
            (method, path),
            "unexpected request {:?}",
            exchange.request
        );
        exchange
    }
}

/// One connection, one request: every answer says `Connection: close`.
async fn serve(mut socket: TcpStream, exchanges: mpsc::UnboundedSender<Exchange>) {
    let Some(request) = read_request(&mut socket).await else {
        return;
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    if exchanges
        .send(Exchange {
            request,
            reply: reply_tx,
        })
        .is_err()
    {
        return;
    }
    let Ok(reply) = reply_rx.await else { return };
    match reply {
        Reply::Full {
            status,
            content_type,
            body,
        } => {
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(body.as_bytes()).await;
        }
        Reply::Stream(mut frames) => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            while let Some(frame) = frames.recv().await {
                if socket.write_all(frame.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = socket.shutdown().await;
}

async fn read_request(socket: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Request {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The binary under test, running; killed on drop.
#[derive(Debug)]
pub struct Tool {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Tool {
    /// Starts `exe` with `args`; `stdin` is written and closed when given, else stdin is empty.
    pub fn start(exe: &str, args: &[&str], stdin: Option<&str>) -> Tool {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the binary");
        let mut input = child.stdin.take().expect("stdin");
        let text = stdin.unwrap_or_default().to_owned();
        tokio::spawn(async move {
            let _ = input.write_all(text.as_bytes()).await;
        });
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Tool { child, stdout }
    }

    /// The next stdout line; fails the test after [`WAIT`] or at end of output.
    pub async fn line(&mut self) -> String {
        timeout(WAIT, self.stdout.next_line())
            .await
            .expect("timed out waiting for a line")
            .expect("read stdout")
            .expect("stdout ended")
    }

    /// Waits for the exit; returns the exit code, the rest of stdout and all of stderr.
    pub async fn finish(mut self) -> (i32, Vec<String>, String) {
        let status = timeout(WAIT, self.child.wait())
            .await
            .expect("timed out waiting for the exit")
            .expect("wait");
        let mut rest = Vec::new();
        while let Ok(Some(line)) = self.stdout.next_line().await {
            rest.push(line);
        }
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut stderr).await;
        }
        (status.code().unwrap_or(-1), rest, stderr)
    }

    /// Ends the process (it is ours) and returns its stderr.
    pub async fn kill(mut self) -> String {
        let _ = self.child.kill().await;
        self.finish().await.2
    }
}
