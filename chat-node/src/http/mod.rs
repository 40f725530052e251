//! The HTTP surface: WebSocket upgrade, REST, health, metrics and the page.

mod page;
mod rest;
mod users;
mod ws;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use shardchat_common::protocol::{ErrorBody, ErrorCode};

use crate::error::ChatError;
use crate::node::Node;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/sdk/shardchat.js", get(page::sdk))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/channels", get(rest::list_channels))
        .route("/v1/channels/{channel}/history", get(rest::history))
        .route("/v1/channels/{channel}/members", get(rest::members))
        .route("/v1/channels/{channel}/messages", post(rest::publish))
        .route("/v1/users/{user}/messages", post(users::send))
        .route("/healthz", get(rest::healthz))
        .route("/readyz", get(rest::readyz))
        .route("/metrics", get(rest::metrics))
        .fallback(|| async { ChatError::not_found("no such endpoint") })
        .with_state(node)
}

/// HTTP status for each protocol error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::NotJoined | ErrorCode::ChannelFull => StatusCode::CONFLICT,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Filtered => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
    }
}

#[derive(serde::Serialize)]
struct ErrorResponse {
    error: ErrorBody,
}

impl IntoResponse for ChatError {
    fn into_response(self) -> Response {
        (status_of(self.code), Json(ErrorResponse { error: self.body() })).into_response()
    }
}
