//! Connections: a subscriber's socket (optionally from a chosen 127.0.0.x source address) and a
//! keep-alive request/response client for pushes and receipts.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::http::{parse_head, BodyDecoder, Framing};

/// How long one connect or one request may take before it counts as failed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `target`, from `source` when given (port chosen by the kernel). Spreading
/// connections over several loopback source addresses lifts the ~28k ephemeral ports limit of
/// one source address.
///
/// # Errors
/// When the connection fails or takes longer than [`IO_TIMEOUT`].
pub async fn connect(target: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let attempt = async {
        match source {
            None => TcpStream::connect(target).await,
            Some(ip) => {
                let socket = if ip.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(target).await
            }
        }
    };
    let stream = tokio::time::timeout(IO_TIMEOUT, attempt)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One keep-alive HTTP/1.1 connection that sends a request and reads its whole answer before
/// the next (no pipelining), reconnecting when the server closes it.
#[derive(Debug)]
pub struct Client {
    target: SocketAddr,
    source: Option<IpAddr>,
    stream: Option<TcpStream>,
    /// Bytes read past the end of the last answer.
    pending: Vec<u8>,
    /// Connections opened, the first included.
    pub connects: u64,
}

impl Client {
    /// A client of `target`; it connects on its first request.
    pub fn new(target: SocketAddr, source: Option<IpAddr>) -> Self {
        Client {
            target,
            source,
            stream: None,
            pending: Vec::new(),
            connects: 0,
        }
    }

    /// Sends `request` (complete bytes: head and body) and reads the answer; returns its status.
    /// A kept-alive connection that the server closed in between is retried once on a new one.
    ///
    /// # Errors
    /// When the server cannot be reached, answers garbage, or takes longer than [`IO_TIMEOUT`].
    pub async fn request(&mut self, request: &[u8]) -> io::Result<u16> {
        self.request_keeping_body(request, None).await
    }

    /// As [`Client::request`], and the answer's body is put in `body` (when given; emptied
    /// first), for answers that say what the server did.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn request_keeping_body(
        &mut self,
        request: &[u8],
        mut body: Option<&mut Vec<u8>>,
    ) -> io::Result<u16> {
        let reused = self.stream.is_some();
        match tokio::time::timeout(IO_TIMEOUT, self.exchange(request, body.as_deref_mut())).await {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(Stale)) if reused => {
                self.stream = None;
                match tokio::time::timeout(IO_TIMEOUT, self.exchange(request, body)).await {
                    Ok(Ok(status)) => Ok(status),
                    Ok(Err(Stale)) => Err(self.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed",
                    ))),
                    Ok(Err(Failed(err))) => Err(self.fail(err)),
                    Err(_) => {
                        Err(self.fail(io::Error::new(io::ErrorKind::TimedOut, "request timed out")))
                    }
                }
            }
            Ok(Err(Stale)) => Err(self.fail(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ))),
            Ok(Err(Failed(err))) => Err(self.fail(err)),
            Err(_) => Err(self.fail(io::Error::new(io::ErrorKind::TimedOut, "request timed out"))),
        }
    }

    fn fail(&mut self, err: io::Error) -> io::Error {
        self.stream = None;
        self.pending.clear();
        err
    }

    async fn exchange(
        &mut self,
        request: &[u8],
        mut body: Option<&mut Vec<u8>>,
    ) -> Result<u16, ExchangeError> {
        if let Some(body) = body.as_deref_mut() {
            body.clear();
        }
        let mut keep = |bytes: &[u8]| {
            if let Some(body) = body.as_deref_mut() {
                body.extend_from_slice(bytes);
            }
        };
        if self.stream.is_none() {
            self.pending.clear();
            self.stream = Some(connect(self.target, self.source).await.map_err(Failed)?);
            self.connects += 1;
        }
        let stream = self.stream.as_mut().expect("connected above");
        if stream.write_all(request).await.is_err() {
            return Err(Stale);
        }
        let mut chunk = [0u8; 4096];
        let mut got_any = !self.pending.is_empty();
        let (head, head_len) = loop {
            if let Some(found) = parse_head(&self.pending)
                .map_err(|e| Failed(io::Error::new(io::ErrorKind::InvalidData, e)))?
            {
                break found;
            }
            let n =
                stream
                    .read(&mut chunk)
                    .await
                    .map_err(|e| if got_any { Failed(e) } else { Stale })?;
            if n == 0 {
                return Err(if got_any {
                    Failed(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed mid-answer",
                    ))
                } else {
                    Stale
                });
            }
            got_any = true;
            self.pending.extend_from_slice(&chunk[..n]);
        };
        let mut decoder = BodyDecoder::new(head.framing);
        let rest = self.pending.split_off(head_len);
        let used = decoder
            .decode(&rest, &mut keep)
            .map_err(|e| Failed(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        self.pending = rest[used..].to_vec();
        while !decoder.is_done() {
            let n = stream.read(&mut chunk).await.map_err(Failed)?;
            if n == 0 {
                if head.framing == Framing::Close {
                    break;
                }
                return Err(Failed(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed mid-body",
                )));
            }
            let used = decoder
                .decode(&chunk[..n], &mut keep)
                .map_err(|e| Failed(io::Error::new(io::ErrorKind::InvalidData, e)))?;
            self.pending.extend_from_slice(&chunk[used..n]);
        }
        if head.close {
            self.stream = None;
        }
        Ok(head.status)
    }
}

/// Why an exchange failed: `Stale` when a kept-alive connection was found closed before any
/// byte of the answer (worth one retry), `Failed` otherwise.
enum ExchangeError {
    Stale,
    Failed(io::Error),
}
use ExchangeError::{Failed, Stale};

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers each request on a connection with the next canned answer, and
    /// closes the connection after `per_connection` answers.
    async fn canned_server(answers: Vec<&'static [u8]>, per_connection: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut answers = answers.into_iter();
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                for _ in 0..per_connection {
                    let mut buf = vec![0u8; 4096];
                    let mut have = 0;
                    while !buf[..have].windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = socket.read(&mut buf[have..]).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        have += n;
                    }
                    let Some(answer) = answers.next() else { return };
                    socket.write_all(answer).await.unwrap();
                }
            }
        });
        address
    }

    #[tokio::test]
    async fn answers_of_every_framing_are_read_and_closed_connections_reopened() {
        let address = canned_server(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\n\r\n",
            ],
            2,
        )
        .await;
        let mut client = Client::new(address, Some("127.0.0.1".parse().unwrap()));
        let request = b"POST /push/c HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
        let mut body = b"stale".to_vec();
        let status = client.request_keeping_body(request, Some(&mut body));
        assert_eq!((status.await.unwrap(), &body[..]), (200, &b"hello"[..]));
        let status = client.request_keeping_body(request, Some(&mut body));
        assert_eq!((status.await.unwrap(), &body[..]), (201, &b"abc"[..]));
        // The server closed the first connection after two answers: one retry on a new one.
        assert_eq!(client.request(request).await.unwrap(), 404);
        assert_eq!(client.request(request).await.unwrap(), 204);
        assert_eq!(client.connects, 2);
    }
}
