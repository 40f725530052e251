//! The built-in word filter the channel owner applies before storing a
//! message: `mask` replaces each flagged word with `*`, `reject` refuses the
//! message with `filtered`.
//!
//! Matching works on a *skeleton* of the text, built character by
//! character so every skeleton letter remembers where it came from:
//!
//! * NFKC (fullwidth `ＦＵＣＫ`, math letters `𝐟𝐮𝐜𝐤`, `ſ`), lower case,
//!   accents stripped (`fück`), common Cyrillic/Greek look-alikes mapped to
//!   Latin (`fuсk` with a Cyrillic `с`);
//! * zero-width and other invisible format characters dropped (`fu\u{200B}ck`);
//! * leetspeak inside words (`sh1t`, `$hit`, `a$$hole`), never in pure numbers;
//! * Hangul jamo recomposed (`ㅅㅣㅂㅏㄹ` → `시발`) and digits or Latin noise
//!   inside Hangul words ignored (`시1발`);
//! * letters spread out with spaces or punctuation rejoined (`f u c k`,
//!   `b.a.d`, `씨.발`), and repeated letters tolerated (`fuuuck`).
//!
//! Matching is per whole word (or per word prefix for entries written
//! `word*`), never per substring, so innocent words that contain a flagged
//! one (Scunthorpe, classic, assassin, 시바견) are left alone, and explicit
//! exceptions (`!시발점*`) cover innocent words that *start* with one.

use std::collections::{HashMap, HashSet};

use shardchat_common::ModerationMode;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::error::{ChatError, ChatResult};
use shardchat_common::protocol::ErrorCode;

/// The built-in English and Korean list (format in the file's header).
pub const DEFAULT_WORDS: &str = include_str!("default_words.txt");

/// Longest gap (in separator characters) that still joins spread-out letters.
const MAX_GAP: usize = 3;

/// A parsed, normalized word list.
#[derive(Debug, Default, Clone)]
pub struct WordFilter {
    /// Whole-word entries: collapsed skeleton → shortest full length.
    exact: HashMap<String, usize>,
    exact_plain: HashSet<String>,
    /// Prefix entries (`word*`), as skeletons and collapsed skeletons.
    prefix: HashSet<String>,
    prefix_collapsed: HashSet<String>,
    allow_exact: HashSet<String>,
    allow_prefix: HashSet<String>,
    /// Longest entry, in skeleton characters.
    max_len: usize,
    /// Longest exception prefix, in skeleton characters.
    max_allow_len: usize,
    entries: usize,
}

impl WordFilter {
    /// The built-in list.
    pub fn builtin() -> Self {
        Self::parse(DEFAULT_WORDS)
    }

    /// Parses a word list (see `default_words.txt` for the format).
    pub fn parse(text: &str) -> Self {
        let mut f = WordFilter::default();
        f.add_list(text, 0);
        f
    }

