//! Bounds on what clients can make the server hold open: connections, the streams among them
//! (in all, and per device), and the connections of one address that are slow to send their
//! first request. Each open connection and stream holds a slot, given back when it is dropped.
//!
//! Why a reserve: a feed holds its connection for hours. If feeds could take every descriptor,
//! the server could answer nothing else, `/health` included; streams may take every connection
//! but [`Limits::reserve`], which is left for short requests.
//!
//! Why a cap per address on slow connections ([`Arrival`]): the reserve is shared, and a client
//! that opens connections and sends their request heads a byte at a time would otherwise hold
//! all of it until the header timeout, wave after wave. A connection whose first request's head
//! has not arrived [`SLOW_HEAD`] after its accept counts against its address (an IPv6 /64: one
//! host's share of addresses) until the head arrives; one past `--max-slow-per-address` is
//! closed then, and while the address holds that many, its new connections are closed at
//! accept. A client that sends its head at once, as every client does, is never counted: a
//! burst of connections from one address (a load generator, devices behind one carrier's NAT
//! reconnecting together) is not refused. And while more than half the reserve is still waiting
//! for a first request's head, new connections get `--busy-header-timeout` to send theirs
//! instead of `--header-timeout`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::StatusCode;
use pere_core::DeviceId;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::OpenStream;

/// Descriptors kept for the store, the log and the listening socket.
pub const DESCRIPTOR_RESERVE: usize = 64;

/// Seconds a client refused for a full server is told to wait (`Retry-After`).
const RETRY_AFTER_SECS: u64 = 5;

/// The shortest header timeout taken from the settings: 0 would close every connection at once.
const MIN_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// The counts and their caps.
#[derive(Debug)]
pub struct Limits {
    max_connections: usize,
    max_streams: usize,
    max_streams_per_device: usize,
    connections: AtomicUsize,
    streams: AtomicUsize,
    per_device: Mutex<HashMap<DeviceId, usize>>,
    connection_closed: Notify,
    /// Slow connections one client may hold; 0: no cap.
    max_slow_per_client: usize,
    /// Slow connections per client, and whether its refusals were logged (once an episode).
    slow: Mutex<HashMap<Client, Slow>>,
    /// Connections whose first request's head has not arrived yet.
    heads: AtomicUsize,
    header_timeout: Duration,
    busy_header_timeout: Duration,
}

/// The part of a peer's address that counts as one client: an IPv4 address, or an IPv6 /64 (a
/// host is given a whole /64 and may use any address in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Client {
    V4(u32),
    V6(u64),
}

