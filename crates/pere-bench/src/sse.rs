//! A Server-Sent Events reader over a raw HTTP/1.1 response: [`SseParser`] turns body bytes into
//! events (WHATWG rules: lines end in LF, CR or CRLF; one space after the colon is dropped; a
//! blank line dispatches), and [`FeedParser`] adds the response head and chunked decoding.
//! Both take bytes in pieces of any size, as reads return them.

use crate::http::{parse_head, BodyDecoder, Head, HttpError};

/// What a feed yields.
#[derive(Debug, PartialEq, Eq)]
pub enum SseItem<'a> {
    /// A dispatched event: its `id:` (if this frame set one), `event:` type and data lines
    /// joined by LF.
    Event {
        /// The frame's `id:` field.
        id: Option<&'a [u8]>,
        /// The frame's `event:` field.
        event: Option<&'a [u8]>,
        /// The data lines, joined by LF.
        data: &'a [u8],
    },
    /// A comment line (`: keep-alive`).
    Comment,
    /// A `retry:` field.
    Retry,
}

/// The event stream's line and frame state.
#[derive(Debug, Default)]
pub struct SseParser {
    /// The start of a line cut by a read.
    line: Vec<u8>,
    /// The last byte seen was CR: an LF right after it belongs to the same line end.
    after_cr: bool,
    id: Option<Vec<u8>>,
    event: Option<Vec<u8>>,
    data: Vec<u8>,
    has_data: bool,
}

impl SseParser {
    /// Feeds body bytes; `on` sees each item as soon as it is complete.
    pub fn feed(&mut self, mut input: &[u8], on: &mut impl FnMut(SseItem<'_>)) {
        if input.is_empty() {
            return;
        }
        if std::mem::take(&mut self.after_cr) && input[0] == b'\n' {
            input = &input[1..];
        }
        while let Some(pos) = input.iter().position(|&b| b == b'\n' || b == b'\r') {
            if self.line.is_empty() {
                self.line_done(&input[..pos], on);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&input[..pos]);
                self.line_done(&line, on);
                line.clear();
                self.line = line;
            }
            let cr = input[pos] == b'\r';
            input = &input[pos + 1..];
            if cr {
                match input.first() {
                    None => self.after_cr = true,
                    Some(b'\n') => input = &input[1..],
                    Some(_) => {}
                }
            }
        }
        self.line.extend_from_slice(input);
    }

    fn line_done(&mut self, line: &[u8], on: &mut impl FnMut(SseItem<'_>)) {
        if line.is_empty() {
            if self.has_data {
                on(SseItem::Event {
                    id: self.id.as_deref(),
                    event: self.event.as_deref(),
                    data: &self.data,
                });
            }
            self.id = None;
            self.event = None;
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            on(SseItem::Comment);
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"id" if !value.contains(&0) => self.id = Some(value.to_vec()),
            b"event" => self.event = Some(value.to_vec()),
            b"retry" => on(SseItem::Retry),
            _ => {}
        }
    }
}

/// What a feed response yields, in order: its status, then its SSE items.
#[derive(Debug, PartialEq, Eq)]
pub enum FeedItem<'a> {
    /// The response head arrived.
    Head(Head),
    /// An item of the event stream (only for a 2xx answer; other bodies are skipped).
    Sse(SseItem<'a>),
}

/// A whole feed response, from its first byte.
#[derive(Debug, Default)]
pub struct FeedParser {
    head_buf: Vec<u8>,
    body: Option<(bool, BodyDecoder)>,
    sse: SseParser,
}

impl FeedParser {
    /// A parser for a new response.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes read from the connection.
    ///
    /// # Errors
    /// When the response is not HTTP/1.1 or its chunked framing is broken.
    pub fn feed(
        &mut self,
        input: &[u8],
        on: &mut impl FnMut(FeedItem<'_>),
    ) -> Result<(), HttpError> {
        let mut input = input;
        let owned;
        if self.body.is_none() {
            self.head_buf.extend_from_slice(input);
            let Some((head, len)) = parse_head(&self.head_buf)? else {
                return Ok(());
            };
            on(FeedItem::Head(head));
            self.body = Some((head.status / 100 == 2, BodyDecoder::new(head.framing)));
            owned = self.head_buf.split_off(len);
            self.head_buf = Vec::new();
            input = &owned;
        }
        let Some((is_stream, decoder)) = &mut self.body else {
            return Ok(());
        };
        let sse = &mut self.sse;
        if *is_stream {
            decoder.decode(input, &mut |data| {
                sse.feed(data, &mut |item| on(FeedItem::Sse(item)))
            })?;
        } else {
            decoder.decode(input, &mut |_| {})?;
        }
        Ok(())
    }

    /// The response body has ended (the server closes the stream).
    pub fn body_done(&self) -> bool {
        self.body.as_ref().is_some_and(|(_, d)| d.is_done())
    }
}

/// The unsigned integer value of `"key":` in a flat JSON object, found by scanning (the
/// generator reads its own bodies, `{"t":…,"seq":…}`, and must stay cheap per delivery).
pub fn json_u64(data: &[u8], key: &[u8]) -> Option<u64> {
    let mut from = 0;
    while let Some(at) = data[from..]
        .windows(key.len() + 2)
        .position(|w| w[0] == b'"' && &w[1..=key.len()] == key && w[key.len() + 1] == b'"')
    {
        let mut i = from + at + key.len() + 2;
        while data.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        if data.get(i) == Some(&b':') {
            i += 1;
            while data.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
                i += 1;
            }
            let digits = data[i..].iter().take_while(|b| b.is_ascii_digit()).count();
            return std::str::from_utf8(&data[i..i + digits]).ok()?.parse().ok();
        }
        from += at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Framing;

    /// What a test remembers of an item.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seen {
        Head(u16, Framing),
        Event(Option<String>, Option<String>, String),
        Comment,
        Retry,
    }

