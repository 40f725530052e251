//! Frame parsing must never panic, and whatever it accepts must satisfy
//! the protocol's own limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardchat_common::protocol::{MAX_REQUEST_ID_LEN, parse_request};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_request(text) {
        Ok((id, request)) => {
            if let Some(serde_json::Value::String(s)) = &id {
                assert!(s.len() <= MAX_REQUEST_ID_LEN);
            }
            let _ = request.op();
        }
        Err(rejected) => {
            let _ = rejected.error;
        }
    }
});
