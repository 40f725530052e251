//! Entries of a node's inbox stream `{p}:inbox:<node>`.
//!
//! Field `k` says what an entry is. Owners write fan-out entries from Lua
//! (`ev`: the messages and presence changes of any number of channels,
//! one entry per node per commit; `closed`); edges and owners write request and ack
//! bundles (`reqs`, `acks`: many requests or acks in one entry, JSON in
//! field `d`); the operator writes `close`. docs/redis-layout.md describes
//! every field.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::protocol::{ErrorBody, ErrorCode, PresenceEvent};
use crate::{ChannelName, MessageId};

/// One message of an `ev` entry: its id, the owner's accept time, and the
/// push frame exactly as clients receive it (built once, by the owner).
#[derive(Debug, Clone, PartialEq)]
pub struct FannedMessage {
    pub id: MessageId,
    /// Owner's accept time, µs since the Unix epoch (for the latency metric).
    pub accepted_micros: u64,
    /// `{"op":"message",...}`, serialized.
    pub push: String,
}

/// One user's copy of a direct message in a `dm` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct DmDelivery {
    /// The user (sender or recipient) whose connections get it.
    pub user: String,
    /// Its position in that user's mailbox.
    pub cursor: MessageId,
    /// `{"op":"dm",...}`, serialized, with that cursor.
    pub push: String,
}

/// A direct message from an edge to its conversation's owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DmRequest {
    #[serde(rename = "r")]
    pub req: String,
    #[serde(rename = "e")]
    pub edge: String,
    #[serde(rename = "f")]
    pub from: String,
    #[serde(rename = "t")]
    pub to: String,
    #[serde(rename = "x")]
    pub text: String,
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Map<String, Value>>,
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Sent by the server (`POST /v1/users/{user}/messages`), not by a player.
    #[serde(rename = "s", default, skip_serializing_if = "std::ops::Not::not")]
    pub system: bool,
    #[serde(rename = "dl")]
    pub deadline_ms: u64,
    #[serde(rename = "h", default)]
    pub hops: u32,
}

/// What an edge asks a channel's owner to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum RequestKind {
    #[serde(rename = "pub")]
    Publish {
        #[serde(rename = "x")]
        text: String,
        #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
        meta: Option<Map<String, Value>>,
        /// The client's idempotency key, when it sent one.
        #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
        nonce: Option<String>,
    },
    #[serde(rename = "join")]
    Join,
    #[serde(rename = "leave")]
    Leave,
}

/// A request from an edge to a channel's owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnerRequest {
    /// Unique per request: `<edge>:<n>`.
    #[serde(rename = "r")]
    pub req: String,
    /// Edge id (`<node>#<incarnation>`) to answer, and to record membership for.
    #[serde(rename = "e")]
    pub edge: String,
    #[serde(rename = "c")]
    pub channel: ChannelName,
    #[serde(rename = "u")]
    pub user: String,
    /// Redis-clock milliseconds after which the owner must not act on it
    /// (checked inside the commit script against Redis's `TIME`).
    #[serde(rename = "dl")]
    pub deadline_ms: u64,
    /// Forwards so far (a request for a channel that moved).
    #[serde(rename = "h", default)]
    pub hops: u32,
    #[serde(flatten)]
    pub kind: RequestKind,
}

/// The owner's answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    pub req: String,
    pub result: Result<AckValue, ErrorBody>,
}

/// A successful answer: a message id (publish), a member count (join), or
/// empty (leave).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AckValue {
    pub value: String,
    /// Publish only: the nonce matched an earlier publish; nothing new was stored.
    pub duplicate: bool,
}

#[derive(Serialize, Deserialize)]
struct WireAck {
    r: String,
    ok: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    v: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    dup: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<ErrorCode>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    msg: String,
}

impl From<&Ack> for WireAck {
    fn from(a: &Ack) -> Self {
        match &a.result {
            Ok(v) => WireAck {
                r: a.req.clone(),
                ok: true,
                v: v.value.clone(),
                dup: v.duplicate,
                code: None,
                msg: String::new(),
            },
            Err(e) => WireAck {
                r: a.req.clone(),
                ok: false,
                v: String::new(),
                dup: false,
                code: Some(e.code),
                msg: e.message.clone(),
            },
        }
    }
}

impl From<WireAck> for Ack {
    fn from(w: WireAck) -> Self {
        let result = if w.ok {
            Ok(AckValue { value: w.v, duplicate: w.dup })
        } else {
            Err(ErrorBody::new(w.code.unwrap_or(ErrorCode::Unavailable), w.msg))
        };
        Ack { req: w.r, result }
    }
}

