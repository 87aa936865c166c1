//! What the request bodies of an HTTP/1.1 connection served by hyper declare, read from the
//! connection's bytes as hyper reads them: the sizes of a chunked body's chunks.
//!
//! Why: a chunked body declares its length chunk by chunk, and hyper says nothing of a chunk's
//! size: it hands over the chunk's bytes as they come. A client that announces a chunk of
//! `ffffffffffffffff` bytes and sends none would hold its request until the body timeout, where a
//! `Content-Length` over the limit is refused at once. [`Watched`] follows the framing of the
//! requests on the connection (each head, its body's length or chunks, the trailers) with
//! `httparse`, the parser hyper itself uses, and notes in [`Declared`] what each request's chunks
//! add up to; [`crate::request::body`] refuses a body whose chunks declare more than it takes as
//! soon as they do. Requests are numbered in order on both sides (hyper serves an HTTP/1.1
//! connection's requests one after the other), so a declaration is never taken for another
//! request's. Whatever this cannot follow (a chunk's size line that is not one) stops the watch
//! for the connection, which then only loses the early refusal.
//!
//! A head that hyper would refuse with a bare status and no word of why (one `httparse` cannot
//! parse, one with more than [`MAX_HEADERS`] headers, one whose first 16 KiB hold no end, one
//! whose framing headers hyper does not read: see [`framing_fault`]) is kept
//! from hyper instead, with what came after it ([`Watched::withholding`]): hyper answers what
//! came before, and the connection's owner answers the refused head in JSON.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Hyper's read buffer for a connection (its `max_buf_size`), and so the room it gives a head:
/// one that has not ended within it, hyper refuses (431). Here, below the modules that set hyper
/// up, so that the watch and hyper share it.
pub const MAX_HEAD: usize = 16 * 1024;
/// The longest chunk-size or trailer line followed (hyper allows 16 KiB of chunk extensions).
const MAX_LINE: usize = 16 * 1024 + 1024;
/// Request headers parsed at most: hyper's own limit.
pub const MAX_HEADERS: usize = 100;

/// What each request of one connection declared so far, shared by the connection's reader
/// ([`Watched`]) and its requests' body readers.
#[derive(Debug, Clone, Default)]
pub struct Declared(Arc<DeclaredState>);

#[derive(Debug, Default)]
struct DeclaredState {
    /// The number of the request whose chunks were last declared, and their total.
    latest: Mutex<(u64, u64)>,
    /// Wakes body readers when a declaration grows.
    grew: Notify,
    /// Requests handed to the service so far (numbered from 1, as the reader numbers heads).
    served: AtomicU64,
    /// Every declaration, for the tests.
    #[cfg(test)]
    log: Mutex<Vec<(u64, u64)>>,
}

impl Declared {
    /// The number of the request hyper hands over now: one more than the last.
    pub fn next_request(&self) -> u64 {
        self.0.served.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// What the chunks of request `request` declared so far, in all.
    pub fn of(&self, request: u64) -> u64 {
        let (latest, total) = *self.0.latest.lock().unwrap_or_else(|e| e.into_inner());
        if latest == request {
            total
        } else {
            0
        }
    }

    /// Completes once the chunks of request `request` declare more than `limit` bytes, with
    /// their total; never if they do not.
    pub async fn beyond(&self, request: u64, limit: u64) -> u64 {
        loop {
            let grew = self.0.grew.notified();
            tokio::pin!(grew);
            // Listening before looking, so a declaration in between is not missed.
            grew.as_mut().enable();
            let total = self.of(request);
            if total > limit {
                return total;
            }
            grew.await;
        }
    }

    fn declare(&self, request: u64, chunk: u64) {
        #[cfg(test)]
        self.0.log.lock().unwrap().push((request, chunk));
        {
            let mut latest = self.0.latest.lock().unwrap_or_else(|e| e.into_inner());
            if latest.0 == request {
                latest.1 = latest.1.saturating_add(chunk);
            } else {
                *latest = (request, chunk);
            }
        }
        self.0.grew.notify_waiters();
    }
}

/// Where in a request the bytes read so far end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a request head (or before one).
    Head,
    /// In a body of known length: this many bytes left.
    Fixed(u64),
    /// In a chunk-size line.
    Size,
    /// In a chunk's data: this many bytes left.
    Data(u64),
    /// In the line end after a chunk's data.
    DataEnd,
    /// In the trailers after the last chunk.
    Trailers,
    /// Lost: nothing more is followed on this connection.
    Off,
}

