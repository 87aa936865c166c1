//! HTTP/1.1 by hand: the bytes of a request ([`request`]), and responses read back: the head
//! (status and framing), then a body framed by `Content-Length`, chunked transfer-encoding or the
//! end of the connection.
//!
//! Hand-written rather than a client library so that a connection costs the generator a socket,
//! a small buffer and a task, and the server, not the generator, is what gets measured.

use std::fmt;
use std::io::Write as _;

/// The bytes of a request: the request line, `Host` (every HTTP/1.1 request needs one), then
/// `headers` in their order, `Content-Length` when there is a body (even an empty one), the
/// blank line and the body.
///
/// One function for every request the generator sends, so that feeds, pushes and receipts are
/// framed alike and a change of framing is made once. Names and values are the generator's own
/// (prefixes, channel names, ids the server sent on an SSE line) and never hold CR or LF.
pub fn request(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    debug_assert!(
        headers
            .iter()
            .all(|(name, value)| !(name.contains(['\r', '\n']) || value.contains(['\r', '\n']))),
        "a header that would split the request: {headers:?}"
    );
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + 4)
        .sum();
    let body_len = body.map_or(0, <[u8]>::len);
    // The fixed parts (` HTTP/1.1`, `Host: `, `Content-Length: `, line ends) fit in 64 bytes.
    let mut out =
        Vec::with_capacity(method.len() + path.len() + host.len() + fields + body_len + 64);
    for part in [method, " ", path, " HTTP/1.1\r\nHost: ", host, "\r\n"] {
        out.extend_from_slice(part.as_bytes());
    }
    for (name, value) in headers {
        for part in [name, ": ", value, "\r\n"] {
            out.extend_from_slice(part.as_bytes());
        }
    }
    if let Some(body) = body {
        // Writing to a Vec cannot fail.
        let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
        out.extend_from_slice(body);
    } else {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the server closes the connection.
    Close,
}

/// The parts of a response head the generator needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// How the body is framed.
    pub framing: Framing,
    /// The server will close the connection after this response.
    pub close: bool,
}

/// A response that does not follow HTTP/1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError(pub &'static str);

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed HTTP response: {}", self.0)
    }
}

impl std::error::Error for HttpError {}

/// Longest response head accepted; a server that sends more is not one we benchmark.
const MAX_HEAD: usize = 64 * 1024;

/// Parses a response head at the start of `buf`: `Ok(None)` while it is incomplete, else the
/// head and its length in bytes (including the blank line).
///
/// # Errors
/// When the head is malformed or longer than 64 KiB.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HttpError> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Err(HttpError("head too long"))
        } else {
            Ok(None)
        };
    };
    let text = &buf[..end];
    let mut lines = text
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().ok_or(HttpError("no status line"))?;
    let mut parts = status_line.splitn(3, |&b| b == b' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with(b"HTTP/1.") {
        return Err(HttpError("not HTTP/1.x"));
    }
    let status = parts
        .next()
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(HttpError("bad status code"))?;
    let mut length = None;
    let mut chunked = false;
    let mut close = version == b"HTTP/1.0";
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
            length = Some(n.ok_or(HttpError("bad content-length"))?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = contains_ignore_case(value, b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            if contains_ignore_case(value, b"close") {
                close = true;
            } else if contains_ignore_case(value, b"keep-alive") {
                close = false;
            }
        }
    }
    let framing = if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if status / 100 == 1 || status == 204 || status == 304 {
        Framing::Length(0)
    } else {
        Framing::Close
    };
    Ok(Some((
        Head {
            status,
            framing,
            close: close || framing == Framing::Close,
        },
        end + 4,
    )))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size; `ext` once past it (a `;` extension or whitespace).
    Size {
        value: u64,
        digits: bool,
        ext: bool,
    },
    /// Saw CR after the size line.
    SizeLf {
        value: u64,
    },
    /// Inside a chunk's data, with this much left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines, until an empty one.
    Trailer {
        line: usize,
    },
    TrailerLf {
        line: usize,
    },
}

const NEW_SIZE: Chunk = Chunk::Size {
    value: 0,
    digits: false,
    ext: false,
};

/// Decodes a body from bytes as they arrive, in pieces of any size.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    framing: Framing,
    /// `Length`: bytes still to come.
    remaining: u64,
    chunk: Chunk,
    done: bool,
}

