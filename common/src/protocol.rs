//! Client protocol v1: JSON text frames over `GET /v1/ws`.
//!
//! Requests are parsed in two steps so that a malformed request still gets a
//! reply correlated by its `id`: first the frame must be a JSON object, then
//! `id` is taken out, then the `op` and its fields are checked. Unknown
//! fields are ignored (forward compatibility); missing or mistyped ones are
//! `bad_request`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{ChannelName, MessageId};

/// Longest string `id` a client may use to correlate replies.
pub const MAX_REQUEST_ID_LEN: usize = 64;
/// Longest message text, in characters (Unicode scalar values).
pub const MAX_TEXT_CHARS: usize = 2_000;
/// Largest `meta` object, in bytes of compact JSON.
pub const MAX_META_BYTES: usize = 1_024;
/// Deepest nesting allowed inside `meta`.
pub const MAX_META_DEPTH: usize = 8;
/// `history` without `limit` returns this many messages.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;
/// `history` never returns more than this many messages.
pub const MAX_HISTORY_LIMIT: usize = 1_000;

/// Stable error codes of protocol v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    NotJoined,
    RateLimited,
    TooLarge,
    ChannelFull,
    Filtered,
    Unavailable,
    /// The outcome is unknown (the node could not find out in time whether
    /// the message was stored): retry with the same `nonce`.
    Timeout,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::NotJoined,
        ErrorCode::RateLimited,
        ErrorCode::TooLarge,
        ErrorCode::ChannelFull,
        ErrorCode::Filtered,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::ChannelFull => "channel_full",
            ErrorCode::Filtered => "filtered",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
        }
    }
}

/// `{"code": "...", "message": "..."}` in error replies, pushes and REST bodies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Stable; branch on it.
    pub code: ErrorCode,
    /// For humans; may change between versions.
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

/// A client request, after validation of its shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Join {
        channel: ChannelName,
        since: Option<MessageId>,
    },
    Leave {
        channel: ChannelName,
    },
    Publish {
        channel: ChannelName,
        text: String,
        meta: Option<Map<String, Value>>,
        nonce: Option<Nonce>,
    },
    History {
        channel: ChannelName,
        limit: Option<u32>,
        before: Option<MessageId>,
    },
    Ping,
    /// A direct message to one user.
    Dm {
        to: String,
        text: String,
        meta: Option<Map<String, Value>>,
        nonce: Option<Nonce>,
    },
    /// The newest messages of the conversation with `with`, oldest first.
    DmHistory {
        with: String,
        limit: Option<u32>,
        before: Option<MessageId>,
    },
    /// Every direct message after the mailbox cursor `since`, in order.
    DmSync {
        since: Option<MessageId>,
    },
    /// Unread counts per conversation.
    DmUnread,
    /// Marks the conversation with `with` read up to message `up_to`.
    DmRead {
        with: String,
        up_to: MessageId,
    },
    /// Who may send this user direct messages.
    DmSettings {
        allow: DmAllow,
    },
}

/// Who may send a user direct messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DmAllow {
    /// Anyone.
    #[default]
    All,
    /// Only users this user has written to (system messages always arrive).
    None,
}

impl Request {
    pub fn op(&self) -> &'static str {
        match self {
            Request::Join { .. } => "join",
            Request::Leave { .. } => "leave",
            Request::Publish { .. } => "publish",
            Request::History { .. } => "history",
            Request::Ping => "ping",
            Request::Dm { .. } => "dm",
            Request::DmHistory { .. } => "dm_history",
            Request::DmSync { .. } => "dm_sync",
            Request::DmUnread => "dm_unread",
            Request::DmRead { .. } => "dm_read",
            Request::DmSettings { .. } => "dm_settings",
        }
    }
}

/// A request that could not be understood, with the `id` to answer it by
/// (when the frame had a usable one).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub id: Option<Value>,
    pub error: ErrorBody,
}

