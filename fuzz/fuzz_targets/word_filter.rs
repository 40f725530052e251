//! The word filter must never panic on any text or word list, and masking
//! replaces characters one for one (the text keeps its length in characters).
#![no_main]

use std::sync::OnceLock;

use chat_node::moderation::WordFilter;
use libfuzzer_sys::fuzz_target;
use shardchat_common::ModerationMode;

fn filter() -> &'static WordFilter {
    static F: OnceLock<WordFilter> = OnceLock::new();
    F.get_or_init(WordFilter::builtin)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let f = filter();
    let masked = f.apply(ModerationMode::Mask, text.to_string()).expect("mask mode never refuses");
    assert_eq!(masked.chars().count(), text.chars().count(), "masking replaces characters one for one");
    let _ = f.apply(ModerationMode::Reject, text.to_string());
    // A word list built from arbitrary text parses too.
    let _ = WordFilter::parse(text).is_flagged(text);
});
