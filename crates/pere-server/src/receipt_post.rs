//! Receipts posted on plain HTTP/1.1 connections (`POST /feedback/...` with a small body), read
//! whole and answered without a hyper connection.
//!
//! Why: a receipt is the request devices send most (one per event in the seed's form), and
//! through hyper its fixed cost was most of its price: measured at ~65,000 instructions a
//! receipt, against ~5,000 for the delivery it acknowledges, of which hyper's connection (built
//! anew after each pause, see [`crate::h1_conn`]), its head parsing and its answer writing were
//! more than half, the ledger and the store a small part. Here the head is parsed once, with
//! `httparse` (hyper's own parser), the body is read along with it, and the answer goes out in
//! one write; between receipts the connection holds nothing but its socket.
//!
//! The request passes the same door and handler as through hyper (`http_conn::answer`). Only a
//! request this module is sure of is taken: `POST`, HTTP/1.1, a `Content-Length` body of at
//! most [`MAX_BODY`] (and the server's own limit), no `Transfer-Encoding`, `Expect` or
//! `Upgrade`, a head of at most [`MAX_HEAD`]. Anything else, and a body cut short, goes to hyper
//! with every byte already read put back in front, as the feed loop hands on what it does not
//! serve. A body slower than the server's body time-out is answered 408 by its handler, as
//! hyper's requests are, on a connection that then closes.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Version};
use pere_core::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http_conn;
use crate::limits::Arrival;
use crate::request::{self, RequestBody};
use crate::response::raw_answer;
use crate::state::AppState;

/// How every request taken here begins.
pub const PREFIX: &[u8] = b"POST /feedback/";
/// The largest request head read here; larger ones go to hyper.
pub const MAX_HEAD: usize = 8192;
/// The largest body read here; a receipt is tens of bytes, a batch of them more, and larger
/// bodies go to hyper, which refuses those over the server's limit.
pub const MAX_BODY: usize = 16 * 1024;
/// Request headers parsed at most.
const MAX_HEADERS: usize = 64;

/// Whether bytes read from a connection may be the start of a receipt taken here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Too few bytes to tell, all of them the start of [`PREFIX`].
    Unknown,
    /// It opens with [`PREFIX`].
    Receipt,
    /// Anything else.
    Other,
}

impl Opening {
    /// What `first` (the bytes read so far of a request) says.
    pub fn of(first: &[u8]) -> Opening {
        let compared = first.len().min(PREFIX.len());
        if first[..compared] != PREFIX[..compared] {
            Opening::Other
        } else if compared == PREFIX.len() {
            Opening::Receipt
        } else {
            Opening::Unknown
        }
    }
}

/// What was read of a request that opens with [`PREFIX`].
#[derive(Debug)]
// Made and taken apart at once, never kept: boxing the request would be an allocation more.
#[allow(clippy::large_enum_variant)]
pub enum Read {
    /// A whole receipt request to answer here, and the bytes after it (the start of the next
    /// request, when the client sends them back to back).
    Receipt(Taken, BytesMut),
    /// Anything else, for hyper, with every byte read (none read beyond what `Opening` needed
    /// when the start already rules it out).
    Other(BytesMut),
}

/// A request taken here, read whole.
#[derive(Debug)]
pub struct Taken {
    request: Request<Bytes>,
    /// The client asked for the connection to end after the answer (`Connection: close`).
    close: bool,
    /// The body did not arrive within the body timeout: answered 408, as hyper's requests are,
    /// and the connection closes (what came of the body is not read on).
    late: bool,
}

