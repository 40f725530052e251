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

use crate::dm::DmRequest;
use crate::error::{ChatError, ChatResult};
use crate::node::Node;
use crate::session::check_content;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemMessageBody {
    text: String,
    #[serde(default)]
    meta: Option<Map<String, Value>>,
    /// Idempotency key: a retry with the same one stores nothing.
    #[serde(default)]
    nonce: Option<String>,
}

#[derive(Serialize)]
pub struct SentBody {
    message_id: MessageId,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

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