    fn add_list(&mut self, text: &str, depth: u8) {
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line == "%defaults" {
                if depth == 0 {
                    self.add_list(DEFAULT_WORDS, 1);
                }
                continue;
            }
            let (allow, rest) = match line.strip_prefix('!') {
                Some(r) => (true, r),
                None => (false, line),
            };
            let (prefix, word) = match rest.strip_suffix('*') {
                Some(w) => (true, w),
                None => (false, rest),
            };
            let skeleton = skeleton_of(word);
            if skeleton.is_empty() {
                continue;
            }
            self.entries += 1;
            self.max_len = self.max_len.max(skeleton.chars().count());
            match (allow, prefix) {
                (true, true) => {
                    self.max_allow_len = self.max_allow_len.max(skeleton.chars().count());
                    self.allow_prefix.insert(skeleton);
                }
                (true, false) => {
                    self.allow_exact.insert(skeleton);
                }
                (false, true) => {
                    self.prefix_collapsed.insert(collapse(&skeleton));
                    self.prefix.insert(skeleton);
                }
                (false, false) => {
                    let len = skeleton.chars().count();
                    let e = self.exact.entry(collapse(&skeleton)).or_insert(len);
                    *e = (*e).min(len);
                    self.exact_plain.insert(skeleton);
                }
            }
        }
    }

    /// Number of entries (flagged words and exceptions).
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Applies `mode` to `text`: the text to store, or `filtered`.
    pub fn apply(&self, mode: ModerationMode, text: String) -> ChatResult<String> {
        self.check(mode, text).map(|(text, _)| text)
    }

    /// Like [`apply`](Self::apply), also telling whether anything was masked.
    pub fn check(&self, mode: ModerationMode, text: String) -> ChatResult<(String, bool)> {
        if mode == ModerationMode::Off {
            return Ok((text, false));
        }
        let flagged = self.flagged_spans(&text);
        if flagged.is_empty() {
            return Ok((text, false));
        }
        match mode {
            ModerationMode::Reject => {
                Err(ChatError::new(ErrorCode::Filtered, "message contains words this channel does not allow"))
            }
            _ => Ok((mask(&text, &flagged), true)),
        }
    }

    /// True when `text` contains a flagged word.
    pub fn is_flagged(&self, text: &str) -> bool {
        !self.flagged_spans(text).is_empty()
    }

    /// Byte ranges of `text` to mask, sorted and non-overlapping.
    pub fn flagged_spans(&self, text: &str) -> Vec<(usize, usize)> {
        if self.entries == 0 {
            return Vec::new();
        }
        let units = units(text);
        let tokens = tokens(&units);
        let mut spans = Vec::new();
        // Single words, and the same-script parts of mixed words ("fuck이야").
        for t in &tokens {
            if self.matches(&t.skeleton) {
                spans.push((t.start, t.end));
            }
            for part in &t.parts {
                if self.matches(&part.0) {
                    spans.push((part.1, part.2));
                }
            }
        }
        // Words spread over several tokens: "f u c k", "b.a.d", "씨.발".
        let max_joined = self.max_len * 3;
        let mut i = 0;
        while i < tokens.len() {
            let mut j = i;
            while j + 1 < tokens.len() && linked(&units, &tokens[j], &tokens[j + 1]) {
                j += 1;
            }
            for a in i..j {
                let mut joined = tokens[a].skeleton.clone();
                let mut joined_len = tokens[a].len;
                for b in a + 1..=j {
                    joined.push_str(&tokens[b].skeleton);
                    joined_len += tokens[b].len;
                    if joined_len > max_joined {
                        break;
                    }
                    if self.matches(&joined) {
                        spans.push((tokens[a].start, tokens[b].end));
                    }
                }
            }
            i = j + 1;
        }
        merge(spans)
    }

    /// Whether one word skeleton is flagged.
    fn matches(&self, w: &str) -> bool {
        if w.is_empty() || self.allowed(w) {
            return false;
        }
        if self.exact_plain.contains(w) {
            return true;
        }
        let collapsed = collapse(w);
        if let Some(&min_len) = self.exact.get(&collapsed)
            && w.chars().count() >= min_len
        {
            return true;
        }
        has_prefix_in(w, &self.prefix, self.max_len)
            || has_prefix_in(&collapsed, &self.prefix_collapsed, self.max_len)
    }

    fn allowed(&self, w: &str) -> bool {
        self.allow_exact.contains(w) || has_prefix_in(w, &self.allow_prefix, self.max_allow_len)
    }
}

fn has_prefix_in(w: &str, set: &HashSet<String>, max_chars: usize) -> bool {
    if set.is_empty() {
        return false;
    }
    w.char_indices().map(|(i, c)| i + c.len_utf8()).take(max_chars).any(|end| set.contains(&w[..end]))
}

/// Runs of the same letter collapsed to one ("fuuuck" → "fuck").
fn collapse(w: &str) -> String {
    let mut out = String::with_capacity(w.len());
    let mut last = None;
    for c in w.chars() {
        if last != Some(c) {
            out.push(c);
        }
        last = Some(c);
    }
    out
}

