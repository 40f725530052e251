//! REST endpoints: history, members, channel list, server-side publish,
//! health and metrics.
//!
//! Reads (history, members, channel list) follow the WebSocket's access
//! rules: without a token the caller has no roles and sees only channels
//! without `joinRoles`; with `Authorization: Bearer <JWT>` the token's roles
//! count, exactly as for `join`. A bad token is 401, never "anonymous".
//! Every read takes tokens from a per-IP bucket (`--rest-rate`), the
//! channel list ten of them (it reads every active channel).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use shardchat_common::protocol::{ChatMessage, Nonce};
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

/// The roles of a REST reader, after its per-IP admission (`cost` tokens).
fn reader_roles(node: &Node, peer: SocketAddr, headers: &HeaderMap, cost: u32) -> ChatResult<Vec<String>> {
    let admitted = node.auth.admit_rest(node.auth.client_ip(peer, headers), cost);
    if let Err(e) = &admitted {
        node.metrics.error(e.code);
    }
    admitted?;
    Ok(node.auth.rest_identity(headers)?.map(|id| id.roles).unwrap_or_default())
}

/// Resolves a channel for a REST read by a caller with `roles`: it must
/// exist (or be creatable) and its `joinRoles` must admit them.
fn readable_channel(node: &Node, raw: &str, roles: &[String]) -> ChatResult<ChannelName> {
    let channel = channel_name(raw)?;
    let config = node.directory.resolve(&channel)?;
    if !config.access.may_join(roles) {
        return Err(ChatError::forbidden(format!(
            "{channel} is restricted to roles; send `Authorization: Bearer <JWT>` with a token whose roles may join it"
        )));
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

#[tracing::instrument(skip(node, q, peer, headers))]
pub async fn history(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ChatResult<Json<MessagesBody>> {
    let roles = reader_roles(&node, peer, &headers, 1)?;
    let channel = readable_channel(&node, &channel, &roles)?;
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
    Ok(Json(MessagesBody { messages }))
}

#[derive(Serialize)]
pub struct MembersBody {
    members: Vec<String>,
}

#[tracing::instrument(skip(node, peer, headers))]
pub async fn members(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(channel): Path<String>,
) -> ChatResult<Json<MembersBody>> {
    let roles = reader_roles(&node, peer, &headers, 1)?;
    let channel = readable_channel(&node, &channel, &roles)?;
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

/// Channels the caller may read (join), with member and message counts.
/// Channels restricted to roles the caller lacks are left out entirely.
#[tracing::instrument(skip(node, peer, headers))]
pub async fn list_channels(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> ChatResult<Json<ChannelsBody>> {
    let roles = reader_roles(&node, peer, &headers, crate::auth::CHANNEL_LIST_COST)?;
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
    map.retain(|name, _| node.directory.resolve(name).is_ok_and(|c| c.access.may_join(&roles)));
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
    /// Idempotency key (as on the WebSocket): a retry with the same one
    /// stores nothing and answers with the first message's id.
    #[serde(default)]
    nonce: Option<String>,
}

#[derive(Serialize)]
pub struct PublishedBody {
    message_id: MessageId,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
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
    let nonce = body
        .nonce
        .as_deref()
        .map(Nonce::new)
        .transpose()
        .map_err(|e| ChatError::bad_request(e.to_string()))?;
    let req =
        PublishRequest { channel, from: Arc::from(from.as_str()), text: body.text, meta: body.meta, nonce };
    let p = node.cluster.publish(req).await?;
    let status = if p.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(PublishedBody { message_id: p.id, duplicate: p.duplicate })).into_response())
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.lifecycle.is_ready() && !node.directory.is_loaded() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: loading channel configuration").into_response();
    }
    if node.lifecycle.is_ready() {
        if node.auth.is_dev_mode() {
            // Loud where operators look: probes, dashboards, curl.
            return "ready (DEV MODE: clients are not authenticated; ?user= is trusted)".into_response();
        }
        "ready".into_response()
    } else if node.lifecycle.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        let why: Vec<String> =
            node.lifecycle.problems().into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready\n{}\n", why.join("\n"))).into_response()
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
