//! `POST /v1/users/{user}/messages`: a system message to one player,
//! delivered like a direct message (to every connection, kept for offline users).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use shardchat_common::MessageId;
use shardchat_common::protocol::Nonce;

use utoipa::ToSchema;

use super::ErrorResponse;
use crate::dm::DmRequest;
use crate::error::{ChatError, ChatResult};
use crate::node::Node;
use crate::session::check_content;

/// A system message to one player. Unknown fields are refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"text": "your guild war starts in 10 minutes", "nonce": "war-7-reminder"}))]
pub struct SystemMessageBody {
    /// 1-2,000 characters.
    text: String,
    /// Any JSON object, at most 1 KiB and nesting depth 8.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    meta: Option<Map<String, Value>>,
    /// Idempotency key: a retry with the same one stores nothing.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    nonce: Option<String>,
}

/// The id of the stored (or, with a repeated nonce, earlier) direct message.
#[derive(Serialize, ToSchema)]
pub struct SentBody {
    message_id: MessageId,
    /// Present (and `true`) only when the `nonce` was seen before and
    /// nothing new was stored.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    #[schema(required = false)]
    duplicate: bool,
}

/// Sends one player a message from the system sender (`system`, `--system-sender`).
///
/// Delivered and kept like a direct message: pushed to every connection of
/// the user, kept in their mailbox when offline. Needs the `--admin-token`,
/// or a JWT with the role `admin`.
#[utoipa::path(
    post,
    path = "/v1/users/{user}/messages",
    operation_id = "send_system_message",
    tag = "publishing",
    params(("user" = String, Path, description = "The recipient's user id", pattern = "^[A-Za-z0-9._:@-]{1,64}$")),
    request_body = SystemMessageBody,
    security(("admin_token" = []), ("bearer_jwt" = [])),
    responses(
        (status = 201, description = "Stored and delivered", body = SentBody),
        (status = 200, description = "A repeated `nonce`: nothing new was stored; the first message's id, `duplicate: true`", body = SentBody),
        (status = 400, description = "`bad_request`: invalid user id (or the system sender itself), malformed or unknown field in the body, empty text, bad `nonce`, `meta` not an object or too deep", body = ErrorResponse),
        (status = 401, description = "`unauthorized`: no token, or neither the admin token nor a valid JWT", body = ErrorResponse),
        (status = 403, description = "`forbidden`: a valid JWT without the role `admin`", body = ErrorResponse),
        (status = 413, description = "`too_large`: text over 2,000 characters or `meta` over 1 KiB", body = ErrorResponse),
        (status = 422, description = "`filtered`: the node's moderation rejects the text", body = ErrorResponse),
        (status = 429, description = "`rate_limited`: the recipient gets more than `--dm-recipient-rate` messages per second", body = ErrorResponse),
        (status = 503, description = "`unavailable`: the conversation's owner or storage could not be reached; not stored, retry", body = ErrorResponse),
        (status = 504, description = "`timeout`: the outcome is unknown; retry with the same `nonce`", body = ErrorResponse),
    ),
)]
#[tracing::instrument(skip(node, headers, body))]
pub async fn send(
    State(node): State<Arc<Node>>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Result<Json<SystemMessageBody>, axum::extract::rejection::JsonRejection>,
) -> ChatResult<Response> {
    node.auth.authorize_admin(&headers)?;
    crate::session::identity::validate_user_id(&user)?;
    let Json(body) = body.map_err(|e| ChatError::bad_request(e.body_text()))?;
    check_content(&body.text, body.meta.as_ref())?;
    let nonce = body
        .nonce
        .as_deref()
        .map(Nonce::new)
        .transpose()
        .map_err(|e| ChatError::bad_request(e.to_string()))?;
    let from = node.conversations.system_sender.clone();
    node.conversations.check_addressing(&from, &user, true)?;
    let req = DmRequest { from, to: user, text: body.text, meta: body.meta, nonce, system: true };
    let sent = node.cluster.dm(req).await?;
    let status = if sent.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(SentBody { message_id: sent.id, duplicate: sent.duplicate })).into_response())
}
