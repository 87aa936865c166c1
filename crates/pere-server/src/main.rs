//! The `pere-server` binary: parse the command line, bind, open the store, serve until a signal.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use std::sync::Arc;

use pere_core::bus::Bus;
use pere_core::store::{Durability, RedisOptions, RedisStore, SqliteOptions, SqliteStore};
use pere_core::{MemoryStore, Store};
use pere_server::auth::{Grants, Minter, Mode};
use pere_server::config::{Command, DurabilityLevel, StoreKind, TokenArgs};
use pere_server::{limits, logging, retention, run, AppState, Config};
use tokio::net::{TcpListener, TcpSocket};

/// Threads for blocking work (SQLite reads). Tokio's default, 512, let a burst of thousands of
/// subscribers connecting at once start hundreds of threads, each keeping its stack and malloc
/// arena resident; reads queue for a few threads instead, which is as fast on a few cores.
const BLOCKING_THREADS: usize = 16;

fn main() -> ExitCode {
    let config = Config::parse();
    let outcome = match &config.command {
        Some(Command::Token(args)) => mint(&config, args),
        None => serve_main(config),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, whatever went wrong at start.
            eprintln!("pere-server: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `pere-server token`: prints a token signed with the configured key.
fn mint(config: &Config, args: &TokenArgs) -> anyhow::Result<()> {
    pere_core::DeviceId::new(&args.sub).map_err(|e| anyhow::anyhow!("--sub: {e}"))?;
    let settings = config.key_settings();
    let minter = Minter::from_settings(&settings, args.jwt_private_key.as_deref()).map_err(anyhow::Error::msg)?;
    let grants = Grants { publish: args.publish.clone(), subscribe: args.subscribe.clone(), admin: args.admin };
    let token = minter.mint(&args.sub, grants, args.ttl, &settings).map_err(anyhow::Error::msg)?;
    println!("{token}");
    Ok(())
}

fn serve_main(config: Config) -> anyhow::Result<()> {
    let mode = config.mode().map_err(anyhow::Error::msg)?;
    let log = logging::init(&config).map_err(anyhow::Error::msg)?;
    // Before the state reads the limit: thousands of feeds need more than the usual 1,024.
    limits::raise_open_files();
    let served = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .context("cannot start the runtime")?
        .block_on(serve_with(config, mode));
    if log.dropped_lines() > 0 {
        tracing::warn!("{} log lines were dropped because the log could not keep up", log.dropped_lines());
    }
    // Writes out the lines still buffered.
    drop(log);
    served
}

async fn serve_with(config: Config, mode: Mode) -> anyhow::Result<()> {
    let listener = listen(SocketAddr::new(config.host, config.port))
        .with_context(|| {
            format!(
                "cannot listen on {}:{} (is another server on that port? pick one with -p, or -p 0 for any free port)",
                config.host, config.port
            )
        })?;
    match config.store.clone() {
        StoreKind::Memory => serve(listener, MemoryStore::new(retention(&config)), config, mode, |_| {}).await,
        StoreKind::Redis(url) => {
            let options =
                RedisOptions { url: url.0, prefix: config.redis_prefix.clone(), retention: retention(&config) };
            let store = RedisStore::open(options).context("cannot use the Redis store")?;
            if let Err(err) = store.probe().await {
                // A node may start before its Redis: it is not ready until Redis answers.
                tracing::warn!("Redis does not answer yet ({err}); not ready until it does");
            }
            let ttl = config.redis_node_ttl;
            serve(listener, store, config, mode, move |state: &Arc<AppState<RedisStore>>| {
                let _ = state.bus.set(Bus::start(&state.hub, ttl));
            })
            .await
        }
        StoreKind::Sqlite => {
            let options = SqliteOptions {
                durability: match config.durability {
                    DurabilityLevel::Normal => Durability::Normal,
                    DurabilityLevel::Full => Durability::Full,
                },
                retention: retention(&config),
                recent_bytes: config.recent_cache_bytes,
                device_records: config.device_records.max(1),
                ..SqliteOptions::default()
            };
            let store = SqliteStore::open(&config.data_dir, options)
                .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
            serve(listener, store.clone(), config, mode, |_| {}).await?;
            // Every acknowledged write is already committed; this waits for the writer to stop.
            store.close().await;
            Ok(())
        }
    }
}

/// Serves `store` until a signal; `attach` sees the state first (the Redis store starts its bus
/// there).
async fn serve<S: Store>(
    listener: TcpListener,
    store: S,
    config: Config,
    mode: Mode,
    attach: impl FnOnce(&Arc<AppState<S>>),
) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    let what = match &config.store {
        StoreKind::Memory => "memory".to_owned(),
        StoreKind::Redis(_) => format!("redis at {}, prefix {}", config.store, config.redis_prefix),
        StoreKind::Sqlite => {
            // Spelled as the flag takes it.
            let durability = clap::ValueEnum::to_possible_value(&config.durability).map(|v| v.get_name().to_owned());
            format!("sqlite in {}, durability {}", config.data_dir.display(), durability.unwrap_or_default())
        },
    };
    let state = AppState::new(store, config, mode);
    attach(&state);
    // Tests and scripts read the bound address from this first line, written before any log line.
    println!("PERE server listening on http://{address} (store: {what})");
    tracing::info!("{}", state.mode.describe());
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("PERE server shutting down");
        shutdown.cancel();
    });
    run(listener, state).await?;
    tracing::info!("PERE server stopped");
    Ok(())
}

/// Connections waiting to be accepted before the kernel refuses more. The usual default (128)
/// makes a reconnect storm after a restart wait for SYN retries, a second each.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // A restarted server can take its port back while old connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
