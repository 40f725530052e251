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

use utoipa::{IntoParams, ToSchema};

use super::ErrorResponse;
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

/// Query of `GET /v1/channels/{channel}/history`. Both are parsed by hand
/// (not by serde) so that a bad value gets a clear `bad_request`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// How many of the newest messages to return: default 50, at most 1000
    /// (a larger value is clamped). Empty means the default.
    #[param(value_type = Option<u32>, minimum = 0, example = 50)]
    limit: Option<String>,
    /// Only messages older than this id: page backwards by passing the
    /// oldest id of the previous page.
    #[param(value_type = Option<MessageId>)]
    before: Option<String>,
}

/// A page of a channel's history.
#[derive(Serialize, ToSchema)]
pub struct MessagesBody {
    /// Oldest first; the same objects and order as the WebSocket `history` op.
    messages: Vec<ChatMessage>,
}

/// The newest messages of a channel, oldest first.
///
/// Needs join access: without a token only channels whose `joinRoles`
/// admit everyone; with a JWT, its roles count. Costs one token of the
/// per-IP REST bucket.
#[utoipa::path(
    get,
    path = "/v1/channels/{channel}/history",
    operation_id = "channel_history",
    tag = "channels",
    params(("channel" = ChannelName, Path, description = "The channel's name"), HistoryQuery),
    security((), ("bearer_jwt" = [])),
    responses(
        (status = 200, description = "The page, oldest first", body = MessagesBody),
        (status = 400, description = "`bad_request`: invalid channel name, `limit` or `before`", body = ErrorResponse),
        (status = 401, description = "`unauthorized`: the token is invalid or expired", body = ErrorResponse),
        (status = 403, description = "`forbidden`: the channel's `joinRoles` do not admit the caller", body = ErrorResponse),
        (status = 404, description = "`not_found`: the channel is not declared and the node runs with `--dynamic-channels deny`", body = ErrorResponse),
        (status = 429, description = "`rate_limited`: the per-IP REST bucket (`--rest-rate`) is empty", body = ErrorResponse),
        (status = 503, description = "`unavailable`: storage or configuration not reachable yet; retry with backoff", body = ErrorResponse),
    ),
)]
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

/// The users in a channel.
#[derive(Serialize, ToSchema)]
pub struct MembersBody {
    /// User ids, sorted, wherever in the cluster they are connected.
    members: Vec<String>,
}

/// The users in a channel.
///
/// Needs join access, like history. Costs one token of the per-IP REST bucket.
#[utoipa::path(
    get,
    path = "/v1/channels/{channel}/members",
    operation_id = "channel_members",
    tag = "channels",
    params(("channel" = ChannelName, Path, description = "The channel's name")),
    security((), ("bearer_jwt" = [])),
    responses(
        (status = 200, description = "The members, sorted", body = MembersBody),
        (status = 400, description = "`bad_request`: invalid channel name", body = ErrorResponse),
        (status = 401, description = "`unauthorized`: the token is invalid or expired", body = ErrorResponse),
        (status = 403, description = "`forbidden`: the channel's `joinRoles` do not admit the caller", body = ErrorResponse),
        (status = 404, description = "`not_found`: the channel is not declared and the node runs with `--dynamic-channels deny`", body = ErrorResponse),
        (status = 429, description = "`rate_limited`: the per-IP REST bucket is empty", body = ErrorResponse),
        (status = 503, description = "`unavailable`: the cluster could not be asked in time; retry with backoff", body = ErrorResponse),
    ),
)]
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

/// One channel of the channel list.
#[derive(Serialize, ToSchema)]
pub struct ChannelSummary {
    name: ChannelName,
    /// Distinct users in the channel.
    members: usize,
    /// Messages in its retained history.
    messages: usize,
    /// Whether a ChatChannel (or `--channels` file) declares it; `false`
    /// for a channel created on first join.
    declared: bool,
}

/// The channel list.
#[derive(Serialize, ToSchema)]
pub struct ChannelsBody {
    /// Sorted by name.
    channels: Vec<ChannelSummary>,
}