impl Client {
    fn of(ip: IpAddr) -> Client {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Client::V4(u32::from(v4)),
            IpAddr::V6(v6) => Client::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// A client's slow connections.
#[derive(Debug, Default)]
struct Slow {
    open: usize,
    /// Its refusals were logged since it last held none.
    warned: bool,
}

/// How long after its accept a connection may still be waiting for its first request's head
/// without counting as slow: a client sends its head as soon as it is connected, so the head
/// follows at once, after one round trip of a TLS handshake at most; a second covers slow
/// mobile links.
pub const SLOW_HEAD: Duration = Duration::from_secs(1);

impl Limits {
    /// The caps `config` asks for; `open_files` is the process's descriptor limit, which sets the
    /// connection cap when the settings leave it at 0.
    pub fn new(config: &Config, open_files: usize) -> Arc<Self> {
        let max_connections = match config.max_connections {
            0 => open_files.saturating_sub(DESCRIPTOR_RESERVE).max(1),
            n => n,
        };
        Arc::new(Limits {
            max_connections,
            max_streams: max_connections
                .saturating_sub(config.connection_reserve)
                .max(1),
            max_streams_per_device: config.max_streams_per_device.max(1),
            connections: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            per_device: Mutex::default(),
            connection_closed: Notify::new(),
            max_slow_per_client: config.max_slow_per_address,
            slow: Mutex::default(),
            heads: AtomicUsize::new(0),
            header_timeout: config.header_timeout.max(MIN_HEADER_TIMEOUT),
            busy_header_timeout: config.busy_header_timeout.clamp(
                MIN_HEADER_TIMEOUT,
                config.header_timeout.max(MIN_HEADER_TIMEOUT),
            ),
        })
    }

    /// The connection cap.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Connections kept for short requests.
    pub fn reserve(&self) -> usize {
        self.max_connections - self.max_streams
    }

    /// Open connections now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Open streams now.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// A slot for a new connection, once one is free: past the cap, waits for a connection to
    /// close (new ones wait in the kernel's accept queue meanwhile).
    pub async fn connection(self: &Arc<Self>) -> ConnectionSlot {
        loop {
            let closed = self.connection_closed.notified();
            let taken = self
                .connections
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < self.max_connections).then_some(n + 1)
                });
            if taken.is_ok() {
                return ConnectionSlot(self.clone());
            }
            closed.await;
        }
    }

    /// A connection just accepted from `peer`: its deadline for its first request's head
    /// (sooner while more than half the reserve waits for theirs), and its address, should the
    /// head be slow.
    ///
    /// # Errors
    /// [`Crowded`] when the address holds `--max-slow-per-address` slow connections already:
    /// close the connection at once (nothing it sent is read, so no answer can be written).
    pub fn arrival(self: &Arc<Self>, peer: SocketAddr) -> Result<Arrival, Crowded> {
        let client = (self.max_slow_per_client > 0).then(|| Client::of(peer.ip()));
        if let Some(client) = client {
            let slow = self.slow.lock().unwrap_or_else(|e| e.into_inner());
            if slow
                .get(&client)
                .is_some_and(|c| c.open >= self.max_slow_per_client)
            {
                return Err(Crowded);
            }
        }
        let waiting = self.heads.fetch_add(1, Ordering::AcqRel);
        let timeout = if waiting > self.reserve() / 2 {
            self.busy_header_timeout
        } else {
            self.header_timeout
        };
        let now = Instant::now();
        Ok(Arrival(Arc::new(Standing {
            limits: self.clone(),
            peer,
            client,
            accepted: now,
            deadline: now + timeout,
            arrived: AtomicBool::new(false),
            head: Notify::new(),
            slow: AtomicBool::new(false),
        })))
    }

    /// Counts a connection of `client` as slow, unless it holds its share of slow ones already
    /// (then `false`: the connection is to be closed).
    fn slow_one(&self, client: Client, peer: SocketAddr) -> bool {
        let mut slow = self.slow.lock().unwrap_or_else(|e| e.into_inner());
        let entry = slow.entry(client).or_default();
        if entry.open >= self.max_slow_per_client {
            if !entry.warned {
                entry.warned = true;
                tracing::warn!(
                    "connections: {} holds {} connections that have sent no whole request within \
                     {} s (--max-slow-per-address); closing its new ones until it holds fewer",
                    peer.ip(),
                    entry.open,
                    SLOW_HEAD.as_secs()
                );
            }
            return false;
        }
        entry.open += 1;
        true
    }

    /// A slow connection of `client` sent its head or closed.
    fn slow_left(&self, client: Client) {
        let mut slow = self.slow.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = slow.get_mut(&client) {
            entry.open -= 1;
            if entry.open == 0 {
                slow.remove(&client);
            }
        }
    }

    /// The longest time a request's head may take (hyper's, for the requests after the first).
    pub fn header_timeout(&self) -> Duration {
        self.header_timeout
    }

    /// A slot for a new stream of `device` (anonymous streams count only in all).
    ///
    /// # Errors
    /// 503 `server_full` when streams hold every connection but the reserve; 429
    /// `too_many_streams` when the device holds its share already. Both say when to retry.
    pub fn stream(self: &Arc<Self>, device: Option<&DeviceId>) -> Result<StreamSlot, ApiError> {
        let taken = self
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.max_streams).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(ApiError {
                retry_after: Some(RETRY_AFTER_SECS),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_full",
                    "This server holds all the streams it can; try again later.",
                )
            });
        }
        // Given back on every return below but the last, which names the device too.
        let mut slot = StreamSlot {
            limits: self.clone(),
            device: None,
            counted: None,
        };
        if let Some(device) = device {
            let mut per_device = self.per_device.lock().unwrap_or_else(|e| e.into_inner());
            let open = per_device.entry(device.clone()).or_default();
            if *open >= self.max_streams_per_device {
                let max = self.max_streams_per_device;
                return Err(ApiError {
                    retry_after: Some(RETRY_AFTER_SECS),
                    ..ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_streams",
                        format!("{device} already holds {max} open streams"),
                    )
                });
            }
            *open += 1;
            slot.device = Some(device.clone());
        }
        Ok(slot)
    }
}

