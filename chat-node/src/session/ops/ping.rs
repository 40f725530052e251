//! `ping`: liveness check at the protocol level; the reply carries server time.

use serde_json::Value;
use shardchat_common::protocol::Reply;

use crate::clock::now_ms;

pub fn handle() -> Reply {
    Reply { ts: Some(now_ms()), ..Reply::ok(Value::Null) }
}
