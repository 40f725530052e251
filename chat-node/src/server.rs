//! Serving and graceful shutdown.
//!
//! On SIGTERM (or SIGINT) the node stops accepting connections, reports
//! not-ready, closes every client with 1012 so it reconnects elsewhere and
//! recovers with `since`, and exits once they are gone or `--shutdown-grace`
//! has passed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::node::Node;

/// Serves `node` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = crate::http::router(node.clone()).into_make_service_with_connect_info::<SocketAddr>();
    // Replies and pushes are small frames written back to back: without
    // TCP_NODELAY the second one waits for the client's delayed ACK (~40 ms).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "server stopped with an error");
        }
    });
    shutdown.await;
    let sessions = node.lifecycle.sessions();
    tracing::info!(sessions, "shutting down: closing clients with 1012");
    node.lifecycle.drain();
    let _ = stop_tx.send(());
    let grace = node.config.shutdown_grace;
    let left = node.lifecycle.wait_for_sessions(grace).await;
    if left > 0 {
        tracing::warn!(left, ?grace, "grace period over with sessions still open");
    }
    // Give the HTTP server a moment to finish in-flight plain requests.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), server).await;
    tracing::info!("stopped");
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
