//! `GET /v1/ws`: identity check, limits, then the session takes over.

use std::sync::Arc;

use axum::extract::{Query, State, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};

use crate::error::ChatError;
use crate::node::Node;
use crate::session::{self, Identity, identity::ConnectParams};

pub async fn upgrade(
    State(node): State<Arc<Node>>,
    Query(params): Query<ConnectParams>,
    ws: WebSocketUpgrade,
) -> Response {
    if node.lifecycle.is_draining() {
        return ChatError::unavailable("this node is shutting down; connect to another one").into_response();
    }
    let identity = match Identity::from_dev_params(&params) {
        Ok(id) => id,
        Err(e) => {
            node.metrics.error(e.code);
            return e.into_response();
        }
    };
    let max = node.config.max_frame_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| session::run(node, socket, identity))
}
