//! The `pere-server` binary: parse the command line, bind, open the store, serve until a signal.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use pere_core::cluster;
use pere_core::store::{Durability, RedisOptions, RedisStore, SqliteOptions, SqliteStore};
use pere_core::{MemoryStore, Store, StoreError};
use pere_server::auth::{Grants, Minter, Mode};
use pere_server::config::{CheckArgs, Command, DurabilityLevel, LoadError, StoreKind, TokenArgs};
use pere_server::tls::{self, TlsAcceptor};
use pere_server::{http_conn, limits, logging, retention, run_with, AppState, Config};
use tokio::net::{TcpListener, TcpSocket};

mod allocator;

/// Threads for blocking work (SQLite reads). Tokio's default, 512, let a burst of thousands of
/// subscribers connecting at once start hundreds of threads, each keeping its stack and malloc
/// arena resident; reads queue for a few threads instead, which is as fast on a few cores.
const BLOCKING_THREADS: usize = 16;

fn main() -> ExitCode {
    let config = match Config::load(std::env::args_os()) {
        Ok(config) => config,
        // A usage error in one line, with exit status 2 as clap gives it; `--help` and
        // `--version` print as usual.
        Err(LoadError::Usage(err)) if err.use_stderr() => {
            eprintln!(
                "{}",
                pere_cli::usage_line("pere-server", &err.render().to_string())
            );
            return ExitCode::from(2);
        }
        Err(LoadError::Usage(err)) => err.exit(),
        Err(err) => {
            // One line naming the setting and where its value came from.
            eprintln!("pere-server: {err} (see pere-server --help)");
            return ExitCode::from(2);
        }
    };
    let outcome = match &config.command {
        Some(Command::Token(args)) => mint(&config, args),
        Some(Command::Check(args)) => return check(&config, args),
        None => serve_main(config),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, whatever went wrong at start, and never a backtrace.
            eprintln!("pere-server: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes in one line, each cause once: a cause whose text its parent's
/// message already holds (a store error quoting the I/O error it wraps) is not repeated.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// `pere-server token`: prints a token signed with the configured key.
fn mint(config: &Config, args: &TokenArgs) -> anyhow::Result<()> {
    pere_core::DeviceId::new(&args.sub).map_err(|e| anyhow::anyhow!("--sub: {e}"))?;
    let settings = config.key_settings();
    let minter = Minter::from_settings(&settings, args.jwt_private_key.as_deref())
        .map_err(anyhow::Error::msg)?;
    let grants = Grants {
        publish: args.publish.clone(),
        subscribe: args.subscribe.clone(),
        admin: args.admin,
    };
    let token = minter
        .mint(&args.sub, grants, args.ttl, &settings)
        .map_err(anyhow::Error::msg)?;
    println!("{token}");
    Ok(())
}

/// `pere-server check`: prints what the check found; exits 0 sound, 1 damaged, 2 not checked.
fn check(config: &Config, args: &CheckArgs) -> ExitCode {
    match pere_server::check::run(config, args) {
        Ok(checked) => {
            for line in checked.lines() {
                println!("{line}");
            }
            ExitCode::from(checked.status())
        }
        Err(err) => {
            eprintln!("pere-server check: {}", pere_server::check::explain(&err));
            ExitCode::from(2)
        }
    }
}

fn serve_main(config: Config) -> anyhow::Result<()> {
    // The Redis client's TLS takes the process's crypto provider: ring, as HTTPS does, rather
    // than whichever one a dependency's features happen to bring along.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let mode = config.mode().map_err(anyhow::Error::msg)?;
    let tls = tls::acceptor(&config).map_err(anyhow::Error::msg)?;
    let log = logging::init(&config).map_err(anyhow::Error::msg)?;
    // Before the state reads the limit: thousands of feeds need more than the usual 1,024.
    limits::raise_open_files();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().max_blocking_threads(BLOCKING_THREADS);
    if config.workers > 0 {
        runtime.worker_threads(config.workers);
    }
    let served = runtime
        .build()
        .context("cannot start the runtime")?
        .block_on(serve_with(config, mode, tls));
    if log.dropped_lines() > 0 {
        tracing::warn!(
            "{} log lines were dropped because the log could not keep up",
            log.dropped_lines()
        );
    }
    // Writes out the lines still buffered.
    drop(log);
    served
}

async fn serve_with(config: Config, mode: Mode, tls: Option<TlsAcceptor>) -> anyhow::Result<()> {
    let listener = listen(SocketAddr::new(config.host, config.port))
        .with_context(|| {
            format!(
                "cannot listen on {}:{} (is another server on that port? pick one with -p, or -p 0 for any free port)",
                config.host, config.port
            )
        })?;
    match config.store.clone() {
        StoreKind::Memory => {
            serve(
                listener,
                MemoryStore::new(retention(&config)),
                config,
                mode,
                tls,
                |_| {},
            )
            .await
        }
        StoreKind::Redis(url) => {
            let options = RedisOptions {
                url: url.0,
                prefix: config.redis_prefix.clone(),
                retention: retention(&config),
                tls: config.redis_tls().map_err(anyhow::Error::msg)?,
                wait_replicas: config.redis_wait_replicas,
            };
            let store = RedisStore::open(options).context("cannot use the Redis store")?;
            match store.probe().await {
                Ok(()) => {}
                // Waiting does not mend a certificate: say so now rather than stay unready.
                Err(err @ StoreError::Tls(_)) => {
                    let trusted = if config.redis_ca.is_some() {
                        "the CAs trusted are --redis-ca's"
                    } else {
                        "the CAs trusted are the system's: give a private one with --redis-ca"
                    };
                    anyhow::bail!(
                        "cannot use the Redis store at {}: {err} ({trusted}; a Redis that asks for a client certificate needs --redis-cert and --redis-key)",
                        config.store
                    );
                }
                // Nor does waiting mend a Redis too old for the bus.
                Err(err @ StoreError::Incompatible(_)) => {
                    anyhow::bail!("cannot use the Redis store at {}: {err}", config.store);
                }
                // A node may start before its Redis: it is not ready until Redis answers.
                Err(err) => {
                    tracing::warn!("Redis does not answer yet ({err}); not ready until it does")
                }
            }
            let ttl = config.redis_node_ttl;
            serve(
                listener,
                store,
                config,
                mode,
                tls,
                move |state: &Arc<AppState<RedisStore>>| {
                    let _ = state.bus.set(cluster::join(&state.hub, ttl));
                },
            )
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
            let store = SqliteStore::open(&config.data_dir, options).with_context(|| {
                format!("cannot open the store in {}", config.data_dir.display())
            })?;
            let hooked = store.clone();
            let count_commits = move |state: &Arc<AppState<SqliteStore>>| {
                let metrics = state.metrics.clone();
                hooked.on_commit(move |took, writes| metrics.committed(took, writes));
            };
            serve(listener, store.clone(), config, mode, tls, count_commits).await?;
            // Every acknowledged write is already committed; this waits for the writer to stop.
            store.close().await;
            Ok(())
        }
    }
}

/// Serves `store` until a signal; `attach` sees the state first (the Redis store starts its bus
/// there, the SQLite store hooks its commits to the metrics).
async fn serve<S: Store>(
    listener: TcpListener,
    store: S,
    config: Config,
    mode: Mode,
    tls: Option<TlsAcceptor>,
    attach: impl FnOnce(&Arc<AppState<S>>),
) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    let metrics_listener = match config.metrics_addr {
        Some(at) => {
            Some(listen(at).with_context(|| format!("cannot listen on --metrics-addr {at}"))?)
        }
        None => None,
    };
    let grace = config.shutdown_grace;
    let what = match &config.store {
        StoreKind::Memory => "memory".to_owned(),
        StoreKind::Redis(_) => format!("redis at {}, prefix {}", config.store, config.redis_prefix),
        StoreKind::Sqlite => {
            // Spelled as the flag takes it.
            let durability = clap::ValueEnum::to_possible_value(&config.durability)
                .map(|v| v.get_name().to_owned());
            format!(
                "sqlite in {}, durability {}",
                config.data_dir.display(),
                durability.unwrap_or_default()
            )
        }
    };
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let workers = if workers == 1 {
        "1 worker".to_owned()
    } else {
        format!("{workers} workers")
    };
    let state = AppState::new(store, config, mode);
    attach(&state);
    // Tests and scripts read the bound address from this first line, written before any log line.
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("PERE server listening on {scheme}://{address} (store: {what}; {workers})");
    tracing::info!("{}", state.mode.describe());
    if let Some(metrics_listener) = metrics_listener {
        tracing::info!(
            "metrics on http://{}/metrics",
            metrics_listener.local_addr()?
        );
        tokio::spawn(http_conn::serve_metrics(metrics_listener, state.clone()));
    }
    let (stopping, shutdown) = (state.stopping.clone(), state.shutdown.clone());
    tokio::spawn(async move {
        wait_for_signal().await;
        // Unready first, while the listener still answers: a load balancer sees the 503.
        stopping.cancel();
        if !grace.is_zero() {
            tracing::info!(
                "PERE server stopping: /readyz answers 503; serving {}s more",
                grace.as_secs_f64()
            );
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                () = wait_for_signal() => {}
            }
        }
        tracing::info!("PERE server shutting down");
        shutdown.cancel();
    });
    run_with(listener, state, tls).await?;
    tracing::info!("PERE server stopped");
    Ok(())
}

/// Connections waiting to be accepted before the kernel refuses more. The usual default (128)
/// makes a reconnect storm after a restart wait for SYN retries, a second each.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // A restarted server can take its port back while old connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