/// Parses one text frame into `(id, request)`.
pub fn parse_request(text: &str) -> Result<(Option<Value>, Request), Rejected> {
    let value: Value = serde_json::from_str(text).map_err(|e| Rejected {
        id: None,
        error: ErrorBody::new(ErrorCode::BadRequest, format!("malformed JSON: {e}")),
    })?;
    let Value::Object(mut obj) = value else {
        return Err(Rejected {
            id: None,
            error: ErrorBody::new(ErrorCode::BadRequest, "a request must be a JSON object"),
        });
    };
    let id = match obj.remove("id") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Number(_)) => Some(v),
        Some(Value::String(s)) if s.len() <= MAX_REQUEST_ID_LEN => Some(Value::String(s)),
        Some(_) => {
            return Err(Rejected {
                id: None,
                error: ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!("`id` must be a number or a string of at most {MAX_REQUEST_ID_LEN} bytes"),
                ),
            });
        }
    };
    parse_op(&mut obj)
        .map(|req| (id.clone(), req))
        .map_err(|message| Rejected { id, error: ErrorBody::new(ErrorCode::BadRequest, message) })
}

fn parse_op(obj: &mut Map<String, Value>) -> Result<Request, String> {
    let op = match obj.get("op") {
        Some(Value::String(op)) => op.clone(),
        Some(_) => return Err("`op` must be a string".into()),
        None => return Err("missing field `op`".into()),
    };
    match op.as_str() {
        "join" => Ok(Request::Join { channel: channel(obj)?, since: opt_id(obj, "since")? }),
        "leave" => Ok(Request::Leave { channel: channel(obj)? }),
        "publish" => Ok(Request::Publish {
            channel: channel(obj)?,
            text: text(obj)?,
            meta: meta(obj)?,
            nonce: nonce(obj)?,
        }),
        "history" => Ok(Request::History {
            channel: channel(obj)?,
            limit: limit(obj)?,
            before: opt_id(obj, "before")?,
        }),
        "ping" => Ok(Request::Ping),
        "dm" => {
            Ok(Request::Dm { to: user(obj, "to")?, text: text(obj)?, meta: meta(obj)?, nonce: nonce(obj)? })
        }
        "dm_history" => Ok(Request::DmHistory {
            with: user(obj, "with")?,
            limit: limit(obj)?,
            before: opt_id(obj, "before")?,
        }),
        "dm_sync" => Ok(Request::DmSync { since: opt_id(obj, "since")? }),
        "dm_unread" => Ok(Request::DmUnread),
        "dm_read" => Ok(Request::DmRead {
            with: user(obj, "with")?,
            up_to: opt_id(obj, "up_to")?.ok_or("missing field `up_to`")?,
        }),
        "dm_settings" => match obj.get("allow") {
            Some(Value::String(a)) if a == "all" => Ok(Request::DmSettings { allow: DmAllow::All }),
            Some(Value::String(a)) if a == "none" => Ok(Request::DmSettings { allow: DmAllow::None }),
            Some(_) => Err("`allow` must be \"all\" or \"none\"".into()),
            None => Err("missing field `allow`".into()),
        },
        other => Err(format!(
            "unknown op {:?}; expected join, leave, publish, history, ping, dm, dm_history, dm_sync, dm_unread, dm_read or dm_settings",
            other.chars().take(32).collect::<String>()
        )),
    }
}

fn text(obj: &mut Map<String, Value>) -> Result<String, String> {
    match obj.remove("text") {
        Some(Value::String(t)) => Ok(t),
        Some(_) => Err("`text` must be a string".into()),
        None => Err("missing field `text`".into()),
    }
}

fn meta(obj: &mut Map<String, Value>) -> Result<Option<Map<String, Value>>, String> {
    match obj.remove("meta") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err("`meta` must be a JSON object".into()),
    }
}

fn nonce(obj: &Map<String, Value>) -> Result<Option<Nonce>, String> {
    match obj.get("nonce") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(n)) => Nonce::new(n).map(Some).map_err(|e| e.to_string()),
        Some(_) => Err("`nonce` must be a string".into()),
    }
}

fn limit(obj: &Map<String, Value>) -> Result<Option<u32>, String> {
    match obj.get("limit") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) => Ok(Some(u32::try_from(n).unwrap_or(u32::MAX))),
            None => Err("`limit` must be a non-negative integer".into()),
        },
    }
}