/// Reads the rest of a request whose first bytes are `start` (which [`Opening::of`] does not
/// rule out), up to the end of its body: its head before `head_overdue` completes, its body
/// within `body_timeout` after that (a later one is taken as late, see [`Taken`]). `body_limit`
/// is the server's limit for bodies; a larger one goes to hyper.
///
/// # Errors
/// The socket's error, or a time-out when the head is not whole before `head_overdue`.
pub async fn read(
    start: BytesMut,
    stream: &mut TcpStream,
    head_overdue: impl std::future::Future<Output = ()>,
    body_limit: usize,
    body_timeout: Duration,
) -> io::Result<Read> {
    let mut buf = start;
    let head = async {
        loop {
            if Opening::of(&buf) == Opening::Other {
                return Ok::<_, io::Error>(None);
            }
            match parse(&buf, body_limit.min(MAX_BODY)) {
                Parsed::Partial => {}
                Parsed::Taken { head_len, head } => return Ok(Some((head_len, head))),
                Parsed::Other => return Ok(None),
            }
            buf.reserve(1024);
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(None);
            }
        }
    };
    // Read first: a head already here registers no timer.
    let head = tokio::select! {
        biased;
        head = head => head?,
        () = head_overdue => return Err(io::ErrorKind::TimedOut.into()),
    };
    let Some((head_len, receipt)) = head else {
        return Ok(Read::Other(buf));
    };
    // The request is made from the head at once, its values sharing the head's bytes; what
    // follows in `buf` is the body's start.
    let head = buf.split_to(head_len).freeze();
    let Some(request) = receipt.layout.request(&head) else {
        // A path `http` refuses (see `Layout::request`): hyper answers it.
        return Ok(Read::Other(rejoined(&head, &buf)));
    };
    let body_len = receipt.body_len;
    let body = async {
        while buf.len() < body_len {
            buf.reserve(body_len - buf.len());
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok::<_, io::Error>(false);
            }
        }
        Ok(true)
    };
    let late = match tokio::time::timeout(body_timeout, body).await {
        Ok(Ok(true)) => false,
        Ok(Err(err)) => return Err(err),
        // Hyper answers a body cut short as it does for any request.
        Ok(Ok(false)) => return Ok(Read::Other(rejoined(&head, &buf))),
        // Late: answered here, as hyper's requests are, rather than given to hyper to wait a
        // second body timeout.
        Err(_) => true,
    };
    let (body, rest) = if late {
        (Bytes::new(), BytesMut::new())
    } else {
        let rest = buf.split_off(body_len);
        (buf.freeze(), rest)
    };
    let taken = Taken {
        request: request.map(|()| body),
        close: receipt.close,
        late,
    };
    Ok(Read::Receipt(taken, rest))
}

/// A request's head and the bytes read after it, together again: what is handed to hyper.
fn rejoined(head: &Bytes, after: &BytesMut) -> BytesMut {
    let mut all = BytesMut::with_capacity(head.len() + after.len());
    all.extend_from_slice(head);
    all.extend_from_slice(after);
    all
}

/// What the head of a request taken here says, before its body is read.
#[derive(Debug)]
struct ReceiptHead {
    /// Where its parts lie in the head.
    layout: Layout,
    /// The body's length, as its `Content-Length` says (0 without one).
    body_len: usize,
    /// The client asked for the connection to end after the answer (`Connection: close`).
    close: bool,
}

/// Where a receipt's path and headers lie in its head, noted while parsing: the request is made
/// once the head is whole and frozen, its path and header values sharing the head's bytes
/// rather than copied (a copy and an allocation each, on the path devices use most).
#[derive(Debug)]
struct Layout {
    path: (u16, u16),
    /// Name and value of each header, as (start, end) in the head.
    headers: [((u16, u16), (u16, u16)); MAX_HEADERS],
    count: usize,
}

impl Layout {
    /// The request whose head is `head`. `None` when `http` refuses what
    /// `httparse` accepted: a path with bytes a URI may not hold (`<`, say), left to hyper to
    /// refuse. Names and values it accepts alike (tokens; tab, space and bytes from `0x21` but
    /// `0x7f`).
    fn request(&self, head: &Bytes) -> Option<Request<()>> {
        let part = |(start, end): (u16, u16)| head.slice(usize::from(start)..usize::from(end));
        let mut headers = HeaderMap::with_capacity(self.count);
        for &(name, value) in &self.headers[..self.count] {
            let name = &head[usize::from(name.0)..usize::from(name.1)];
            let name = request::known_header(name)
                .map_or_else(|| HeaderName::from_bytes(name).ok(), Some)?;
            headers.append(name, HeaderValue::from_maybe_shared(part(value)).ok()?);
        }
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = hyper::Uri::from_maybe_shared(part(self.path)).ok()?;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        Some(request)
    }
}

/// What the bytes read so far of a request that opens with [`PREFIX`] hold.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// The head is not whole yet.
    Partial,
    /// A request taken here; its head is `head_len` bytes long, its body not read yet.
    Taken { head_len: usize, head: ReceiptHead },
    /// Anything else, for hyper.
    Other,
}