/// Channels the caller may read (join), with member and message counts.
///
/// Channels restricted to roles the caller lacks are left out entirely.
/// Costs ten tokens of the per-IP REST bucket.
#[utoipa::path(
    get,
    path = "/v1/channels",
    operation_id = "list_channels",
    tag = "channels",
    security((), ("bearer_jwt" = [])),
    responses(
        (status = 200, description = "Declared and active channels the caller may join", body = ChannelsBody),
        (status = 401, description = "`unauthorized`: the token is invalid or expired", body = ErrorResponse),
        (status = 429, description = "`rate_limited`: the per-IP REST bucket is empty", body = ErrorResponse),
        (status = 503, description = "`unavailable`: the cluster or storage could not be asked in time", body = ErrorResponse),
    ),
)]
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

/// A server-side publish. Unknown fields are refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"text": "server restart in 5 minutes", "meta": {"kind": "notice"}, "nonce": "restart-notice-1"}))]
pub struct PublishBody {
    /// 1-2,000 characters; the channel's moderation applies.
    text: String,
    /// Any JSON object, at most 1 KiB and nesting depth 8.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    meta: Option<Map<String, Value>>,
    /// Sender shown to clients (a user id); defaults to "server".
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,64}$", example = "server")]
    from: Option<String>,
    /// Idempotency key (as on the WebSocket): a retry with the same one
    /// stores nothing and answers with the first message's id.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    nonce: Option<String>,
}

/// The id of a stored (or, with a repeated nonce, earlier) message.
#[derive(Serialize, ToSchema)]
pub struct PublishedBody {
    message_id: MessageId,
    /// Present (and `true`) only when the `nonce` was seen before and
    /// nothing new was stored.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    #[schema(required = false)]
    duplicate: bool,
}

/// Publishes a message to a channel from the server side (e.g. a game server).
///
/// Needs the `--admin-token`, or a JWT with the role `admin`. The message
/// is delivered and stored like any other; `from` defaults to `server`.
#[utoipa::path(
    post,
    path = "/v1/channels/{channel}/messages",
    operation_id = "publish_to_channel",
    tag = "publishing",
    params(("channel" = ChannelName, Path, description = "The channel's name")),
    request_body = PublishBody,
    security(("admin_token" = []), ("bearer_jwt" = [])),
    responses(
        (status = 201, description = "Stored and delivered", body = PublishedBody),
        (status = 200, description = "A repeated `nonce`: nothing new was stored; the first message's id, `duplicate: true`", body = PublishedBody),
        (status = 400, description = "`bad_request`: invalid channel name, malformed or unknown field in the body, empty text, bad `from` or `nonce`, `meta` not an object or too deep", body = ErrorResponse),
        (status = 401, description = "`unauthorized`: no token, or neither the admin token nor a valid JWT", body = ErrorResponse),
        (status = 403, description = "`forbidden`: a valid JWT without the role `admin`", body = ErrorResponse),
        (status = 404, description = "`not_found`: the channel is not declared and the node runs with `--dynamic-channels deny`", body = ErrorResponse),
        (status = 413, description = "`too_large`: text over 2,000 characters or `meta` over 1 KiB", body = ErrorResponse),
        (status = 422, description = "`filtered`: the channel's moderation mode is `reject` and the text contains a blocked word", body = ErrorResponse),
        (status = 429, description = "`rate_limited`: the channel's own rate limit", body = ErrorResponse),
        (status = 503, description = "`unavailable`: the channel's owner or storage could not be reached; not stored, retry", body = ErrorResponse),
        (status = 504, description = "`timeout`: the outcome is unknown; retry with the same `nonce`", body = ErrorResponse),
    ),
)]
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

/// Liveness: answers `ok` while the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain", example = "ok")),
)]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness for traffic.
///
/// 200 `ready` (in dev mode with a loud note that clients are not
/// authenticated); 503 with the reasons while starting, while Redis or the
/// channel configuration is not reachable, and while draining.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain", example = "ready"),
        (status = 503, description = "Not ready, with the reasons (`draining`, `not ready` and one `component: problem` line each, or `not ready: loading channel configuration`)", body = String, content_type = "text/plain"),
    ),
)]
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

/// Prometheus metrics (see docs/operations.md for the list).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain; version=0.0.4")),
)]
pub async fn metrics(State(node): State<Arc<Node>>) -> Response {
    if node.config.redis_url.is_none() {
        // Embedded: this node owns every channel with members (cheap to count).
        if let Ok(counts) = node.cluster.member_counts().await {
            node.metrics.channels_owned.set(counts.len() as i64);
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], node.metrics.render()).into_response()
}