fn merge(mut spans: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    spans.sort_unstable();
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for (s, e) in spans {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Replaces every non-whitespace character inside `spans` with `*`.
fn mask(text: &str, spans: &[(usize, usize)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for &(s, e) in spans {
        out.push_str(&text[pos..s]);
        out.extend(text[s..e].chars().map(|c| if c.is_whitespace() { c } else { '*' }));
        pos = e;
    }
    out.push_str(&text[pos..]);
    out
}

// ---------------------------------------------------------------------------
// Normalization

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// A letter (any script), Hangul syllable or jamo.
    Letter,
    /// A digit: a letter inside a word (leetspeak), itself in a number.
    Digit,
    /// `@ $` (a letter next to one) and `! | +` (a letter between two).
    Leet,
    Space,
    Newline,
    Punct,
}

#[derive(Debug, Clone, Copy)]
struct Unit {
    ch: char,
    class: Class,
    start: usize,
    end: usize,
}

/// The skeleton of a word-list entry: its letters, normalized.
pub fn skeleton_of(word: &str) -> String {
    let units = units(word);
    tokens(&units).into_iter().map(|t| t.skeleton).collect()
}

/// Normalized characters of `text`, each with its byte range in `text`.
fn units(text: &str) -> Vec<Unit> {
    let mut out: Vec<Unit> = Vec::with_capacity(text.len());
    for (start, c) in text.char_indices() {
        let end = start + c.len_utf8();
        if c.is_ascii() {
            // ASCII is its own NFKC form with nothing to strip: the common case, kept cheap.
            let ch = c.to_ascii_lowercase();
            out.push(Unit { ch, class: classify(ch), start, end });
            continue;
        }
        if is_invisible(c) || is_combining_mark(c) {
            if let Some(last) = out.last_mut() {
                last.end = end;
            }
            continue;
        }
        for d in std::iter::once(c).nfkc() {
            for l in d.to_lowercase() {
                if is_hangul(l) {
                    out.push(Unit { ch: l, class: Class::Letter, start, end });
                    continue;
                }
                for base in std::iter::once(l).nfd().filter(|&b| !is_combining_mark(b)) {
                    if is_invisible(base) {
                        continue;
                    }
                    let ch = look_alike(base);
                    out.push(Unit { ch, class: classify(ch), start, end });
                }
            }
        }
    }
    compose_hangul(out)
}

fn classify(c: char) -> Class {
    if c == '\n' || c == '\r' {
        Class::Newline
    } else if c.is_whitespace() {
        Class::Space
    } else if c.is_alphabetic() {
        Class::Letter
    } else if c.is_numeric() {
        Class::Digit
    } else if matches!(c, '@' | '$' | '!' | '|' | '+') {
        Class::Leet
    } else {
        Class::Punct
    }
}

/// Zero-width and other invisible format characters, variation selectors.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
        | '\u{E0000}'..='\u{E007F}' | '\u{E0100}'..='\u{E01EF}')
}

fn is_hangul(c: char) -> bool {
    matches!(c, '\u{1100}'..='\u{11FF}' | '\u{3130}'..='\u{318F}' | '\u{A960}'..='\u{A97F}'
        | '\u{AC00}'..='\u{D7A3}' | '\u{D7B0}'..='\u{D7FF}')
}

/// Cyrillic and Greek letters that look like Latin ones (after lower-casing).
fn look_alike(c: char) -> char {
    match c {
        'а' | 'α' => 'a',
        'в' | 'β' | 'ь' => 'b',
        'с' | 'ϲ' => 'c',
        'ԁ' => 'd',
        'е' | 'ё' | 'ε' => 'e',
        'һ' | 'н' => 'h',
        'і' | 'ї' | 'ι' => 'i',
        'ј' => 'j',
        'к' | 'κ' => 'k',
        'м' => 'm',
        'η' => 'n',
        'о' | 'ο' | 'σ' => 'o',
        'р' | 'ρ' => 'p',
        'ԛ' => 'q',
        'ѕ' => 's',
        'т' | 'τ' => 't',
        'υ' => 'u',
        'ν' => 'v',
        'ԝ' | 'ω' => 'w',
        'х' | 'χ' => 'x',
        'у' | 'γ' => 'y',
        _ => c,
    }
}

fn leet(c: char) -> char {
    match c {
        '0' => 'o',
        '1' | '!' | '|' => 'i',
        '3' => 'e',
        '4' | '@' => 'a',
        '5' | '$' => 's',
        '7' | '+' => 't',
        '8' => 'b',
        '9' => 'g',
        _ => c,
    }
}