/// Parses a head. Not async, and so apart from the reads: the parser's room for headers would
/// otherwise be kept in the future across each read.
fn parse(buf: &[u8], body_limit: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => match as_receipt(&parsed, buf, body_limit) {
            Some(head) => Parsed::Taken { head_len, head },
            None => Parsed::Other,
        },
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Parsed::Partial,
        _ => Parsed::Other,
    }
}

/// Parses `head` (a whole request head) as this module does: the request taken here, or `None`
/// for one left to hyper. For fuzzing and tests.
pub fn parse_receipt_head(head: &[u8]) -> Option<Request<Bytes>> {
    match parse(head, MAX_BODY) {
        Parsed::Taken {
            head: receipt,
            head_len,
        } => receipt
            .layout
            .request(&Bytes::copy_from_slice(&head[..head_len]))
            .map(|request| request.map(|()| Bytes::new())),
        Parsed::Partial | Parsed::Other => None,
    }
}

/// What the head of a receipt request this module serves says (where its parts lie, its body's
/// length); `None` for anything else.
fn as_receipt(
    parsed: &httparse::Request<'_, '_>,
    head: &[u8],
    body_limit: usize,
) -> Option<ReceiptHead> {
    if parsed.method != Some("POST") || parsed.version != Some(1) {
        return None;
    }
    let path = parsed.path?;
    if !path.as_bytes().starts_with(&PREFIX[b"POST ".len()..]) {
        return None;
    }
    // Where `within` (a slice of the head) lies in it; a head is at most `MAX_HEAD` long.
    let span = |within: &[u8]| {
        let start = (within.as_ptr() as usize).checked_sub(head.as_ptr() as usize)?;
        let end = start + within.len();
        (end <= head.len()).then_some((u16::try_from(start).ok()?, u16::try_from(end).ok()?))
    };
    let mut layout = Layout {
        path: span(path.as_bytes())?,
        headers: [((0, 0), (0, 0)); MAX_HEADERS],
        count: parsed.headers.len(),
    };
    let mut length = None;
    let mut close = false;
    for (h, slot) in parsed.headers.iter().zip(layout.headers.iter_mut()) {
        let name = h.name.as_bytes();
        *slot = (span(name)?, span(h.value)?);
        if name.eq_ignore_ascii_case(b"content-length") {
            // One length, in digits only: anything else is hyper's to refuse.
            let value = std::str::from_utf8(h.value).ok()?;
            if length.is_some() || value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            length = Some(value.parse::<usize>().ok().filter(|n| *n <= body_limit)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return None;
        } else if name.eq_ignore_ascii_case(b"connection") {
            let tokens = std::str::from_utf8(h.value).ok()?;
            for token in tokens.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("upgrade") {
                    return None;
                }
            }
        }
    }
    Some(ReceiptHead {
        layout,
        body_len: length.unwrap_or(0),
        close,
    })
}

