//! End-to-end test support for Shardchat: run the real binaries and drive
//! them from the outside.
//!
//! * [`node`]: start `chat-node` processes on free loopback ports, wait for
//!   readiness, read their logs, stop them gracefully or kill them.
//! * [`cdp`]: drive headless Chromium over the DevTools Protocol, for the
//!   browser page.
//! * [`client`]: an async WebSocket client speaking protocol v1, and a
//!   minimal HTTP client for the REST API.
//! * [`cluster`]: a Redis and several nodes sharding over it.
//! * [`redis`]: a private `redis-server` on a free loopback port that tests
//!   can stop, kill and restart.
//!
//! The tests themselves live in `tests/tests/`.

pub mod cdp;
pub mod chart;
pub mod client;
pub mod cluster;
pub mod node;
pub mod redis;