/// Follows the framing of a connection's requests; see the module's docs.
#[derive(Debug)]
struct Framing {
    state: State,
    /// The bytes of a head or line not whole yet.
    pending: Vec<u8>,
    /// How far `pending` was searched for the end of a head.
    searched: usize,
    /// The number of the request being read (its head was the `request`-th).
    request: u64,
    declared: Declared,
    /// The head being followed is one hyper would refuse (see the module's docs).
    refused: bool,
}

impl Framing {
    fn new(declared: Declared) -> Self {
        Framing {
            state: State::Head,
            pending: Vec::new(),
            searched: 0,
            request: 0,
            declared,
            refused: false,
        }
    }

    /// Follows `bytes`, the next ones read from the connection. When they hold (or go on) a
    /// head hyper would refuse, where in them that head begins (0 when it began in a read
    /// before): nothing from there on is followed.
    fn feed(&mut self, read: &[u8]) -> Option<usize> {
        let mut bytes = read;
        while !bytes.is_empty() {
            bytes = match self.state {
                State::Off => return None,
                State::Fixed(left) | State::Data(left) => {
                    let taken = left.min(bytes.len() as u64);
                    let left = left - taken;
                    self.state = match (self.state, left) {
                        (State::Fixed(_), 0) => State::Head,
                        (State::Fixed(_), _) => State::Fixed(left),
                        (_, 0) => State::DataEnd,
                        _ => State::Data(left),
                    };
                    &bytes[taken as usize..]
                }
                State::Head => {
                    let begins = if self.pending.is_empty() {
                        read.len() - bytes.len()
                    } else {
                        0
                    };
                    let after = self.head(bytes);
                    if self.refused {
                        return Some(begins);
                    }
                    after
                }
                State::Size | State::DataEnd | State::Trailers => {
                    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
                        self.keep(bytes, MAX_LINE);
                        return None;
                    };
                    self.keep(&bytes[..=end], MAX_LINE);
                    self.line();
                    &bytes[end + 1..]
                }
            };
        }
        None
    }

    /// Keeps `bytes` of a head or line not whole yet; past `max`, the watch stops.
    fn keep(&mut self, bytes: &[u8], max: usize) {
        if self.pending.len() + bytes.len() > max {
            self.off();
        } else {
            self.pending.extend_from_slice(bytes);
        }
    }

    fn off(&mut self) {
        self.state = State::Off;
        self.pending = Vec::new();
    }

    /// The head being followed is one hyper would refuse: nothing more is followed.
    fn refuse(&mut self) {
        self.refused = true;
        self.off();
    }

    /// A whole line in `pending`: a chunk's size, the end of its data, or a trailer.
    fn line(&mut self) {
        let line = std::mem::take(&mut self.pending);
        self.state = match self.state {
            State::Size => match httparse::parse_chunk_size(&line) {
                Ok(httparse::Status::Complete((_, 0))) => State::Trailers,
                Ok(httparse::Status::Complete((_, size))) => {
                    self.declared.declare(self.request, size);
                    State::Data(size)
                }
                _ => State::Off,
            },
            State::DataEnd if line == b"\r\n" => State::Size,
            State::Trailers if line == b"\r\n" => State::Head,
            State::Trailers => State::Trailers,
            _ => State::Off,
        };
        if self.state != State::Off {
            // The room is kept for the next line.
            self.pending = line;
            self.pending.clear();
        }
    }

    /// Follows bytes of a head; returns what follows it (or nothing, when it is not whole yet).
    fn head<'b>(&mut self, bytes: &'b [u8]) -> &'b [u8] {
        // Parsed as hyper parses it: in the read where it begins (so a fault or too many
        // headers there are seen as hyper sees them), then once its blank line is there, never
        // at every byte of a slow head.
        if self.pending.is_empty() {
            match self.parse(bytes) {
                Some(len) => return &bytes[len..],
                None if self.state == State::Off => return &[],
                // Not whole yet (or only empty lines before a request line).
                None => {}
            }
            self.keep_head(bytes);
            self.searched = self.pending.len();
            return &[];
        }
        let from = self.searched.saturating_sub(3);
        self.pending.extend_from_slice(bytes);
        self.searched = self.pending.len();
        if head_end(&self.pending, from).is_none() {
            if self.pending.len() >= MAX_HEAD {
                self.refuse();
            }
            return &[];
        }
        let pending = std::mem::take(&mut self.pending);
        match self.parse(&pending) {
            Some(len) => {
                let kept = pending.len() - len;
                let rest = &bytes[bytes.len() - kept.min(bytes.len())..];
                self.pending = pending;
                self.pending.clear();
                self.searched = 0;
                rest
            }
            None => {
                if self.state != State::Off {
                    self.pending = pending;
                }
                &[]
            }
        }
    }

    /// Keeps the start of a head not whole yet; one that fills hyper's room is refused.
    fn keep_head(&mut self, bytes: &[u8]) {
        if self.pending.len() + bytes.len() >= MAX_HEAD {
            self.refuse();
        } else {
            self.pending.extend_from_slice(bytes);
        }
    }

    /// Parses a whole head at the start of `bytes`: its length, and the state its body starts
    /// in; `None` when it is not whole yet or cannot be followed (then the watch stops).
    fn parse(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let len = match request.parse(bytes) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return None,
            Err(_) => {
                self.refuse();
                return None;
            }
        };
        match body_of(request.version == Some(1), request.headers) {
            Ok(state) => self.state = state,
            Err(_) => {
                self.refuse();
                return None;
            }
        }
        self.request += 1;
        Some(len)
    }
}