fn user(obj: &Map<String, Value>, field: &str) -> Result<String, String> {
    match obj.get(field) {
        Some(Value::String(u)) if crate::user::is_valid_user_id(u) => Ok(u.clone()),
        Some(Value::String(_)) => {
            Err(format!("`{field}` is not a valid user id: use 1-64 characters of A-Z a-z 0-9 - _ . : @"))
        }
        Some(_) => Err(format!("`{field}` must be a user id string")),
        None => Err(format!("missing field `{field}`")),
    }
}

fn channel(obj: &Map<String, Value>) -> Result<ChannelName, String> {
    match obj.get("channel") {
        Some(Value::String(s)) => ChannelName::new(s).map_err(|e| e.to_string()),
        Some(_) => Err("`channel` must be a string".into()),
        None => Err("missing field `channel`".into()),
    }
}

fn opt_id(obj: &Map<String, Value>, field: &str) -> Result<Option<MessageId>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|e| format!("`{field}`: {e}")),
        Some(_) => Err(format!("`{field}` must be a message id string")),
    }
}

/// A publish's idempotency key: 1–64 characters of `A–Z a–z 0–9 - _ . :`,
/// chosen by the client. A publish repeating a (channel, sender, nonce) of
/// one stored within the dedup window stores nothing and is answered with
/// the first one's id and `"duplicate": true`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nonce(String);

/// Longest nonce accepted.
pub const MAX_NONCE_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`nonce` must be 1-{MAX_NONCE_LEN} characters of A-Z a-z 0-9 - _ . :")]
pub struct InvalidNonce;

impl Nonce {
    pub fn new(s: &str) -> Result<Nonce, InvalidNonce> {
        let ok = !s.is_empty()
            && s.len() <= MAX_NONCE_LEN
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if ok { Ok(Nonce(s.to_string())) } else { Err(InvalidNonce) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A chat message as clients see it (push, history item, REST item).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChatMessage {
    pub channel: ChannelName,
    pub id: MessageId,
    /// The sender's user id (`server` or another chosen sender for server-side publishes).
    pub from: String,
    /// At most 2,000 characters, after moderation (masked words are `*`s).
    pub text: String,
    /// Milliseconds since the Unix epoch when the owner accepted it.
    pub ts: u64,
    /// The sender's JSON object, as published (at most 1 KiB, depth 8);
    /// absent when there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object, required = false))]
    pub meta: Option<Map<String, Value>>,
}

/// A direct message as clients see it (push, `dm_history` / `dm_sync` item).
/// Field order is the wire order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectMessage {
    /// Strictly increasing within the conversation (the pair of users).
    pub id: MessageId,
    /// Position in the receiving user's mailbox (strictly increasing per
    /// user, across conversations): `dm_sync` resumes after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<MessageId>,
    pub from: String,
    pub to: String,
    pub text: String,
    /// Milliseconds since the Unix epoch when the conversation's owner accepted it.
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Map<String, Value>>,
}

/// The messages of a `history`, `dm_history` or `dm_sync` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageList {
    Channel(Vec<ChatMessage>),
    Direct(Vec<DirectMessage>),
}

impl From<Vec<ChatMessage>> for MessageList {
    fn from(v: Vec<ChatMessage>) -> Self {
        MessageList::Channel(v)
    }
}

impl From<Vec<DirectMessage>> for MessageList {
    fn from(v: Vec<DirectMessage>) -> Self {
        MessageList::Direct(v)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceEvent {
    Join,
    Leave,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub channel: ChannelName,
    pub event: PresenceEvent,
    pub user: String,
}

/// The answer to a request that carried an `id`. Only the fields that
/// belong to the op are present.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Reply {
    pub id: Value,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// publish: the id the owner assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
    /// publish with a `nonce` seen before: nothing new was stored;
    /// `message_id` is the first publish's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    /// join with `since`: whether every message after `since` was still retained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// join: distinct users in the channel after joining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<usize>,
    /// history, dm_history, dm_sync: oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<MessageList>,
    /// dm_sync: the mailbox cursor to resume after next time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<MessageId>,
    /// dm_unread: unread direct messages per conversation (by the other user's id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread: Option<std::collections::BTreeMap<String, u64>>,
    /// ping: server time in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    /// history: `true` when older messages of the page were left out to keep
    /// the reply within the connection's byte budget; page on with `before`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
}

impl Reply {
    pub fn ok(id: Value) -> Self {
        Self { id, ok: true, ..Self::default() }
    }