/// Recomposes conjoining jamo (as NFKC leaves compatibility jamo such as
/// `ㅅㅣㅂㅏㄹ`) into syllables; a leading consonant right after an open
/// syllable, not followed by a vowel, becomes its final consonant.
fn compose_hangul(units: Vec<Unit>) -> Vec<Unit> {
    const S_BASE: u32 = 0xAC00;
    let lead = |c: char| ('\u{1100}'..='\u{1112}').contains(&c);
    let vowel = |c: char| ('\u{1161}'..='\u{1175}').contains(&c);
    let tail = |c: char| ('\u{11A8}'..='\u{11C2}').contains(&c);
    let mut out: Vec<Unit> = Vec::with_capacity(units.len());
    let mut i = 0;
    while i < units.len() {
        let u = units[i];
        if lead(u.ch) && i + 1 < units.len() && vowel(units[i + 1].ch) {
            let l = u.ch as u32 - 0x1100;
            let v = units[i + 1].ch as u32 - 0x1161;
            let mut end = units[i + 1].end;
            let mut t = 0;
            i += 2;
            if i < units.len() {
                let next = units[i].ch;
                let next_is_vowel = i + 1 < units.len() && vowel(units[i + 1].ch);
                let as_tail = if tail(next) {
                    Some(next as u32 - 0x11A7)
                } else if lead(next) && !next_is_vowel {
                    lead_to_tail(next)
                } else {
                    None
                };
                if let Some(tt) = as_tail {
                    t = tt;
                    end = units[i].end;
                    i += 1;
                }
            }
            let ch = char::from_u32(S_BASE + (l * 21 + v) * 28 + t).unwrap_or(u.ch);
            out.push(Unit { ch, class: Class::Letter, start: u.start, end });
            continue;
        }
        out.push(u);
        i += 1;
    }
    out
}

/// Final-consonant index (1-based) of a leading consonant that can end a syllable.
fn lead_to_tail(c: char) -> Option<u32> {
    let t = match c {
        '\u{1100}' => 0x11A8,
        '\u{1101}' => 0x11A9,
        '\u{1102}' => 0x11AB,
        '\u{1103}' => 0x11AE,
        '\u{1105}' => 0x11AF,
        '\u{1106}' => 0x11B7,
        '\u{1107}' => 0x11B8,
        '\u{1109}' => 0x11BA,
        '\u{110A}' => 0x11BB,
        '\u{110B}' => 0x11BC,
        '\u{110C}' => 0x11BD,
        '\u{110E}' => 0x11BE,
        '\u{110F}' => 0x11BF,
        '\u{1110}' => 0x11C0,
        '\u{1111}' => 0x11C1,
        '\u{1112}' => 0x11C2,
        _ => return None,
    };
    Some(t - 0x11A7)
}

/// One word of the text.
#[derive(Debug)]
struct Token {
    skeleton: String,
    /// Same-script parts of a word that mixes Hangul and other letters.
    parts: Vec<(String, usize, usize)>,
    /// Byte range in the text.
    start: usize,
    end: usize,
    /// Index range in the units.
    first: usize,
    last: usize,
    /// Skeleton length in characters.
    len: usize,
}

fn is_word(c: Class) -> bool {
    matches!(c, Class::Letter | Class::Digit)
}

/// Splits units into words. Leet symbols belong to a word when they touch
/// one (`$hit`, `a$$`) or, for `! | +`, sit inside one (`sh!t`, not `shit!`).
fn tokens(units: &[Unit]) -> Vec<Token> {
    let n = units.len();
    // For each run of leet symbols ("a$$"): is it preceded / followed by a word character?
    let mut before = vec![false; n];
    let mut after = vec![false; n];
    for i in 0..n {
        if units[i].class == Class::Leet {
            before[i] = if i > 0 && units[i - 1].class == Class::Leet {
                before[i - 1]
            } else {
                i > 0 && is_word(units[i - 1].class)
            };
        }
    }
    for i in (0..n).rev() {
        if units[i].class == Class::Leet {
            after[i] = if i + 1 < n && units[i + 1].class == Class::Leet {
                after[i + 1]
            } else {
                i + 1 < n && is_word(units[i + 1].class)
            };
        }
    }
    let in_word = |i: usize| -> bool {
        match units[i].class {
            Class::Letter | Class::Digit => true,
            Class::Leet => match units[i].ch {
                '@' | '$' => before[i] || after[i],
                _ => before[i] && after[i],
            },
            _ => false,
        }
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        if !in_word(i) {
            i += 1;
            continue;
        }
        let first = i;
        while i < n && in_word(i) {
            i += 1;
        }
        out.push(make_token(&units[first..i], first));
    }
    out
}