/// Where the body of a request with `headers` starts (an HTTP/1.1 request when `http_11`), by
/// the rules hyper's server reads a request's length with, in the same order:
/// `Transfer-Encoding` (only on HTTP/1.1) with `chunked` as its last coding wins over any
/// `Content-Length` (one that came before it must still be a number), else `Content-Length`s
/// that are numbers and agree, else none. `Err`, with why, for a head hyper refuses for its
/// framing headers (with a bare 400).
fn body_of(http_11: bool, headers: &[httparse::Header<'_>]) -> Result<State, &'static str> {
    // Hyper reads these values only when they are visible ASCII (`HeaderValue::to_str`).
    fn text(value: &[u8]) -> Option<&str> {
        value
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
            .then(|| std::str::from_utf8(value).ok())
            .flatten()
    }
    let mut encoded = false;
    let mut chunked = false;
    let mut length: Option<u64> = None;
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            if !http_11 {
                return Err("a Transfer-Encoding header on an HTTP/1.0 request");
            }
            encoded = true;
            length = None;
            chunked = text(header.value)
                .and_then(|value| value.rsplit(',').next())
                .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        } else if header.name.eq_ignore_ascii_case("content-length") && !encoded {
            let digits = !header.value.is_empty() && header.value.iter().all(u8::is_ascii_digit);
            let n = digits
                .then(|| std::str::from_utf8(header.value).ok()?.parse::<u64>().ok())
                .flatten()
                .filter(|&n| n < u64::MAX - 1)
                .ok_or("a Content-Length that is not a length")?;
            match length {
                Some(earlier) if earlier != n => {
                    return Err("Content-Length headers that disagree")
                }
                _ => length = Some(n),
            }
        }
    }
    if encoded && !chunked {
        return Err("a Transfer-Encoding whose last coding is not chunked");
    }
    Ok(match (encoded, length) {
        (true, _) => State::Size,
        (false, Some(0) | None) => State::Head,
        (false, Some(n)) => State::Fixed(n),
    })
}

/// Why hyper refuses a whole head for its framing headers (by the rules `body_of` reads them
/// with), or `None`.
pub fn framing_fault(request: &httparse::Request<'_, '_>) -> Option<&'static str> {
    body_of(request.version == Some(1), request.headers).err()
}

/// Whether `start`, the start of a head, fills hyper's room for a head without ending.
pub fn head_too_large(start: &[u8]) -> bool {
    start.len() >= MAX_HEAD && head_end(&start[..MAX_HEAD], 0).is_none()
}

