//! The floor a fan-out server can reach on this machine: a server with no protocol state that
//! holds feed sockets and writes each pushed body to them, for benchmarks to compare PERE with
//! (`bench/floor.sh`). It shares no code with PERE.
//!
//! It answers the URL shape `pere-bench` drives: `GET /feed/:channel` (an SSE stream, ended by
//! closing the connection), `POST /push/:channel` (the body, one line, becomes `id: N` and
//! `data: body` on every feed of the channel; answered `200 {"id":N}`) and
//! `POST /feedback/:channel` (answered `204`, as Nchan's static location is). A push is written
//! to each feed from the publishing task itself, a `write` per feed when the socket takes it at
//! once; only what a socket did not take waits in the feed's queue for its own task. That is the
//! least work a paced delivery can cost: one system call per feed and nothing else.
//!
//! Usage: `sse-floor [ADDRESS]` (default `127.0.0.1:0`); prints `listening on http://ADDRESS`.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A feed: its socket, and what it has not taken yet.
struct Feed {
    stream: TcpStream,
    pending: Mutex<Pending>,
    more: Notify,
}

/// Bytes a feed's socket did not take at once, and whether its task is writing them: until it
/// is done, publishers queue behind it so frames stay in order.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    writing: bool,
}

#[derive(Default)]
struct Channels {
    feeds: Mutex<HashMap<String, Vec<Arc<Feed>>>>,
    next_id: AtomicU64,
}

const FEED_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";

#[tokio::main]
async fn main() -> io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = TcpListener::bind(&address).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let channels = Arc::new(Channels::default());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let channels = channels.clone();
        tokio::spawn(async move {
            let _ = serve(stream, &channels).await;
        });
    }
}

/// What the floor reads of a request head.
struct Request {
    method: String,
    path: String,
    body_length: usize,
}

/// Serves requests on a connection until it closes or becomes a feed.
async fn serve(mut stream: TcpStream, channels: &Arc<Channels>) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let (request, head_length) = loop {
            if let Some(parsed) = parse(&buf)? {
                break parsed;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        while buf.len() < head_length + request.body_length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = buf[head_length..head_length + request.body_length].to_vec();
        buf.drain(..head_length + request.body_length);
        let channel = |prefix: &str| request.path.strip_prefix(prefix).map(str::to_owned);
        match (
            request.method.as_str(),
            channel("/feed/"),
            channel("/push/"),
        ) {
            ("GET", Some(name), _) => return feed(stream, name, channels).await,
            ("POST", _, Some(name)) => {
                let id = publish(channels, &name, &body);
                let answer = format!("{{\"id\":{id}}}");
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    answer.len()
                );
                stream
                    .write_all(&[head.as_bytes(), answer.as_bytes()].concat())
                    .await?;
            }
            ("POST", _, _) if request.path.starts_with("/feedback/") => {
                stream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await?;
            }
            _ => {
                stream
                    .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    .await?;
            }
        }
    }
}

/// Parses a request head from `buf`: `None` while it is not whole.
fn parse(buf: &[u8]) -> io::Result<Option<(Request, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    match parsed.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(head_length)) => {
            let body_length = parsed
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| {
                    std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                })
                .map(|length| length.ok_or_else(|| invalid("bad length")))
                .transpose()?
                .unwrap_or(0);
            let request = Request {
                method: parsed.method.unwrap_or_default().to_owned(),
                path: parsed.path.unwrap_or_default().to_owned(),
                body_length,
            };
            Ok(Some((request, head_length)))
        }
        Err(_) => Err(invalid("bad request")),
    }
}

/// Writes `body` as one frame to every feed of `channel`, from this task.
fn publish(channels: &Channels, channel: &str, body: &[u8]) -> u64 {
    let id = channels.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    let frame = [format!("id: {id}\ndata: ").as_bytes(), body, b"\n\n"].concat();
    let feeds = channels.feeds.lock().unwrap();
    for feed in feeds.get(channel).into_iter().flatten() {
        let mut pending = feed.pending.lock().unwrap();
        let taken = if pending.bytes.is_empty() && !pending.writing {
            feed.stream.try_write(&frame).unwrap_or(0)
        } else {
            0
        };
        if taken < frame.len() {
            pending.bytes.extend_from_slice(&frame[taken..]);
            pending.writing = true;
            feed.more.notify_one();
        }
    }
    id
}

/// Holds a feed until its client goes: writes what the publishers left in its queue.
async fn feed(mut stream: TcpStream, name: String, channels: &Arc<Channels>) -> io::Result<()> {
    stream.write_all(FEED_HEAD).await?;
    let feed = Arc::new(Feed {
        stream,
        pending: Mutex::new(Pending::default()),
        more: Notify::new(),
    });
    channels
        .feeds
        .lock()
        .unwrap()
        .entry(name.clone())
        .or_default()
        .push(feed.clone());
    let ended = async {
        loop {
            tokio::select! {
                () = feed.more.notified() => {}
                // A feed's client sends nothing more: readable means it closed.
                readable = feed.stream.readable() => {
                    readable?;
                    let mut probe = [0u8; 64];
                    match feed.stream.try_read(&mut probe) {
                        Ok(_) => return Ok::<_, io::Error>(()),
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(err) => return Err(err),
                    }
                }
            }
            loop {
                let rest = {
                    let mut pending = feed.pending.lock().unwrap();
                    if pending.bytes.is_empty() {
                        pending.writing = false;
                        break;
                    }
                    std::mem::take(&mut pending.bytes)
                };
                let mut written = 0;
                while written < rest.len() {
                    feed.stream.writable().await?;
                    match feed.stream.try_write(&rest[written..]) {
                        Ok(n) => written += n,
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                        Err(err) => return Err(err),
                    }
                }
            }
        }
    }
    .await;
    let mut feeds = channels.feeds.lock().unwrap();
    if let Some(list) = feeds.get_mut(&name) {
        list.retain(|f| !Arc::ptr_eq(f, &feed));
    }
    ended
}
