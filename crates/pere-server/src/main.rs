//! The `pere-server` binary: parse the command line, bind, open the store, serve until a signal.

use anyhow::Context as _;
use clap::Parser as _;
use pere_core::MemoryStore;
use pere_server::config::StoreKind;
use pere_server::{retention, run, AppState, Config};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let listener = TcpListener::bind((config.host, config.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    let address = listener.local_addr()?;
    let state = match config.store {
        StoreKind::Memory => AppState::new(MemoryStore::new(retention(&config)), config.clone()),
    };
    // Tests and scripts read the bound address from this first line.
    println!("PERE server listening on http://{address} (store: {})", config.store);
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        println!("PERE server shutting down");
        shutdown.cancel();
    });
    run(listener, state).await?;
    println!("PERE server stopped");
    Ok(())
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
