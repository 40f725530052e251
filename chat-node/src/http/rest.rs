//! REST endpoints: history, members, channel list, server-side publish,
//! health and metrics.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use shardchat_common::protocol::ChatMessage;
use shardchat_common::{ChannelName, MessageId};

use crate::error::{ChatError, ChatResult};
use crate::node::Node;
use crate::owner::PublishRequest;
use crate::session::{check_content, clamp_limit};

/// User id recorded as the sender of server-side publishes.
pub const SERVER_SENDER: &str = "server";

fn channel_name(raw: &str) -> ChatResult<ChannelName> {
    ChannelName::new(raw).map_err(|e| ChatError::bad_request(e.to_string()))
}

/// Resolves a channel for anonymous REST reads: it must exist (or be
/// creatable) and must not be restricted to roles.
fn public_channel(node: &Node, raw: &str) -> ChatResult<ChannelName> {
    let channel = channel_name(raw)?;
    let config = node.directory.resolve(&channel)?;
    if !config.access.may_join(&[]) {
        return Err(ChatError::forbidden(format!("{channel} is restricted to roles; use the WebSocket API")));
    }
    Ok(channel)
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    limit: Option<String>,
    before: Option<String>,
}

#[derive(Serialize)]
pub struct MessagesBody {
    messages: Vec<ChatMessage>,
}

#[tracing::instrument(skip(node, q))]
pub async fn history(
    State(node): State<Arc<Node>>,
    Path(channel): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ChatResult<Json<MessagesBody>> {
    let channel = public_channel(&node, &channel)?;
    let limit = match q.limit.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            s.parse::<u32>().map_err(|_| ChatError::bad_request("`limit` must be a non-negative integer"))?,
        ),
    };
    let before = match q.before.as_deref() {
        None | Some("") => None,
        Some(s) => Some(s.parse::<MessageId>().map_err(|e| ChatError::bad_request(e.to_string()))?),
    };
    let messages = node.history.latest(&channel, clamp_limit(limit), before).await?;
    Ok(Json(MessagesBody { messages: messages.iter().map(|m| m.message.clone()).collect() }))
}

#[derive(Serialize)]
pub struct MembersBody {
    members: Vec<String>,
}

#[tracing::instrument(skip(node))]
pub async fn members(
    State(node): State<Arc<Node>>,
    Path(channel): Path<String>,
) -> ChatResult<Json<MembersBody>> {
    let channel = public_channel(&node, &channel)?;
    Ok(Json(MembersBody { members: node.cluster.members(&channel).await? }))
}

#[derive(Serialize)]
pub struct ChannelSummary {
    name: ChannelName,
    members: usize,
    messages: usize,
    declared: bool,
}

#[derive(Serialize)]
pub struct ChannelsBody {
    channels: Vec<ChannelSummary>,
}

#[tracing::instrument(skip(node))]
pub async fn list_channels(State(node): State<Arc<Node>>) -> ChatResult<Json<ChannelsBody>> {
    let mut map = BTreeMap::new();
    for name in node.directory.declared_names() {
        summary(&node, &mut map, name);
    }
    for (name, members) in node.cluster.member_counts().await? {
        summary(&node, &mut map, name).members = members;
    }
    for (name, messages) in node.history.stats().await? {
        summary(&node, &mut map, name).messages = messages;
    }
    Ok(Json(ChannelsBody { channels: map.into_values().collect() }))
}

fn summary<'m>(
    node: &Node,
    map: &'m mut BTreeMap<ChannelName, ChannelSummary>,
    name: ChannelName,
) -> &'m mut ChannelSummary {
    map.entry(name.clone()).or_insert_with(|| ChannelSummary {
        declared: node.directory.is_declared(&name),
        name,
        members: 0,
        messages: 0,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    text: String,
    #[serde(default)]
    meta: Option<Map<String, Value>>,
    /// Sender shown to clients; defaults to "server".
    #[serde(default)]
    from: Option<String>,
}

#[derive(Serialize)]
pub struct PublishedBody {
    message_id: MessageId,
}

#[tracing::instrument(skip(node, headers, body))]
pub async fn publish(
    State(node): State<Arc<Node>>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: Result<Json<PublishBody>, axum::extract::rejection::JsonRejection>,
) -> ChatResult<Response> {
    // `--admin-token`, or a JWT with the admin role (see crate::auth).
    node.auth.authorize_admin(&headers)?;
    let channel = channel_name(&channel)?;
    let Json(body) = body.map_err(|e| ChatError::bad_request(e.body_text()))?;
    node.directory.resolve(&channel)?;
    check_content(&body.text, body.meta.as_ref())?;
    let from = body.from.unwrap_or_else(|| SERVER_SENDER.to_string());
    crate::session::identity::validate_user_id(&from)?;
    let req = PublishRequest { channel, from: Arc::from(from.as_str()), text: body.text, meta: body.meta };
    let id = node.cluster.publish(req).await?;
    Ok((StatusCode::CREATED, Json(PublishedBody { message_id: id })).into_response())
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.lifecycle.is_ready() {
        if node.auth.is_dev_mode() {
            // Loud where operators look: probes, dashboards, curl.
            return "ready (DEV MODE: clients are not authenticated; ?user= is trusted)".into_response();
        }
        "ready".into_response()
    } else if node.lifecycle.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

pub async fn metrics(State(node): State<Arc<Node>>) -> Response {
    if node.config.redis_url.is_none() {
        // Embedded: this node owns every channel with members (cheap to count).
        if let Ok(counts) = node.cluster.member_counts().await {
            node.metrics.channels_owned.set(counts.len() as i64);
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], node.metrics.render()).into_response()
}