/// A connection refused for its address's slow connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crowded;

/// A connection's standing with the limits until its first request's head arrives: its peer,
/// its deadline, and its place among its address's slow connections once it is slow. Shared by
/// the connection's requests; the door notes the head's arrival ([`Arrival::arrived`]), and
/// whatever serves the connection closes it when [`Arrival::overdue`] completes.
#[derive(Debug, Clone)]
pub struct Arrival(Arc<Standing>);

#[derive(Debug)]
struct Standing {
    limits: Arc<Limits>,
    peer: SocketAddr,
    /// The address it counts against when slow; `None` when there is no cap.
    client: Option<Client>,
    accepted: Instant,
    deadline: Instant,
    /// Its first request's head arrived: it left the header phase.
    arrived: AtomicBool,
    /// Wakes [`Arrival::overdue`] when the head arrives.
    head: Notify,
    /// It counts among its address's slow connections.
    slow: AtomicBool,
}

impl Arrival {
    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.0.peer
    }

    /// When the first request's head must have arrived.
    pub fn deadline(&self) -> Instant {
        self.0.deadline
    }

    /// A request's head arrived (the door has it): the connection leaves the header phase, and
    /// its address's slow connections.
    pub fn arrived(&self) {
        if !self.0.arrived.swap(true, Ordering::AcqRel) {
            self.0.limits.heads.fetch_sub(1, Ordering::AcqRel);
            self.0.head.notify_waiters();
            self.left_slow();
        }
    }

    fn left_slow(&self) {
        if let Some(client) = self.0.client {
            if self.0.slow.swap(false, Ordering::AcqRel) {
                self.0.limits.slow_left(client);
            }
        }
    }

    /// Completes when the connection is to be closed for want of its first request's head: at
    /// the deadline, or [`SLOW_HEAD`] after its accept when its address holds its share of slow
    /// connections already; never once the head arrived.
    pub async fn overdue(&self) {
        let standing = &*self.0;
        let head = standing.head.notified();
        tokio::pin!(head);
        // Listening before looking, so an arrival in between is not missed.
        head.as_mut().enable();
        if standing.arrived.load(Ordering::Acquire) {
            return std::future::pending().await;
        }
        // Counted once, whichever wait (the feed loop's first read, then hyper's) gets there.
        if let Some(client) = standing
            .client
            .filter(|_| !standing.slow.load(Ordering::Acquire))
        {
            let slow_at = (standing.accepted + SLOW_HEAD).min(standing.deadline);
            tokio::select! {
                () = tokio::time::sleep_until(slow_at) => {}
                () = head.as_mut() => return std::future::pending().await,
            }
            // A head that arrived meanwhile counts no more (see `arrived`).
            if standing.arrived.load(Ordering::Acquire) {
                return std::future::pending().await;
            }
            if !standing.limits.slow_one(client, standing.peer) {
                return;
            }
            if standing.slow.swap(true, Ordering::AcqRel) {
                // Counted by another wait meanwhile.
                standing.limits.slow_left(client);
            }
            if standing.arrived.load(Ordering::Acquire) {
                // It arrived while being counted: undo.
                self.left_slow();
                return std::future::pending().await;
            }
        }
        tokio::select! {
            () = tokio::time::sleep_until(standing.deadline) => {}
            () = head => std::future::pending().await,
        }
    }
}

impl Drop for Standing {
    fn drop(&mut self) {
        if !*self.arrived.get_mut() {
            self.limits.heads.fetch_sub(1, Ordering::AcqRel);
        }
        if let (Some(client), true) = (self.client, *self.slow.get_mut()) {
            self.limits.slow_left(client);
        }
    }
}