    fn seen(item: FeedItem<'_>) -> Seen {
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        match item {
            FeedItem::Head(head) => Seen::Head(head.status, head.framing),
            FeedItem::Sse(SseItem::Event { id, event, data }) => {
                Seen::Event(id.map(text), event.map(text), text(data))
            }
            FeedItem::Sse(SseItem::Comment) => Seen::Comment,
            FeedItem::Sse(SseItem::Retry) => Seen::Retry,
        }
    }

    fn parse_in_pieces(wire: &[u8], cuts: &[usize]) -> Vec<Seen> {
        let mut parser = FeedParser::new();
        let mut out = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&wire.len())) {
            parser
                .feed(&wire[start..end], &mut |item| out.push(seen(item)))
                .unwrap();
            start = end;
        }
        out
    }

    /// Wraps `body` in a chunked response, cut into chunks of `chunk` bytes.
    fn chunked_response(body: &[u8], chunk: usize) -> Vec<u8> {
        let mut wire = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for piece in body.chunks(chunk) {
            wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            wire.extend_from_slice(piece);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        wire
    }

    const BODY: &[u8] = b"retry: 3000\n\n: keep-alive\n\nid: 1\ndata: {\"t\":12,\"seq\":0}\n\n\
        id: 2\nevent: pere-gap\ndata: a\ndata:b\n\ndata: no id\r\n\r\nid: 1700000000:0\r\ndata:  two spaces\r\rid: 9\ndata\n\n";

    fn expected() -> Vec<Seen> {
        let s = |v: &str| Some(v.to_owned());
        vec![
            Seen::Head(200, Framing::Chunked),
            Seen::Retry,
            Seen::Comment,
            Seen::Event(s("1"), None, "{\"t\":12,\"seq\":0}".into()),
            Seen::Event(s("2"), s("pere-gap"), "a\nb".into()),
            Seen::Event(None, None, "no id".into()),
            Seen::Event(s("1700000000:0"), None, " two spaces".into()),
            Seen::Event(s("9"), None, String::new()),
        ]
    }

    #[test]
    fn a_chunked_feed_parses_the_same_whatever_the_reads() {
        for chunk in [1, 7, 16, 1000] {
            let wire = chunked_response(BODY, chunk);
            assert_eq!(parse_in_pieces(&wire, &[]), expected(), "chunks of {chunk}");
            for a in 0..=wire.len() {
                assert_eq!(
                    parse_in_pieces(&wire, &[a]),
                    expected(),
                    "chunks of {chunk}, cut at {a}"
                );
            }
        }
        // Every pair of cuts, on a frame cut into chunks of 7 bytes.
        let wire = chunked_response(BODY, 7);
        for a in (0..=wire.len()).step_by(3) {
            for b in a..=wire.len() {
                assert_eq!(
                    parse_in_pieces(&wire, &[a, b]),
                    expected(),
                    "cuts at {a}, {b}"
                );
            }
        }
        let bytewise: Vec<usize> = (1..wire.len()).collect();
        assert_eq!(parse_in_pieces(&wire, &bytewise), expected());
    }

    #[test]
    fn a_feed_without_chunking_reads_until_close() {
        let mut wire = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n".to_vec();
        wire.extend_from_slice(BODY);
        let mut want = expected();
        want[0] = Seen::Head(200, Framing::Close);
        for a in 0..=wire.len() {
            assert_eq!(parse_in_pieces(&wire, &[a]), want, "cut at {a}");
        }
    }

    #[test]
    fn an_error_answer_gives_its_status_and_no_events() {
        let wire = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 14\r\n\r\ndata: nope\n\n\n";
        assert_eq!(
            parse_in_pieces(wire, &[5]),
            vec![Seen::Head(403, Framing::Length(14))]
        );
    }

    #[test]
    fn json_fields_are_found_by_scanning() {
        let body = br#"{"t":123456789,"seq":42}"#;
        assert_eq!(json_u64(body, b"t"), Some(123_456_789));
        assert_eq!(json_u64(body, b"seq"), Some(42));
        assert_eq!(json_u64(br#"{"at": 5, "t" : 7}"#, b"t"), Some(7));
        assert_eq!(json_u64(br#"{"seq":"x"}"#, b"seq"), None);
        assert_eq!(json_u64(br#"{"from":1,"to":2}"#, b"t"), None);
        assert_eq!(json_u64(b"", b"t"), None);
    }
}