    pub fn error(id: Value, error: ErrorBody) -> Self {
        Self { id, ok: false, error: Some(error), ..Self::default() }
    }
}

/// Everything the server sends, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerFrame {
    Reply(Reply),
    Message(ChatMessage),
    Presence(Presence),
    /// An error about a frame that had no `id` to reply to.
    Error {
        error: ErrorBody,
    },
    /// The channel was closed (e.g. deleted by its operator): the
    /// connection is no longer a member and gets nothing more from it.
    Closed {
        channel: ChannelName,
        reason: String,
    },
    /// The node cannot prove that this connection received every message
    /// of the channel since the last one it got (e.g. Redis lost data): the
    /// connection stays a member, live messages continue, and the client
    /// should reload history (or re-join with `since`).
    Gap {
        channel: ChannelName,
        reason: String,
    },
    /// A direct message to or from this connection's user.
    Dm(DirectMessage),
    /// Like `gap`, for direct messages: the mailbox may be missing messages
    /// (Redis lost data); `dm_sync` says what is still there.
    DmGap {
        reason: String,
    },
}

/// WebSocket close codes the server uses.
pub mod close_code {
    /// Server shutting down or draining: reconnect (to any node) and recover with `since`.
    pub const SERVICE_RESTART: u16 = 1012;
    /// Text frame that is not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Flooding past the rate limits.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// Frame larger than `--max-frame-bytes`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Unexpected server error.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// No frame and no pong for `--idle-timeout`.
    pub const IDLE_TIMEOUT: u16 = 4008;
    /// The client read too slowly and its outbound queue filled up.
    pub const SLOW_CONSUMER: u16 = 4009;
    /// Token expired or was revoked mid-session.
    pub const UNAUTHORIZED: u16 = 4001;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<(Option<Value>, Request), Rejected> {
        parse_request(&v.to_string())
    }

    #[test]
    fn parses_every_op() {
        let (id, r) = parse(json!({"op":"join","id":1,"channel":"town-137","since":"5-1"})).unwrap();
        assert_eq!(id, Some(json!(1)));
        assert_eq!(
            r,
            Request::Join {
                channel: ChannelName::new("town-137").unwrap(),
                since: Some(MessageId::new(5, 1))
            }
        );
        assert!(matches!(parse(json!({"op":"leave","channel":"a"})).unwrap().1, Request::Leave { .. }));
        let (_, r) =
            parse(json!({"op":"publish","id":"x","channel":"a","text":"hi","meta":{"k":1}})).unwrap();
        assert!(matches!(r, Request::Publish { meta: Some(_), nonce: None, .. }));
        let (_, r) = parse(json!({"op":"publish","channel":"a","text":"hi","nonce":"m-17:a"})).unwrap();
        assert!(matches!(r, Request::Publish { nonce: Some(n), .. } if n.as_str() == "m-17:a"));
        for bad in [json!(""), json!("a b"), json!("x".repeat(65)), json!(5), json!("a|b")] {
            let e = parse(json!({"op":"publish","id":1,"channel":"a","text":"hi","nonce":bad})).unwrap_err();
            assert_eq!(e.error.code, ErrorCode::BadRequest);
            assert_eq!(e.id, Some(json!(1)));
        }
        let (_, r) = parse(json!({"op":"history","channel":"a","limit":5,"before":"9-0"})).unwrap();
        assert_eq!(
            r,
            Request::History {
                channel: ChannelName::new("a").unwrap(),
                limit: Some(5),
                before: Some(MessageId::new(9, 0))
            }
        );
        assert_eq!(parse(json!({"op":"ping"})).unwrap().1, Request::Ping);
    }

