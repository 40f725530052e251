//! `GET /v1/ws`: origin and per-IP admission, identity check, limits, then
//! the session takes over. Refusals are plain HTTP responses with a JSON
//! error body (401 `unauthorized`, 403 `forbidden` for a foreign origin, 429
//! `rate_limited`, 503 `unavailable`), so a client learns why before any
//! WebSocket exists.
//!
//! The open-connection slots (per IP, per user) taken here are held by the
//! upgrade callback until the session ends. Nothing here logs the request
//! URI: it may carry `?token=`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::ErrorResponse;
use crate::error::ChatError;
use crate::node::Node;
use crate::session::{self, identity::ConnectParams};

/// The WebSocket upgrade of client protocol v1 (not a REST call).
///
/// After `101 Switching Protocols` the connection carries JSON text frames
/// (requests with `op` and `id`, replies, pushes) as described in
/// docs/protocol.md; OpenAPI cannot describe them. The token goes in
/// `Authorization: Bearer <JWT>`, as the subprotocol `bearer.<JWT>` next to
/// `shardchat.v1` (browsers), or as `?token=`. A dev-mode node (no JWT key)
/// trusts `?user=` and `?roles=` instead. Refusals are plain HTTP responses
/// with the JSON error body, before any WebSocket exists.
#[utoipa::path(
    get,
    path = "/v1/ws",
    operation_id = "websocket_upgrade",
    tag = "websocket",
    params(
        ("token" = Option<String>, Query, description = "The JWT, when it cannot travel in a header or subprotocol"),
        ("user" = Option<String>, Query, description = "Dev mode only: the trusted user id", pattern = "^[A-Za-z0-9._:@-]{1,64}$"),
        ("roles" = Option<String>, Query, description = "Dev mode only: comma-separated roles"),
        ("Sec-WebSocket-Protocol" = Option<String>, Header, description = "`shardchat.v1, bearer.<JWT>` from browsers; the node selects `shardchat.v1`"),
    ),
    security(("bearer_jwt" = []), ("token_query" = []), ()),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol; JSON text frames follow (docs/protocol.md)"),
        (status = 400, description = "`bad_request` (JSON) for a malformed query string; a request that is not a WebSocket handshake gets a plain-text reason from the upgrade layer",
            content((ErrorResponse = "application/json"), (String = "text/plain"))),
        (status = 401, description = "`unauthorized`: no, invalid or expired token (dev mode: no `?user=`)", body = ErrorResponse),
        (status = 403, description = "`forbidden`: the `Origin` is not in `--allowed-origins`", body = ErrorResponse),
        (status = 429, description = "`rate_limited`: too many connection attempts or open connections per IP, or open connections per user", body = ErrorResponse),
        (status = 503, description = "`unavailable`: the node is shutting down; connect to another one", body = ErrorResponse),
    ),
)]
pub async fn upgrade(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    params: Result<Query<ConnectParams>, axum::extract::rejection::QueryRejection>,
    ws: WebSocketUpgrade,
) -> Response {
    if node.lifecycle.is_draining() {
        return ChatError::unavailable("this node is shutting down; connect to another one").into_response();
    }
    let refuse = |e: ChatError| {
        node.metrics.error(e.code);
        e.into_response()
    };
    if let Err(e) = node.auth.admit_origin(&headers) {
        return refuse(e);
    }
    let ip = node.auth.client_ip(peer, &headers);
    if let Err(e) = node.auth.admit_connection(ip) {
        return refuse(e);
    }
    let ip_slot = match node.auth.hold_ip_slot(ip) {
        Ok(slot) => slot,
        Err(e) => return refuse(e),
    };
    let Ok(Query(params)) = params else {
        return refuse(ChatError::bad_request("malformed query string"));
    };
    let identity = match node.auth.authenticate(&headers, &params) {
        Ok(id) => id,
        Err(e) => return refuse(e),
    };
    let slots = match node.auth.hold_user_slot(ip_slot, &identity.user) {
        Ok(slots) => slots,
        Err(e) => return refuse(e),
    };
    // A browser that sent its token as the subprotocol `bearer.<JWT>` also
    // offers `shardchat.v1`; selecting it completes its handshake without
    // echoing the token.
    let ws = ws.protocols([crate::auth::WS_PROTOCOL]);
    let max = node.config.max_frame_bytes;
    // Chat frames are small: modest per-connection buffers keep memory per
    // idle connection low (the library defaults are 128 KiB each way).
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(WS_BUFFER_BYTES)
        .write_buffer_size(WS_BUFFER_BYTES)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| async move {
            let _slots = slots;
            session::run(node, socket, identity).await
        })
}

/// Read and write buffer size of each client WebSocket.
const WS_BUFFER_BYTES: usize = 8 * 1024;
