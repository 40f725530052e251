//! chat-node: the Shardchat node. Every node is an edge (it holds client
//! WebSockets) and the owner of the channels the ring gives it.
//!
//! Layout: `http` (routes) → `session` (one connection, one file per op) →
//! `cluster` (edge → owner calls) → `owner` (sequencing, membership) →
//! `history` (storage) and `hub` (local fan-out).

pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod directory;
pub mod dm;
pub mod error;
pub mod frames;
pub mod history;
pub mod http;
pub mod hub;
pub mod keyed_lock;
pub mod lifecycle;
pub mod local_backend;
pub mod metrics;
pub mod moderation;
pub mod node;
pub mod owner;
pub mod periodic;
pub mod redis;
pub mod server;
pub mod session;

pub use config::Config;
pub use node::Node;