    #[test]
    fn parses_the_direct_message_ops() {
        let (_, r) =
            parse(json!({"op":"dm","id":1,"to":"user-7","text":"psst","meta":{"k":1},"nonce":"n1"})).unwrap();
        assert!(matches!(r, Request::Dm { ref to, meta: Some(_), nonce: Some(_), .. } if to == "user-7"));
        let (_, r) = parse(json!({"op":"dm_history","with":"user-7","limit":5,"before":"9-0"})).unwrap();
        assert_eq!(
            r,
            Request::DmHistory { with: "user-7".into(), limit: Some(5), before: Some(MessageId::new(9, 0)) }
        );
        assert_eq!(parse(json!({"op":"dm_sync"})).unwrap().1, Request::DmSync { since: None });
        assert_eq!(parse(json!({"op":"dm_unread"})).unwrap().1, Request::DmUnread);
        let (_, r) = parse(json!({"op":"dm_read","with":"a","up_to":"3-1"})).unwrap();
        assert_eq!(r, Request::DmRead { with: "a".into(), up_to: MessageId::new(3, 1) });
        let (_, r) = parse(json!({"op":"dm_settings","allow":"none"})).unwrap();
        assert_eq!(r, Request::DmSettings { allow: DmAllow::None });
        for bad in [
            json!({"op":"dm","to":"a b","text":"x"}),
            json!({"op":"dm","to":"a"}),
            json!({"op":"dm","text":"x"}),
            json!({"op":"dm_read","with":"a"}),
            json!({"op":"dm_settings","allow":"friends"}),
            json!({"op":"dm_history","with":7}),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
        let push = ServerFrame::Dm(DirectMessage {
            id: MessageId::new(5, 0),
            cursor: Some(MessageId::new(6, 0)),
            from: "a".into(),
            to: "b".into(),
            text: "hi".into(),
            ts: 5,
            meta: None,
        });
        assert_eq!(
            serde_json::to_string(&push).unwrap(),
            r#"{"op":"dm","id":"5-0","cursor":"6-0","from":"a","to":"b","text":"hi","ts":5}"#
        );
    }

    #[test]
    fn malformed_requests_keep_their_id_when_possible() {
        let e = parse(json!({"op":"publish","id":7,"channel":"bad name","text":"x"})).unwrap_err();
        assert_eq!(e.id, Some(json!(7)));
        assert_eq!(e.error.code, ErrorCode::BadRequest);
        let e = parse(json!({"op":"fly","id":"a"})).unwrap_err();
        assert_eq!(e.id, Some(json!("a")));
        let e = parse_request("{not json").unwrap_err();
        assert_eq!(e.id, None);
        let e = parse_request("[1,2]").unwrap_err();
        assert_eq!(e.id, None);
        let e = parse(json!({"op":"ping","id":{"nested":true}})).unwrap_err();
        assert_eq!(e.id, None);
        assert!(parse(json!({"op":"publish","channel":"a","text":1})).is_err());
        assert!(parse(json!({"op":"publish","channel":"a","text":"x","meta":[1]})).is_err());
        assert!(parse(json!({"op":"history","channel":"a","limit":-1})).is_err());
        assert!(parse(json!({"op":"join","channel":"a","since":"yesterday"})).is_err());
    }

    #[test]
    fn server_frames_round_trip() {
        let frame =
            ServerFrame::Reply(Reply { message_id: Some(MessageId::new(1, 2)), ..Reply::ok(json!(3)) });
        let text = serde_json::to_string(&frame).unwrap();
        assert_eq!(text, r#"{"op":"reply","id":3,"ok":true,"message_id":"1-2"}"#);
        assert_eq!(serde_json::from_str::<ServerFrame>(&text).unwrap(), frame);
        let err = ServerFrame::Error { error: ErrorBody::new(ErrorCode::TooLarge, "x") };
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"op":"error","error":{"code":"too_large","message":"x"}}"#
        );
    }

    #[test]
    fn error_code_strings_match_serde() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
    }
}
