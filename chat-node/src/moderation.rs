//! The built-in word filter the channel owner applies before storing a
//! message: `mask` replaces each flagged word with `*`, `reject` refuses the
//! message with `filtered`.
//!
//! Matching is per whole word (split on anything that is not a letter or a
//! digit, compared case-insensitively), so innocent words that contain a
//! flagged one are never touched.

use std::collections::HashSet;

use shardchat_common::ModerationMode;

use crate::error::{ChatError, ChatResult};
use shardchat_common::protocol::ErrorCode;

/// A small default list; deployments supply their own.
const DEFAULT_WORDS: &[&str] =
    &["fuck", "fucking", "shit", "bitch", "cunt", "asshole", "bastard", "motherfucker"];

pub struct WordFilter {
    words: HashSet<String>,
}

impl Default for WordFilter {
    fn default() -> Self {
        Self::new(DEFAULT_WORDS.iter().copied())
    }
}

impl WordFilter {
    pub fn new<'a>(words: impl IntoIterator<Item = &'a str>) -> Self {
        Self { words: words.into_iter().map(|w| w.to_lowercase()).collect() }
    }

    /// Applies `mode` to `text`: the text to store, or `filtered`.
    pub fn apply(&self, mode: ModerationMode, text: String) -> ChatResult<String> {
        if mode == ModerationMode::Off {
            return Ok(text);
        }
        let flagged = self.flagged_spans(&text);
        if flagged.is_empty() {
            return Ok(text);
        }
        match mode {
            ModerationMode::Reject => {
                Err(ChatError::new(ErrorCode::Filtered, "message contains words this channel does not allow"))
            }
            _ => Ok(mask(&text, &flagged)),
        }
    }

    /// Byte ranges of flagged words.
    fn flagged_spans(&self, text: &str) -> Vec<(usize, usize)> {
        let mut spans = Vec::new();
        let mut start = None;
        for (i, c) in text.char_indices().chain(std::iter::once((text.len(), ' '))) {
            if c.is_alphanumeric() {
                start.get_or_insert(i);
            } else if let Some(s) = start.take()
                && self.words.contains(&text[s..i].to_lowercase())
            {
                spans.push((s, i));
            }
        }
        spans
    }
}

fn mask(text: &str, spans: &[(usize, usize)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for &(s, e) in spans {
        out.push_str(&text[pos..s]);
        out.extend(text[s..e].chars().map(|_| '*'));
        pos = e;
    }
    out.push_str(&text[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_whole_words_case_insensitively() {
        let f = WordFilter::default();
        assert_eq!(f.apply(ModerationMode::Mask, "oh SHIT, again".into()).unwrap(), "oh ****, again");
        assert_eq!(f.apply(ModerationMode::Off, "oh shit".into()).unwrap(), "oh shit");
    }

    #[test]
    fn leaves_innocent_words_alone() {
        let f = WordFilter::default();
        for t in ["Scunthorpe", "shitake mushrooms", "classic bass", "bitcoin"] {
            assert_eq!(f.apply(ModerationMode::Reject, t.to_string()).unwrap(), t);
        }
    }

    #[test]
    fn reject_mode_refuses() {
        let e = WordFilter::default().apply(ModerationMode::Reject, "you bastard".into()).unwrap_err();
        assert_eq!(e.code, ErrorCode::Filtered);
    }
}
