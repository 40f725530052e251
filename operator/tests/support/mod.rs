pub mod fake_api;
pub mod redis;