/// Where the blank line that ends a head is in `bytes`, searching from `from`.
fn head_end(bytes: &[u8], from: usize) -> Option<usize> {
    let tail = bytes.get(from..)?;
    tail.windows(2)
        .position(|w| w == b"\n\n")
        .or_else(|| tail.windows(3).position(|w| w == b"\n\r\n"))
        .map(|at| from + at)
}

/// A connection whose bytes are followed as they are read (see the module's docs).
#[derive(Debug)]
pub struct Watched<I> {
    inner: I,
    framing: Framing,
    /// Whether a head hyper would refuse is kept from it (see [`Watched::keeping_refused`]).
    keeps_refused: bool,
    /// What was read from the start of a head hyper would refuse: kept from hyper.
    withheld: Option<Vec<u8>>,
}

impl<I> Watched<I> {
    /// Follows what `inner` reads, noting declarations in `declared`; a head hyper would
    /// refuse only ends the watch, and hyper answers it.
    pub fn new(inner: I, declared: Declared) -> Self {
        Watched {
            inner,
            framing: Framing::new(declared),
            keeps_refused: false,
            withheld: None,
        }
    }

    /// As [`Watched::new`], and a head hyper would refuse is kept from it, for the owner of an
    /// HTTP/1.1 connection that answers it (see [`Watched::withholding`]).
    pub fn keeping_refused(inner: I, declared: Declared) -> Self {
        Watched {
            keeps_refused: true,
            ..Watched::new(inner, declared)
        }
    }

    /// The connection, no longer followed, and the bytes kept from hyper (see
    /// [`Watched::withholding`]), which come before anything `inner` still holds.
    pub fn into_parts(self) -> (I, Vec<u8>) {
        (self.inner, self.withheld.unwrap_or_default())
    }

    /// Whether a head hyper would refuse was read: from its start on, nothing more is handed
    /// to hyper (its reads wait), and whoever owns the connection answers it once hyper has
    /// answered what came before.
    pub fn withholding(&self) -> bool {
        self.withheld.is_some()
    }

