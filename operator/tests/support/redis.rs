//! The shared test Redis (`shardchat_tests::redis`): a private
//! `redis-server` on a free loopback port, killed on drop.

#[allow(unused_imports)] // not every test binary needs it
pub use shardchat_tests::redis::RedisServer;
