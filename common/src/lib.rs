//! Types shared by every Shardchat binary.
//!
//! This crate holds only what must agree byte-for-byte between processes:
//! channel-name rules, message ids, the client wire protocol, channel
//! configuration, the hash ring and the Redis key layout with the inbox entry
//! format. It has no async runtime and no
//! Kubernetes dependency, so `chat-node` and `chat-bench` do not pull in
//! the operator's dependency tree and vice versa.

pub mod channel;
pub mod config;
pub mod message_id;
pub mod protocol;
pub mod redis_layout;
pub mod redis_url;

pub use channel::{ChannelName, InvalidChannelName};
pub use config::{Access, ChannelConfig, ModerationMode, RateLimit, Retention};
pub use message_id::{InvalidMessageId, MessageId};
pub mod ring;
pub mod user;
pub use ring::{DEFAULT_VNODES, Ring, RingError, RingSnapshot};