impl BodyDecoder {
    /// A decoder for a body framed as `framing`.
    pub fn new(framing: Framing) -> Self {
        let remaining = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        BodyDecoder {
            framing,
            remaining,
            chunk: NEW_SIZE,
            done: framing == Framing::Length(0),
        }
    }

    /// The whole body has been read (never true for [`Framing::Close`]: the caller sees EOF).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Decodes `input`, giving each piece of body data to `out`. Returns how many bytes were
    /// used: all of them unless the body ended inside `input`.
    ///
    /// # Errors
    /// When the chunked framing is malformed.
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut impl FnMut(&[u8]),
    ) -> Result<usize, HttpError> {
        if self.done {
            return Ok(0);
        }
        match self.framing {
            Framing::Close => {
                if !input.is_empty() {
                    out(input);
                }
                Ok(input.len())
            }
            Framing::Length(_) => {
                let take = input
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                if take > 0 {
                    out(&input[..take]);
                }
                self.remaining -= take as u64;
                self.done = self.remaining == 0;
                Ok(take)
            }
            Framing::Chunked => self.decode_chunked(input, out),
        }
    }

    fn decode_chunked(
        &mut self,
        input: &[u8],
        out: &mut impl FnMut(&[u8]),
    ) -> Result<usize, HttpError> {
        let mut i = 0;
        while i < input.len() {
            if let Chunk::Data(left) = self.chunk {
                let take = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                out(&input[i..i + take]);
                i += take;
                let left = left - take as u64;
                self.chunk = if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left)
                };
                continue;
            }
            let b = input[i];
            i += 1;
            self.chunk = match self.chunk {
                Chunk::Size { value, digits, ext } => match b {
                    b'\r' => Chunk::SizeLf {
                        value: self.size_seen(digits, value)?,
                    },
                    b'\n' => self.after_size(self.size_seen(digits, value)?),
                    _ if ext => Chunk::Size { value, digits, ext },
                    b';' | b' ' | b'\t' => Chunk::Size {
                        value,
                        digits,
                        ext: true,
                    },
                    _ => {
                        let digit = (b as char)
                            .to_digit(16)
                            .ok_or(HttpError("bad chunk size"))?;
                        let value = value
                            .checked_mul(16)
                            .and_then(|v| v.checked_add(u64::from(digit)))
                            .ok_or(HttpError("chunk size overflow"))?;
                        Chunk::Size {
                            value,
                            digits: true,
                            ext,
                        }
                    }
                },
                Chunk::SizeLf { value } if b == b'\n' => self.after_size(value),
                Chunk::SizeLf { .. } => return Err(HttpError("CR without LF after chunk size")),
                Chunk::Data(_) => unreachable!("handled above"),
                Chunk::DataCr if b == b'\r' => Chunk::DataLf,
                Chunk::DataCr | Chunk::DataLf if b == b'\n' => NEW_SIZE,
                Chunk::DataCr | Chunk::DataLf => {
                    return Err(HttpError("chunk data not followed by CRLF"))
                }
                Chunk::Trailer { line } => match b {
                    b'\r' => Chunk::TrailerLf { line },
                    b'\n' if line == 0 => return Ok(self.finish(i)),
                    b'\n' => Chunk::Trailer { line: 0 },
                    _ => Chunk::Trailer { line: line + 1 },
                },
                Chunk::TrailerLf { line: 0 } if b == b'\n' => return Ok(self.finish(i)),
                Chunk::TrailerLf { .. } if b == b'\n' => Chunk::Trailer { line: 0 },
                Chunk::TrailerLf { .. } => return Err(HttpError("CR without LF in trailer")),
            };
        }
        Ok(i)
    }

    fn size_seen(&self, digits: bool, value: u64) -> Result<u64, HttpError> {
        if digits {
            Ok(value)
        } else {
            Err(HttpError("empty chunk size"))
        }
    }

    fn after_size(&self, value: u64) -> Chunk {
        if value == 0 {
            Chunk::Trailer { line: 0 }
        } else {
            Chunk::Data(value)
        }
    }

    fn finish(&mut self, used: usize) -> usize {
        self.done = true;
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_framed_as_before() {
        let feed = request(
            "GET",
            "/feed/c1",
            "127.0.0.1:4567",
            &[
                ("Accept", "text/event-stream"),
                ("Cache-Control", "no-cache"),
                ("device", "bd0"),
                ("Last-Event-ID", "7"),
            ],
            None,
        );
        let expected =
            "GET /feed/c1 HTTP/1.1\r\nHost: 127.0.0.1:4567\r\nAccept: text/event-stream\r\n\
                        Cache-Control: no-cache\r\ndevice: bd0\r\nLast-Event-ID: 7\r\n\r\n";
        assert_eq!(String::from_utf8(feed).unwrap(), expected);

        let body = br#"{"t":1,"seq":0}"#;
        let headers = [("Content-Type", "application/json"), ("device", "bp0")];
        let push = request("POST", "/push/c1", "h:1", &headers, Some(body));
        let expected = "POST /push/c1 HTTP/1.1\r\nHost: h:1\r\nContent-Type: application/json\r\ndevice: bp0\r\n\
                        Content-Length: 15\r\n\r\n{\"t\":1,\"seq\":0}";
        assert_eq!(String::from_utf8(push).unwrap(), expected);

        let empty = request("POST", "/feedback/c1", "h:1", &[], Some(b""));
        assert_eq!(
            empty,
            b"POST /feedback/c1 HTTP/1.1\r\nHost: h:1\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn heads_give_status_and_framing() {
        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\nrest";
        let (head, len) = parse_head(wire).unwrap().unwrap();
        assert_eq!(
            head,
            Head {
                status: 200,
                framing: Framing::Chunked,
                close: false
            }
        );
        assert_eq!(&wire[len..], b"rest");
        let (head, _) = parse_head(b"HTTP/1.1 404 Not Found\r\ncontent-length:  12 \r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            head,
            Head {
                status: 404,
                framing: Framing::Length(12),
                close: false
            }
        );
        let (head, _) = parse_head(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            head,
            Head {
                status: 204,
                framing: Framing::Length(0),
                close: true
            }
        );
        let (head, _) = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(
            head,
            Head {
                status: 200,
                framing: Framing::Close,
                close: true
            }
        );
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }

    fn decode_in_pieces(framing: Framing, wire: &[u8], cuts: &[usize]) -> (Vec<u8>, usize, bool) {
        let mut decoder = BodyDecoder::new(framing);
        let mut body = Vec::new();
        let mut used = 0;
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&wire.len())) {
            used += decoder
                .decode(&wire[start..end], &mut |d| body.extend_from_slice(d))
                .unwrap();
            start = end;
        }
        (body, used, decoder.is_done())
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_cuts() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: yes\r\n\r\nNEXT";
        let whole = decode_in_pieces(Framing::Chunked, wire, &[]);
        assert_eq!(whole, (b"hello, world".to_vec(), wire.len() - 4, true));
        for a in 0..=wire.len() {
            assert_eq!(
                decode_in_pieces(Framing::Chunked, wire, &[a]),
                whole,
                "cut at {a}"
            );
            for b in a..=wire.len() {
                assert_eq!(
                    decode_in_pieces(Framing::Chunked, wire, &[a, b]),
                    whole,
                    "cuts at {a}, {b}"
                );
            }
        }
        let bytewise: Vec<usize> = (1..wire.len()).collect();
        assert_eq!(decode_in_pieces(Framing::Chunked, wire, &bytewise), whole);
    }

    #[test]
    fn chunked_accepts_bare_lf_and_rejects_garbage() {
        assert_eq!(
            decode_in_pieces(Framing::Chunked, b"3\nabc\n0\n\n", &[]),
            (b"abc".to_vec(), 9, true)
        );
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        assert!(decoder.decode(b"zz\r\n", &mut |_| {}).is_err());
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        assert!(decoder.decode(b"3\r\nabcX", &mut |_| {}).is_err());
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        assert!(decoder.decode(b"\r\n", &mut |_| {}).is_err());
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        assert!(decoder
            .decode(b"fffffffffffffffff\r\n", &mut |_| {})
            .is_err());
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        assert_eq!(
            decode_in_pieces(Framing::Length(4), b"abcdEF", &[1, 3]),
            (b"abcd".to_vec(), 4, true)
        );
        assert_eq!(
            decode_in_pieces(Framing::Length(0), b"abc", &[]),
            (Vec::new(), 0, true)
        );
        assert_eq!(
            decode_in_pieces(Framing::Close, b"abc", &[2]),
            (b"abc".to_vec(), 3, false)
        );
    }
}