#[derive(Serialize, Deserialize)]
struct WireClose {
    channel: ChannelName,
    #[serde(default)]
    reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InboxEntry {
    /// Owner → every node with members: what happened in some channels,
    /// each channel's events in order (`ev`; the older one-channel kinds
    /// `msgs` and `pres` decode to this too).
    Events(Vec<ChannelEvents>),
    /// Edge → owner (or owner → new owner, forwarding).
    Requests(Vec<OwnerRequest>),
    /// Edge → a conversation's owner.
    DmRequests(Vec<DmRequest>),
    /// A conversation's owner → every node where the sender or the recipient
    /// is connected: their copies of one direct message.
    Dms(Vec<DmDelivery>),
    /// Owner → edge.
    Acks(Vec<Ack>),
    /// Operator → owner: close this channel.
    Close { channel: ChannelName, reason: String },
    /// Owner → every node with members: the channel is closed; drop its local members.
    Closed { channel: ChannelName, reason: String },
}

/// One channel's part of an `ev` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelEvents {
    pub channel: ChannelName,
    pub events: Vec<FannedEvent>,
}

/// A message or a presence change, as fanned out.
#[derive(Debug, Clone, PartialEq)]
pub enum FannedEvent {
    Message(FannedMessage),
    Presence { event: PresenceEvent, user: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed inbox entry: {0}")]
pub struct MalformedEntry(pub String);

fn field<'a, S: AsRef<str>>(fields: &'a [(S, S)], name: &str) -> Result<&'a str, MalformedEntry> {
    fields
        .iter()
        .find(|(k, _)| k.as_ref() == name)
        .map(|(_, v)| v.as_ref())
        .ok_or_else(|| MalformedEntry(format!("missing field {name:?}")))
}

fn channel<S: AsRef<str>>(fields: &[(S, S)]) -> Result<ChannelName, MalformedEntry> {
    ChannelName::new(field(fields, "c")?).map_err(|e| MalformedEntry(e.to_string()))
}

