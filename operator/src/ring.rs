//! The hash ring shared with the chat nodes (`shardchat_common::ring`): the
//! operator computes owners with the very same code the nodes route with.

pub use shardchat_common::ring::{DEFAULT_VNODES, Ring, RingError, RingSnapshot, validate_node_id};