/// An open connection's place in the count.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<Limits>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.connection_closed.notify_one();
    }
}

/// An open stream's place in the counts.
#[derive(Debug)]
pub struct StreamSlot {
    limits: Arc<Limits>,
    device: Option<DeviceId>,
    // Its place in the metrics' open streams, given back with the slot.
    counted: Option<OpenStream>,
}

impl StreamSlot {
    /// Holds the stream's place in the metrics for as long as the slot.
    pub fn counted(mut self, open: OpenStream) -> Self {
        self.counted = Some(open);
        self
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.limits.streams.fetch_sub(1, Ordering::AcqRel);
        if let Some(device) = self.device.take() {
            let mut per_device = self
                .limits
                .per_device
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(open) = per_device.get_mut(&device) {
                *open -= 1;
                if *open == 0 {
                    per_device.remove(&device);
                }
            }
        }
    }
}

/// Raises the process's open-file limit to its hard limit (a server holding thousands of feeds
/// needs them; the usual soft limit is 1,024), and returns the limit in force.
pub fn raise_open_files() -> usize {
    #[cfg(unix)]
    {
        let Some(mut limit) = rlimit() else {
            return 1024;
        };
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: setrlimit only reads the struct given.
            #[allow(unsafe_code)]
            let raised_ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0;
            if raised_ok {
                limit = raised;
            }
        }
        usize::try_from(limit.rlim_cur)
            .unwrap_or(usize::MAX)
            .min(1 << 24)
    }
    #[cfg(not(unix))]
    {
        1024
    }
}

/// The process's open-file limit.
pub fn open_files() -> usize {
    #[cfg(unix)]
    {
        rlimit().map_or(1024, |l| {
            usize::try_from(l.rlim_cur)
                .unwrap_or(usize::MAX)
                .min(1 << 24)
        })
    }
    #[cfg(not(unix))]
    {
        1024
    }
}