fn json<T: serde::de::DeserializeOwned, S: AsRef<str>>(fields: &[(S, S)]) -> Result<T, MalformedEntry> {
    serde_json::from_str(field(fields, "d")?).map_err(|e| MalformedEntry(e.to_string()))
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Plain data structures with string keys: serialization cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

fn presence_event(v: &str) -> Result<PresenceEvent, MalformedEntry> {
    match v {
        "join" => Ok(PresenceEvent::Join),
        "leave" => Ok(PresenceEvent::Leave),
        other => Err(MalformedEntry(format!("presence event {other:?}"))),
    }
}

/// The sections of an `ev` (or `msgs` / `pres`) entry: `c` starts a
/// channel; `i`, `t`, `p` are a message (id, accept time, push); `e`, `u`
/// a presence change (event, user).
fn decode_events<S: AsRef<str>>(fields: &[(S, S)]) -> Result<Vec<ChannelEvents>, MalformedEntry> {
    let mut sections: Vec<ChannelEvents> = Vec::new();
    let mut message: Option<(MessageId, u64)> = None;
    let mut presence: Option<PresenceEvent> = None;
    for (k, v) in fields {
        let v = v.as_ref();
        let k = k.as_ref();
        if k == "k" {
            continue;
        }
        if k == "c" {
            let channel = ChannelName::new(v).map_err(|e| MalformedEntry(e.to_string()))?;
            sections.push(ChannelEvents { channel, events: Vec::new() });
            continue;
        }
        let section =
            sections.last_mut().ok_or_else(|| MalformedEntry(format!("field {k:?} before a channel")))?;
        match k {
            "i" => {
                let id = v.parse().map_err(|e: crate::InvalidMessageId| MalformedEntry(e.to_string()))?;
                message = Some((id, 0));
            }
            "t" => {
                if let Some((_, t)) = message.as_mut() {
                    *t = v.parse().unwrap_or(0);
                }
            }
            "p" => {
                let (id, accepted_micros) =
                    message.take().ok_or_else(|| MalformedEntry("push without a message id".into()))?;
                section.events.push(FannedEvent::Message(FannedMessage {
                    id,
                    accepted_micros,
                    push: v.to_string(),
                }));
            }
            "e" => presence = Some(presence_event(v)?),
            "u" => {
                let event =
                    presence.take().ok_or_else(|| MalformedEntry("presence user without an event".into()))?;
                section.events.push(FannedEvent::Presence { event, user: v.to_string() });
            }
            _ => {}
        }
    }
    if sections.is_empty() {
        return Err(MalformedEntry("missing field \"c\"".into()));
    }
    Ok(sections)
}

impl InboxEntry {
    /// Parses an entry's fields, in stream order (names may repeat).
    pub fn decode<S: AsRef<str>>(fields: &[(S, S)]) -> Result<InboxEntry, MalformedEntry> {
        let kind = field(fields, "k")?;
        Ok(match kind {
            "ev" | "msgs" | "pres" => InboxEntry::Events(decode_events(fields)?),
            "reqs" => InboxEntry::Requests(json(fields)?),
            "dmreqs" => InboxEntry::DmRequests(json(fields)?),
            "dm" => {
                let mut deliveries = Vec::new();
                let mut user: Option<String> = None;
                let mut cursor: Option<MessageId> = None;
                for (k, v) in fields {
                    match k.as_ref() {
                        "u" => user = Some(v.as_ref().to_string()),
                        "c" => {
                            cursor = Some(
                                v.as_ref()
                                    .parse()
                                    .map_err(|e: crate::InvalidMessageId| MalformedEntry(e.to_string()))?,
                            )
                        }
                        "p" => match (user.take(), cursor.take()) {
                            (Some(user), Some(cursor)) => {
                                deliveries.push(DmDelivery { user, cursor, push: v.as_ref().to_string() })
                            }
                            _ => {
                                return Err(MalformedEntry(
                                    "direct message push without user or cursor".into(),
                                ));
                            }
                        },
                        _ => {}
                    }
                }
                InboxEntry::Dms(deliveries)
            }
            "acks" => InboxEntry::Acks(json::<Vec<WireAck>, S>(fields)?.into_iter().map(Ack::from).collect()),
            "close" => {
                let c: WireClose = json(fields)?;
                InboxEntry::Close { channel: c.channel, reason: c.reason }
            }
            "closed" => InboxEntry::Closed {
                channel: channel(fields)?,
                reason: field(fields, "r").unwrap_or_default().to_string(),
            },
            other => {
                return Err(MalformedEntry(format!(
                    "unknown kind {:?}",
                    other.chars().take(16).collect::<String>()
                )));
            }
        })
    }

    /// The entry's fields, for `XADD`.
    pub fn encode(&self) -> Vec<(&'static str, String)> {
        match self {
            InboxEntry::Events(sections) => {
                let mut f = vec![("k", "ev".to_string())];
                for s in sections {
                    f.push(("c", s.channel.to_string()));
                    for e in &s.events {
                        match e {
                            FannedEvent::Message(m) => {
                                f.push(("i", m.id.to_string()));
                                f.push(("t", m.accepted_micros.to_string()));
                                f.push(("p", m.push.clone()));
                            }
                            FannedEvent::Presence { event, user } => {
                                let event = match event {
                                    PresenceEvent::Join => "join",
                                    PresenceEvent::Leave => "leave",
                                };
                                f.push(("e", event.to_string()));
                                f.push(("u", user.clone()));
                            }
                        }
                    }
                }
                f
            }
            InboxEntry::Requests(reqs) => vec![("k", "reqs".into()), ("d", to_json(reqs))],
            InboxEntry::DmRequests(reqs) => vec![("k", "dmreqs".into()), ("d", to_json(reqs))],
            InboxEntry::Dms(deliveries) => {
                let mut f = vec![("k", "dm".to_string())];
                for d in deliveries {
                    f.push(("u", d.user.clone()));
                    f.push(("c", d.cursor.to_string()));
                    f.push(("p", d.push.clone()));
                }
                f
            }
            InboxEntry::Acks(acks) => {
                let wire: Vec<WireAck> = acks.iter().map(WireAck::from).collect();
                vec![("k", "acks".into()), ("d", to_json(&wire))]
            }
            InboxEntry::Close { channel, reason } => vec![
                ("k", "close".into()),
                ("d", to_json(&WireClose { channel: channel.clone(), reason: reason.clone() })),
            ],
            InboxEntry::Closed { channel, reason } => {
                vec![("k", "closed".into()), ("c", channel.to_string()), ("r", reason.clone())]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(f: Vec<(&'static str, String)>) -> Vec<(String, String)> {
        f.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    fn round_trip(e: InboxEntry) {
        assert_eq!(InboxEntry::decode(&owned(e.encode())).unwrap(), e);
    }

    fn name(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    #[test]
    fn every_kind_round_trips() {
        let message = |ms, seq, t, push: &str| {
            FannedEvent::Message(FannedMessage {
                id: MessageId::new(ms, seq),
                accepted_micros: t,
                push: push.into(),
            })
        };
        round_trip(InboxEntry::Events(vec![
            ChannelEvents {
                channel: name("town-137"),
                events: vec![
                    message(5, 0, 7, "{\"a\":1}"),
                    FannedEvent::Presence { event: PresenceEvent::Join, user: "u".into() },
                    message(5, 1, 8, "{}"),
                ],
            },
            ChannelEvents {
                channel: name("c"),
                events: vec![FannedEvent::Presence { event: PresenceEvent::Leave, user: "u".into() }],
            },
        ]));
        let mut meta = Map::new();
        meta.insert("k".into(), Value::from(1));
        round_trip(InboxEntry::Requests(vec![
            OwnerRequest {
                req: "n0#a:1".into(),
                edge: "n0#a".into(),
                channel: name("c"),
                user: "u".into(),
                deadline_ms: 99,
                hops: 1,
                kind: RequestKind::Publish { text: "hi".into(), meta: Some(meta), nonce: Some("x-1".into()) },
            },
            OwnerRequest {
                req: "n0#a:2".into(),
                edge: "n0#a".into(),
                channel: name("c"),
                user: "u".into(),
                deadline_ms: 99,
                hops: 0,
                kind: RequestKind::Join,
            },
        ]));
        round_trip(InboxEntry::Acks(vec![
            Ack { req: "r1".into(), result: Ok(AckValue { value: "5-0".into(), duplicate: true }) },
            Ack { req: "r2".into(), result: Ok(AckValue::default()) },
            Ack { req: "r3".into(), result: Err(ErrorBody::new(ErrorCode::ChannelFull, "full")) },
        ]));
        round_trip(InboxEntry::DmRequests(vec![DmRequest {
            req: "n0#a:3".into(),
            edge: "n0#a".into(),
            from: "alice".into(),
            to: "bob".into(),
            text: "psst".into(),
            meta: None,
            nonce: Some("w-1".into()),
            system: false,
            deadline_ms: 5,
            hops: 0,
        }]));
        round_trip(InboxEntry::Dms(vec![
            DmDelivery { user: "alice".into(), cursor: MessageId::new(7, 0), push: "{}".into() },
            DmDelivery { user: "bob".into(), cursor: MessageId::new(9, 1), push: "{\"x\":1}".into() },
        ]));
        round_trip(InboxEntry::Close { channel: name("c"), reason: "deleted".into() });
        round_trip(InboxEntry::Closed { channel: name("c"), reason: "deleted".into() });
    }

    #[test]
    fn one_channel_entries_of_the_previous_format_still_decode() {
        let msgs = [("k", "msgs"), ("c", "town"), ("i", "5-0"), ("t", "7"), ("p", "{}")];
        let pres = [("k", "pres"), ("c", "town"), ("e", "join"), ("u", "ann")];
        assert_eq!(
            InboxEntry::decode(&msgs).unwrap(),
            InboxEntry::Events(vec![ChannelEvents {
                channel: name("town"),
                events: vec![FannedEvent::Message(FannedMessage {
                    id: MessageId::new(5, 0),
                    accepted_micros: 7,
                    push: "{}".into()
                })],
            }])
        );
        assert_eq!(
            InboxEntry::decode(&pres).unwrap(),
            InboxEntry::Events(vec![ChannelEvents {
                channel: name("town"),
                events: vec![FannedEvent::Presence { event: PresenceEvent::Join, user: "ann".into() }],
            }])
        );
    }

    #[test]
    fn the_operators_close_request_keeps_its_format() {
        let f = owned(InboxEntry::Close { channel: name("town-137"), reason: "deleted".into() }.encode());
        assert_eq!(f[1].1, r#"{"channel":"town-137","reason":"deleted"}"#);
    }

    #[test]
    fn malformed_entries_are_errors_not_panics() {
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![],
            vec![("k", "msgs")],
            vec![("k", "msgs"), ("c", "bad name")],
            vec![("k", "msgs"), ("c", "ok"), ("i", "x")],
            vec![("k", "msgs"), ("c", "ok"), ("p", "{}")],
            vec![("k", "pres"), ("c", "ok"), ("e", "dance"), ("u", "u")],
            vec![("k", "ev"), ("i", "5-0"), ("p", "{}")],
            vec![("k", "ev"), ("c", "ok"), ("u", "u")],
            vec![("k", "ev"), ("c", "ok"), ("c", "not ok")],
            vec![("k", "reqs"), ("d", "[{}]")],
            vec![("k", "acks"), ("d", "nope")],
            vec![("k", "close"), ("d", "{")],
            vec![("k", "dm"), ("p", "{}")],
            vec![("k", "dm"), ("u", "a"), ("c", "nope"), ("p", "{}")],
            vec![("k", "zzz")],
        ];
        for f in cases {
            assert!(InboxEntry::decode(&f).is_err(), "{f:?}");
        }
    }
}
