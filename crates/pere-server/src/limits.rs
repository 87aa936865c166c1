//! Bounds on what clients can make the server hold open: connections, and the streams among
//! them (in all, and per device). Each open connection and stream holds a slot, given back when
//! it is dropped.
//!
//! Why a reserve: a feed holds its connection for hours. If feeds could take every descriptor,
//! the server could answer nothing else, `/health` included; streams may take every connection
//! but [`Limits::reserve`], which is left for short requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper::StatusCode;
use pere_core::DeviceId;
use tokio::sync::Notify;

use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::OpenStream;

/// Descriptors kept for the store, the log and the listening socket.
pub const DESCRIPTOR_RESERVE: usize = 64;

/// Seconds a client refused for a full server is told to wait (`Retry-After`).
const RETRY_AFTER_SECS: u64 = 5;

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
}

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
        let third =
            tokio::time::timeout(std::time::Duration::from_millis(50), limits.connection()).await;
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