#[cfg(unix)]
fn rlimit() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct given.
    #[allow(unsafe_code)]
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    read.then_some(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections: usize, reserve: usize, per_device: usize) -> Arc<Limits> {
        let mut config = Config::defaults();
        config.max_connections = connections;
        config.connection_reserve = reserve;
        config.max_streams_per_device = per_device;
        Limits::new(&config, 1024)
    }

    #[test]
    fn streams_leave_the_reserve_and_devices_their_share() {
        let limits = limits(10, 4, 2);
        let d = DeviceId::new("D1").unwrap();
        let a = limits.stream(Some(&d)).unwrap();
        let _b = limits.stream(Some(&d)).unwrap();
        assert_eq!(
            limits.stream(Some(&d)).unwrap_err().code,
            "too_many_streams"
        );
        drop(a);
        let _c = limits.stream(Some(&d)).unwrap();
        let _anonymous: Vec<_> = (0..4).map(|_| limits.stream(None).unwrap()).collect();
        let full = limits.stream(None).unwrap_err();
        assert_eq!(
            (full.code, full.status.as_u16(), full.retry_after),
            ("server_full", 503, Some(5))
        );
        assert_eq!(limits.reserve(), 4);
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 5000)
    }

    /// The connections of `arrivals` that `overdue` closes within `SLOW_HEAD` (their address
    /// held its share of slow ones), once time has moved past it.
    async fn closed_as_slow(arrivals: &[Arrival]) -> usize {
        let mut closed = 0;
        for arrival in arrivals {
            let overdue = tokio::time::timeout(SLOW_HEAD * 2, arrival.overdue()).await;
            closed += usize::from(overdue.is_ok());
        }
        closed
    }

    #[tokio::test(start_paused = true)]
    async fn slow_connections_are_capped_per_address_and_an_ipv6_64() {
        let mut config = Config::defaults();
        config.max_connections = 100;
        config.connection_reserve = 90;
        config.max_slow_per_address = 2;
        let limits = Limits::new(&config, 1024);
        // Any number at once: none is slow yet.
        let burst: Vec<_> = (0..10)
            .map(|_| limits.arrival(peer("10.0.0.1")).unwrap())
            .collect();
        // Those whose head arrives in time never count.
        burst[..7].iter().for_each(Arrival::arrived);
        // Of the three others, two may be slow; the third is closed as soon as it is.
        assert_eq!(closed_as_slow(&burst[7..]).await, 1);
        let mapped = limits.arrival(peer("::ffff:10.0.0.1"));
        assert_eq!(mapped.unwrap_err(), Crowded, "closed at accept meanwhile");
        let _other = limits.arrival(peer("10.0.0.2")).unwrap();
        // A slow one that sends its head after all leaves the count.
        burst[7].arrived();
        let again = limits.arrival(peer("10.0.0.1")).unwrap();
        drop(burst);
        assert_eq!(closed_as_slow(&[again]).await, 0, "room again");
        // One host's /64 is one client.
        let v6: Vec<_> = ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:2::7"]
            .iter()
            .map(|ip| limits.arrival(peer(ip)).unwrap())
            .collect();
        assert_eq!(closed_as_slow(&v6).await, 1);
        assert!(limits.arrival(peer("2001:db8:1:2::77")).is_err());
        assert!(limits.arrival(peer("2001:db8:1:3::1")).is_ok());
        // A connection waited on twice (the feed loop's first read, then hyper) counts once.
        let twice = limits.arrival(peer("10.0.0.3")).unwrap();
        assert_eq!(closed_as_slow(&[twice.clone(), twice.clone()]).await, 0);
        let counted = |ip: &str| {
            let slow = limits.slow.lock().unwrap();
            slow.get(&Client::of(ip.parse().unwrap()))
                .map_or(0, |c| c.open)
        };
        assert_eq!(counted("10.0.0.3"), 1);
        drop(twice);
        assert_eq!(counted("10.0.0.3"), 0);
        // No cap at 0.
        config.max_slow_per_address = 0;
        let open = Limits::new(&config, 1024);
        let many: Vec<_> = (0..10)
            .map(|_| open.arrival(peer("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(closed_as_slow(&many).await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_header_timeout_shortens_while_half_the_reserve_waits_for_heads() {
        let mut config = Config::defaults();
        config.max_connections = 20;
        config.connection_reserve = 8;
        config.max_slow_per_address = 0;
        let limits = Limits::new(&config, 1024);
        let start = Instant::now();
        let waiting: Vec<_> = (0..5)
            .map(|_| limits.arrival(peer("10.0.0.1")).unwrap())
            .collect();
        assert!(waiting
            .iter()
            .all(|a| a.deadline() == start + Duration::from_secs(30)));
        let hurried = limits.arrival(peer("10.0.0.9")).unwrap();
        assert_eq!(hurried.deadline(), start + Duration::from_secs(5));
        // Heads that arrived leave the count.
        waiting.iter().for_each(Arrival::arrived);
        hurried.arrived();
        let calm = limits.arrival(peer("10.0.0.9")).unwrap();
        assert_eq!(calm.deadline(), start + Duration::from_secs(30));

        // Overdue at the deadline without a head; never once it arrived.
        let late = tokio::spawn({
            let calm = calm.clone();
            async move { calm.overdue().await }
        });
        tokio::time::advance(Duration::from_secs(31)).await;
        late.await.unwrap();
        let on_time = limits.arrival(peer("10.0.0.9")).unwrap();
        on_time.arrived();
        let never = tokio::time::timeout(Duration::from_secs(60), on_time.overdue()).await;
        assert!(never.is_err());
    }

    #[test]
    fn the_default_cap_is_the_descriptor_limit_less_a_reserve() {
        assert_eq!(
            limits(0, 256, 16).max_connections(),
            1024 - DESCRIPTOR_RESERVE
        );
    }

    #[tokio::test]
    async fn a_connection_past_the_cap_waits_for_one_to_close() {
        let limits = limits(2, 1, 1);
        let first = limits.connection().await;
        let _second = limits.connection().await;
        let third = tokio::time::timeout(Duration::from_millis(50), limits.connection()).await;
        assert!(third.is_err(), "a third connection must wait");
        let waiting = tokio::spawn({
            let limits = limits.clone();
            async move { limits.connection().await }
        });
        drop(first);
        let _third = waiting.await.unwrap();
        assert_eq!(limits.connections(), 2);
    }
}
