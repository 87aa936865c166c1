//! What every request shares: the engine, the settings and the shutdown signal.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pere_core::store::redis::Bus;
use pere_core::{Hub, HubConfig, Retention, Store};
use tokio_util::sync::CancellationToken;

use crate::activity;
use crate::auth::Mode;
use crate::config::Config;
use crate::limits::{self, Limits};
use crate::metrics::Metrics;

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState<S: Store> {
    /// The engine.
    pub hub: Arc<Hub<S>>,
    /// The settings.
    pub config: Config,
    /// Who may use the server: protected, open, or tokens with their verifier.
    pub mode: Mode,
    /// Cancelled when the server shuts down; streams watch it to end.
    pub shutdown: CancellationToken,
    /// Open connections and streams, and their caps.
    pub limits: Arc<Limits>,
    /// Cancelled when the server is asked to stop, before `shutdown`: `/readyz` answers 503
    /// from then on, while the server still serves for `--shutdown-grace`.
    pub stopping: CancellationToken,
    /// What `GET /metrics` shows.
    pub metrics: Arc<Metrics>,
    /// The link to the other nodes on the same Redis (Redis store only): the admin views add
    /// up their streams, the webhook claims each report.
    pub bus: OnceLock<Bus>,
}

impl<S: Store> AppState<S> {
    /// The state of a server over `store`, configured by `config`, in security `mode`
    /// ([`Config::mode`] builds it from the settings).
    pub fn new(store: S, config: Config, mode: Mode) -> Arc<Self> {
        let hub = Hub::new(
            store,
            HubConfig {
                subscriber_buffer: config.subscriber_buffer.max(1),
                ack_timeout: (!config.ack_timeout.is_zero()).then_some(config.ack_timeout),
                max_deliveries: config.max_deliveries.max(1),
                // A channel with events still owed receipts stays loaded until the webhook would
                // report them as timed out anyway.
                keep_incomplete: config.receipt_timeout.max(pere_core::hub::KEEP_INCOMPLETE),
                // Zero would unload a channel between its load and its first use.
                idle_channel: config.idle_channel.max(Duration::from_millis(100)),
                keep_alive: Some(config.keep_alive_every()),
                ..HubConfig::default()
            },
        );
        hub.add_observer(Arc::new(activity::PushLog));
        let limits = Limits::new(&config, limits::open_files());
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();
        // A child: whatever stops the server makes it unready too.
        let stopping = shutdown.child_token();
        Arc::new(AppState {
            hub,
            config,
            mode,
            shutdown,
            limits,
            stopping,
            metrics,
            bus: OnceLock::new(),
        })
    }
}

/// The retention the settings ask for.
pub fn retention(config: &Config) -> Retention {
    Retention {
        max_events: config.retention_events.max(1),
        max_age: (!config.retention_age.is_zero()).then_some(config.retention_age),
        idempotency_window: (!config.idempotency_window.is_zero())
            .then_some(config.idempotency_window),
    }
}