/// Answers a request read whole by [`read`], through the door and its handler as hyper would,
/// and writes the answer in one write. `Ok(true)` when the connection stays open for the next
/// request; `Ok(false)` when the answer said `Connection: close` (the client asked, or the
/// server is shutting down).
///
/// # Errors
/// The socket's error while writing the answer.
pub async fn answer<S: Store>(
    state: &Arc<AppState<S>>,
    arrival: &Arrival,
    stream: &mut TcpStream,
    taken: Taken,
) -> io::Result<bool> {
    let (parts, body) = taken.request.into_parts();
    let body = if taken.late {
        RequestBody::late()
    } else {
        RequestBody::whole(body)
    };
    let request = Request::from_parts(parts, body);
    let (mut head, mut body) = http_conn::answer(state, arrival, request, None)
        .await
        .into_parts();
    // A receipt's answer is whole when made (no stream answers a `POST`): one frame, taken as
    // it is; gathering frames is for a body of several.
    let first = match body.frame().await {
        Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
        Some(Err(never)) => match never {},
        None => Bytes::new(),
    };
    let body = if body.is_end_stream() {
        first
    } else {
        let Ok(rest) = body.collect().await;
        [first, rest.to_bytes()].concat().into()
    };
    // The answer itself may end the connection (a refused body, see `response::error`).
    let keep = !taken.close
        && !taken.late
        && !state.shutdown.is_cancelled()
        && !head.headers.contains_key(header::CONNECTION);
    if !keep {
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    stream
        .write_all(&raw_answer(head.status, &head.headers, &body))
        .await?;
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_decide_without_parsing() {
        assert_eq!(Opening::of(b""), Opening::Unknown);
        assert_eq!(Opening::of(b"POST /fe"), Opening::Unknown);
        assert_eq!(Opening::of(b"POST /feedback/"), Opening::Receipt);
        assert_eq!(Opening::of(b"POST /feedback/C1 HTTP/1.1"), Opening::Receipt);
        assert_eq!(Opening::of(b"POST /feed/C1"), Opening::Other);
        assert_eq!(Opening::of(b"POST /push/C1"), Opening::Other);
        assert_eq!(Opening::of(b"GET /feedback/C1"), Opening::Other);
        assert_eq!(Opening::of(b"post /feedback/C1"), Opening::Other);
    }

    #[test]
    fn only_small_plain_receipts_are_taken() {
        let taken = |head: &str| parse_receipt_head(head.as_bytes());
        let receipt = taken(
            "POST /feedback/C1 HTTP/1.1\r\nHost: x\r\ndevice: D1\r\nContent-Length: 9\r\n\r\n",
        )
        .unwrap();
        assert_eq!(receipt.uri().path(), "/feedback/C1");
        assert_eq!(receipt.headers()["device"], "D1");
        let head = b"POST /feedback/C1 HTTP/1.1\r\nContent-Length: 9\r\n\r\n";
        match parse(head, MAX_BODY) {
            Parsed::Taken {
                head: receipt,
                head_len,
            } => {
                assert_eq!((receipt.body_len, head_len), (9, head.len()))
            }
            _ => panic!("not taken"),
        }
        assert!(taken("POST /feedback/C1 HTTP/1.1\r\nHost: x\r\n\r\n").is_some());
        let refused = [
            "POST /feedback/C1 HTTP/1.0\r\nContent-Length: 2\r\n\r\n",
            "POST /push/C1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "POST /feedback/C1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /feedback/C1 HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
            "POST /feedback/C1 HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            "POST /feedback/C1 HTTP/1.1\r\nContent-Length: +2\r\n\r\n",
            "POST /feedback/C1 HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "POST /feedback/C1 HTTP/1.1\r\nContent-Length: 16385\r\n\r\n",
            "POST /feedback/C1 HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        ];
        for head in refused {
            assert!(taken(head).is_none(), "{head}");
        }
        let closing = "POST /feedback/C1 HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n";
        match parse(closing.as_bytes(), MAX_BODY) {
            Parsed::Taken { head, .. } => assert!(head.close),
            _ => panic!("not taken"),
        }
        assert!(
            matches!(
                parse(
                    b"POST /feedback/C1 HTTP/1.1\r\nContent-Length: 300\r\n\r\n",
                    200
                ),
                Parsed::Other
            ),
            "over the server's own limit: hyper refuses it"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_head_is_taken_or_left_to_hyper(head in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024)) {
            let _ = parse(&head, MAX_BODY);
        }

        #[test]
        fn any_receipt_line_and_headers_parse_or_are_left(
            path in "/feedback/[ -~]{0,60}",
            value in "[ -~]{0,80}",
        ) {
            let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\ndevice: {value}\r\nContent-Length: {value}\r\nConnection: {value}\r\n\r\n");
            let _ = parse(head.as_bytes(), MAX_BODY);
            // What is taken is made into a request, whatever its values.
            let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nDevice: {value}\r\nX-Other: {value}\r\n\r\n");
            if let Parsed::Taken { head: receipt, head_len } = parse(head.as_bytes(), MAX_BODY) {
                let request = receipt.layout.request(&Bytes::copy_from_slice(&head.as_bytes()[..head_len]));
                // A path `http` refuses (`httparse` is laxer) leaves the request to hyper.
                proptest::prop_assert_eq!(request.is_some(), path.parse::<hyper::Uri>().is_ok(), "{:?}", head);
                let Some(request) = request else { return Ok(()) };
                proptest::prop_assert_eq!(request.headers()["device"].as_bytes(), value.trim().as_bytes());
                proptest::prop_assert_eq!(request.headers()["x-other"].as_bytes(), value.trim().as_bytes());
                proptest::prop_assert_eq!(request.uri().path().as_bytes(), path.split(['?', '#']).next().unwrap().as_bytes());
            }
        }
    }
}
