//! The HTTP surface: WebSocket upgrade, REST, health, metrics and the page.

pub mod openapi;
mod page;
mod rest;
mod users;
mod ws;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use shardchat_common::protocol::{ErrorBody, ErrorCode};

use crate::error::ChatError;
use crate::node::Node;

/// Every route. The API's routes come with their OpenAPI description (see
/// [`openapi`]); only the browser page and its script are undocumented.
pub fn router(node: Arc<Node>) -> Router {
    let (api, _doc) = openapi::documented().split_for_parts();
    api.route("/", get(page::index))
        .route("/sdk/shardchat.js", get(page::sdk))
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

/// The body of every REST error: `{"error":{"code":"...","message":"..."}}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorResponse {
    error: ErrorBody,
}

impl IntoResponse for ChatError {
    fn into_response(self) -> Response {
        (status_of(self.code), Json(ErrorResponse { error: self.body() })).into_response()
    }
}