fn make_token(units: &[Unit], first: usize) -> Token {
    let has_letter = units.iter().any(|u| u.class == Class::Letter && !u.ch.is_numeric());
    let has_hangul = units.iter().any(|u| is_hangul(u.ch));
    let letter = |u: &Unit| if has_letter && u.class != Class::Letter { leet(u.ch) } else { u.ch };
    let mut parts = Vec::new();
    let skeleton: String = if has_hangul {
        // Digits and Latin letters inside a Hangul word are noise ("시1발"),
        // but a Latin part may be a word of its own ("fuck이야").
        let mut run: Option<(String, usize, usize)> = None;
        for u in units.iter().filter(|u| !is_hangul(u.ch)) {
            match &mut run {
                Some((s, _, e)) if *e == u.start => {
                    s.push(letter(u));
                    *e = u.end;
                }
                _ => {
                    if let Some(r) = run.take() {
                        parts.push(r);
                    }
                    run = Some((letter(u).to_string(), u.start, u.end));
                }
            }
        }
        parts.extend(run);
        parts.retain(|p| p.0.chars().count() > 1);
        units.iter().filter(|u| is_hangul(u.ch)).map(|u| u.ch).collect()
    } else {
        units.iter().map(letter).collect()
    };
    let len = skeleton.chars().count();
    Token {
        skeleton,
        parts,
        start: units[0].start,
        end: units[units.len() - 1].end,
        first,
        last: first + units.len() - 1,
        len,
    }
}

/// Whether two neighbouring words are pieces of one spread-out word:
/// joined by 1–3 punctuation characters and nothing else ("b.a.d",
/// "sh-it"), or both a single letter apart by 1–3 spaces or punctuation
/// characters ("f u c k"). A line break always separates.
fn linked(units: &[Unit], a: &Token, b: &Token) -> bool {
    let gap = &units[a.last + 1..b.first];
    if gap.is_empty() || gap.len() > MAX_GAP || gap.iter().any(|u| u.class == Class::Newline) {
        return false;
    }
    let tight = gap.iter().all(|u| u.class == Class::Punct || u.class == Class::Leet);
    tight || (a.len == 1 && b.len == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_whole_words_case_insensitively() {
        let f = WordFilter::builtin();
        assert_eq!(f.apply(ModerationMode::Mask, "oh SHIT, again".into()).unwrap(), "oh ****, again");
        assert_eq!(f.apply(ModerationMode::Off, "oh shit".into()).unwrap(), "oh shit");
    }

    #[test]
    fn leaves_innocent_words_alone() {
        let f = WordFilter::builtin();
        for t in ["Scunthorpe", "shitake mushrooms", "classic bass", "bitcoin"] {
            assert_eq!(f.apply(ModerationMode::Reject, t.to_string()).unwrap(), t);
        }
    }

    #[test]
    fn reject_mode_refuses() {
        let e = WordFilter::builtin().apply(ModerationMode::Reject, "you bastard".into()).unwrap_err();
        assert_eq!(e.code, ErrorCode::Filtered);
    }

    #[test]
    fn skeletons() {
        assert_eq!(skeleton_of("ＦＵＣＫ"), "fuck");
        assert_eq!(skeleton_of("fu\u{200B}ck"), "fuck");
        assert_eq!(skeleton_of("fück"), "fuck");
        assert_eq!(skeleton_of("sh1t"), "shit");
        assert_eq!(skeleton_of("ㅅㅣㅂㅏㄹ"), "시발");
        assert_eq!(skeleton_of("시1발"), "시발");
        assert_eq!(skeleton_of("2024"), "2024");
    }

    #[test]
    fn list_format() {
        let f = WordFilter::parse("# comment\n\nfoo\nbar*\n!barn*\n%defaults\n");
        assert!(f.is_flagged("foo") && !f.is_flagged("food"));
        assert!(f.is_flagged("barbell") && !f.is_flagged("barnyard"));
        assert!(f.is_flagged("shit"), "%defaults includes the built-in list");
        assert!(WordFilter::parse("").is_empty());
    }
}