    /// Whether the bytes read so far end exactly where a request ended (and were followed
    /// throughout): what comes next would be a new request's head.
    pub fn between_requests(&self) -> bool {
        self.framing.state == State::Head && self.framing.pending.is_empty()
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.withheld.is_some() {
            // Nothing is registered to wake hyper: its connection is ended by its owner once
            // every answer is out (see `withholding`).
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let this = &mut *self;
            let read = &buf.filled()[before..];
            let refused = this.framing.feed(read);
            if let Some(from) = refused.filter(|_| this.keeps_refused) {
                this.withheld = Some(read[from..].to_vec());
                buf.set_filled(before + from);
                if from == 0 {
                    // Not a read of nothing, which hyper would take for the end.
                    return Poll::Pending;
                }
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` one read at a time; returns what each request declared, by number (up to
    /// the last that declared anything), and the state at the end.
    fn declared(pieces: &[&[u8]]) -> (Vec<u64>, State) {
        let declared = Declared::default();
        let mut framing = Framing::new(declared.clone());
        for piece in pieces {
            framing.feed(piece);
        }
        let mut seen: Vec<u64> = Vec::new();
        for &(request, chunk) in declared.0.log.lock().unwrap().iter() {
            let at = request as usize - 1;
            if seen.len() <= at {
                seen.resize(at + 1, 0);
            }
            seen[at] = seen[at].saturating_add(chunk);
        }
        (seen, framing.state)
    }

    const CHUNKED: &[u8] =
        b"POST /push/C HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

    #[test]
    fn chunk_sizes_add_up_per_request() {
        let huge = [CHUNKED, b"ffffffffffffffff\r\n"].concat();
        assert_eq!(declared(&[&huge]), (vec![u64::MAX], State::Data(u64::MAX)));
        let two = [CHUNKED, b"5\r\nhello\r\n10;ext=1\r\n"].concat();
        assert_eq!(declared(&[&two]).0, vec![5 + 16]);
        let done = [CHUNKED, b"5\r\nhello\r\n0\r\n\r\n"].concat();
        assert_eq!(declared(&[&done]), (vec![5], State::Head));
        let trailers = [CHUNKED, b"1\r\nx\r\n0\r\nA: b\r\nC: d\r\n\r\n"].concat();
        assert_eq!(declared(&[&trailers]), (vec![1], State::Head));
    }

    #[test]
    fn requests_are_followed_in_order_whatever_their_framing() {
        let fixed = b"POST /push/C HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let get = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
        let chunked = [CHUNKED, b"3\r\nabc\r\n0\r\n\r\n"].concat();
        let last = [CHUNKED, b"ffff\r\n"].concat();
        let all = [&fixed[..], get, &chunked, fixed, &last].concat();
        // The fifth request declares 0xffff, the third 3.
        for cut in 1..all.len() {
            let (seen, state) = declared(&[&all[..cut], &all[cut..]]);
            assert_eq!(seen, vec![0, 0, 3, 0, 0xffff], "cut at {cut}");
            assert_eq!(state, State::Data(0xffff), "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = all.chunks(1).collect();
        assert_eq!(
            declared(&bytes).0,
            vec![0, 0, 3, 0, 0xffff],
            "a byte at a time"
        );
    }

    #[test]
    fn what_cannot_be_followed_stops_the_watch() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_eq!(declared(&[preface]).1, State::Off);
        let gzip = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(declared(&[gzip]).1, State::Off);
        let two_lengths = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(declared(&[two_lengths]).1, State::Off);
        let bad_size = [CHUNKED, b"zz\r\n"].concat();
        assert_eq!(declared(&[&bad_size]).1, State::Off);
        let no_crlf = [CHUNKED, b"1\r\nxy\r\n"].concat();
        assert_eq!(declared(&[&no_crlf]).1, State::Off);
        let endless = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(
            declared(&[b"GET / HTTP/1.1\r\nX: ", &endless]).1,
            State::Off
        );
        // Once off, nothing more is declared.
        assert_eq!(
            declared(&[preface, CHUNKED, b"ffff\r\n"]).0,
            Vec::<u64>::new()
        );
    }

    /// Where a read that holds a head hyper would refuse is cut, for each way a head is
    /// refused; the heads before it are followed as usual.
    #[test]
    fn a_head_hyper_would_refuse_is_cut_where_it_begins() {
        let fed = |pieces: &[&[u8]]| {
            let mut framing = Framing::new(Declared::default());
            pieces
                .iter()
                .map(|piece| framing.feed(piece))
                .collect::<Vec<_>>()
        };
        let served = b"POST /push/C HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        let malformed = b"GET /a b HTTP/1.1\r\n\r\n";
        let together = [&served[..], malformed].concat();
        assert_eq!(fed(&[&together]), vec![Some(served.len())]);
        assert_eq!(fed(&[served, malformed]), vec![None, Some(0)]);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for n in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{n}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(fed(&[served, &many]), vec![None, Some(0)]);
        // A head that fills hyper's room without ending: cut in the read that fills it, from
        // its start when it began there, else from the read's start.
        let long = [&b"GET / HTTP/1.1\r\nCookie: "[..], &[b'c'; MAX_HEAD]].concat();
        let (first, second) = long.split_at(MAX_HEAD / 2);
        assert_eq!(fed(&[served, first, second]), vec![None, None, Some(0)]);
        let within = [&served[..], &long].concat();
        assert_eq!(fed(&[&within]), vec![Some(served.len())]);
        // Ended within hyper's room: followed.
        let ended = [
            &b"GET / HTTP/1.1\r\nCookie: "[..],
            &[b'c'; 1000],
            b"\r\n\r\n",
        ]
        .concat();
        assert_eq!(fed(&[served, &ended]), vec![None, None]);
    }

    /// The framing headers read as hyper's server reads them, in their order; what it refuses
    /// is refused here too.
    #[test]
    fn framing_headers_are_read_by_hyper_rules() {
        let body = |head: &str| {
            let head = format!("{head}\r\n");
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            assert!(
                request.parse(head.as_bytes()).unwrap().is_complete(),
                "{head}"
            );
            body_of(request.version == Some(1), request.headers)
        };
        let post = "POST / HTTP/1.1\r\n";
        assert_eq!(
            body(&format!("{post}Content-Length: 5\r\n")),
            Ok(State::Fixed(5))
        );
        assert_eq!(
            body(&format!("{post}Content-Length: 5\r\nContent-Length: 5\r\n")),
            Ok(State::Fixed(5))
        );
        assert_eq!(
            body(&format!("{post}Content-Length: 0\r\n")),
            Ok(State::Head)
        );
        assert_eq!(
            body(&format!(
                "{post}Content-Length: 2\r\nTransfer-Encoding: gzip, chunked\r\n"
            )),
            Ok(State::Size)
        );
        assert_eq!(
            body(&format!(
                "{post}Transfer-Encoding: chunked\r\nContent-Length: x\r\n"
            )),
            Ok(State::Size),
            "a length after the coding is not read"
        );
        for refused in [
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: 5, 5\r\n",
            "Content-Length: +5\r\n",
            "Content-Length: 18446744073709551615\r\n",
            "Content-Length: x\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: gzip\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
        ] {
            assert!(body(&format!("{post}{refused}")).is_err(), "{refused}");
        }
        assert!(body("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n").is_err());
    }

    #[test]
    fn empty_lines_before_a_request_are_skipped() {
        let head = [b"\r\n\r\n", CHUNKED, b"9\r\n"].concat();
        assert_eq!(declared(&[&head]).0, vec![9]);
        let slow: Vec<&[u8]> = head.chunks(3).collect();
        assert_eq!(declared(&slow).0, vec![9]);
    }

    #[tokio::test]
    async fn a_body_reader_hears_its_own_request_only() {
        let declared = Declared::default();
        assert_eq!((declared.next_request(), declared.next_request()), (1, 2));
        declared.declare(1, 100);
        let waiting = tokio::spawn({
            let declared = declared.clone();
            async move { declared.beyond(2, 10).await }
        });
        declared.declare(2, 5);
        declared.declare(2, 6);
        assert_eq!(waiting.await.unwrap(), 11);
        assert_eq!(declared.of(1), 0, "request 2's declarations replaced 1's");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_followed_without_a_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            cut in 0usize..2048,
        ) {
            let cut = cut.min(bytes.len());
            let _ = declared(&[&bytes[..cut], &bytes[cut..]]);
            let with_head = [CHUNKED, &bytes[..]].concat();
            let _ = declared(&[&with_head]);
        }

        /// Requests hyper serves are never kept from it, however their bytes come: any number
        /// of well-formed requests (bodies by length or in chunks, up to 100 headers, heads up
        /// to 16 KiB), back to back, cut into reads anywhere.
        #[test]
        fn well_formed_requests_are_never_refused(
            requests in proptest::collection::vec(
                (0usize..98, 0usize..12_000, 0usize..300, proptest::prelude::any::<bool>()),
                1..5,
            ),
            cuts in proptest::collection::vec(0usize..40_000, 0..6),
        ) {
            let mut bytes = Vec::new();
            for (headers, cookie, body, chunked) in requests {
                bytes.extend_from_slice(b"POST /push/C HTTP/1.1\r\nHost: x\r\n");
                for n in 0..headers {
                    bytes.extend_from_slice(format!("X-{n}: v\r\n").as_bytes());
                }
                bytes.extend_from_slice(format!("Cookie: {}\r\n", "c".repeat(cookie)).as_bytes());
                let data = "d".repeat(body);
                if chunked {
                    bytes.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                    if body > 0 {
                        bytes.extend_from_slice(format!("{body:x}\r\n{data}\r\n").as_bytes());
                    }
                    bytes.extend_from_slice(b"0\r\n\r\n");
                } else {
                    bytes.extend_from_slice(format!("Content-Length: {body}\r\n\r\n{data}").as_bytes());
                }
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.push(0);
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut framing = Framing::new(Declared::default());
            for piece in cuts.windows(2) {
                let read = &bytes[piece[0]..piece[1]];
                proptest::prop_assert_eq!(framing.feed(read), None);
            }
            proptest::prop_assert_eq!(framing.state, State::Head);
        }
    }
}
