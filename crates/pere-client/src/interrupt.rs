//! Ctrl-C for the tools: they stop on it with a summary and exit status 0.

use std::future::Future;

/// Resolves at the first SIGINT (Ctrl-C). The handler is installed when this is called, not when
/// it is first polled, so a Ctrl-C that comes early is not the default action (the process
/// killed, without a summary).
pub fn interrupted() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match interrupt {
                Ok(mut interrupt) => {
                    interrupt.recv().await;
                }
                // No handler (no signal driver): never interrupted, as without this.
                Err(_) => std::future::pending().await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
