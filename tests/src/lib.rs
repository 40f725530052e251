//! End-to-end test support for Shardchat: run the real binaries and drive
//! them from the outside.
//!
//! * [`node`]: start `chat-node` processes on free loopback ports, wait for
//!   readiness, read their logs, stop them gracefully or kill them.
//! * [`cdp`]: drive headless Chromium over the DevTools Protocol, for the
//!   browser page.
//!
//! The tests themselves live in `tests/tests/`.

pub mod cdp;
pub mod node;
