//! The TCP listener: `/crdt-sync` (WebSocket) and `/health` (JSON).

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use huskies_core::sync::SessionOptions;

use crate::peer::{drive, split_server};
use crate::shared::{Origin, Shared};

pub(crate) async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    let app = Router::new()
        .route("/crdt-sync", get(sync_endpoint))
        .route("/health", get(health_endpoint))
        .with_state(shared.clone());
    let mut shutdown = shared.shutdown.subscribe();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "listener failed");
    }
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
