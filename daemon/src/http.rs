//! The TCP listener: `/crdt-sync` (WebSocket) and `/health` (JSON).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use huskies_core::sync::SessionOptions;

use crate::peer::{drive, split_server};
use crate::shared::{Origin, Shared};

/// Most HTTP connections served at once (sync peers, health probes, upgrades in progress);
/// further connections wait in the listen backlog.
const MAX_CONNECTIONS: usize = 1024;

pub(crate) async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    let app = Router::new()
        .route("/crdt-sync", get(sync_endpoint))
        .route("/health", get(health_endpoint))
        .with_state(shared.clone());
    let mut shutdown = shared.shutdown.subscribe();
    // Our own accept loop rather than `axum::serve`: a client that never finishes its HTTP
    // request must not hold a connection forever, so request headers get the handshake
    // timeout, and connections are bounded.
    let header_timeout = Duration::from_millis(shared.config.session.handshake_timeout_ms.max(1) as u64);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stopped(&mut shutdown) => return,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut conn_shutdown = shared.shutdown.subscribe();
        let metrics_shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        let reason = if e.is_timeout() { "http_timeout" } else { "http" };
                        crate::metrics::Metrics::count(&metrics_shared.metrics.disconnects, reason, 1);
                        tracing::debug!(error = %e, "http connection ended");
                    }
                }
                _ = stopped(&mut conn_shutdown) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn.as_mut()).await;
                }
            }
        });
    }
}

/// Resolves once shutdown is signalled (without holding the watch guard across awaits).
async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn sync_endpoint(ws: WebSocketUpgrade, State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let limit = shared.config.session.max_frame_bytes;
    // Frames over the limit are refused by the transport before they are buffered whole.
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move {
            if shared.is_shutting_down() {
                return;
            }
            let (sink, stream) = split_server(socket);
            drive(
                shared,
                sink,
                stream,
                SessionOptions::default(),
                Origin::Inbound,
                None,
            )
            .await;
        })
}

async fn health_endpoint(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(crate::metrics::health(&shared))
}
