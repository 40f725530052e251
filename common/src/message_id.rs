//! Message ids: `<milliseconds>-<sequence>`, the format of Redis stream ids.
//!
//! Ids are strictly increasing within a channel. Compare them as a pair of
//! integers (this type's `Ord`), never as strings: `"999-0" < "1000-0"`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MessageId {
    pub ms: u64,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid message id {0:?}: expected <milliseconds>-<sequence>, e.g. 1732260000123-0")]
pub struct InvalidMessageId(pub String);

impl MessageId {
    pub const ZERO: MessageId = MessageId { ms: 0, seq: 0 };

    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// The smallest id strictly greater than `self`.
    pub fn successor(self) -> Self {
        match self.seq.checked_add(1) {
            Some(seq) => Self { ms: self.ms, seq },
            None => Self { ms: self.ms.saturating_add(1), seq: 0 },
        }
    }

    /// The next id to assign after `self` at wall-clock time `now_ms`:
    /// the clock when it moved forward, otherwise the same millisecond with
    /// the next sequence number (so ids never go backwards, even if the
    /// clock does).
    pub fn next_after(self, now_ms: u64) -> Self {
        if now_ms > self.ms { Self { ms: now_ms, seq: 0 } } else { self.successor() }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for MessageId {
    type Err = InvalidMessageId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidMessageId(s.chars().take(64).collect());
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        let digits = |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(bad());
        }
        Ok(Self { ms: ms.parse().map_err(|_| bad())?, seq: seq.parse().map_err(|_| bad())? })
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Pattern of a message id on the wire (JSON Schema / OpenAPI).
pub const MESSAGE_ID_PATTERN: &str = "^[0-9]{1,20}-[0-9]{1,20}$";

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for MessageId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(MESSAGE_ID_PATTERN))
            .description(Some(
                "`<milliseconds>-<sequence>`; strictly increasing within a channel. \
                 Compare as a pair of integers, never as strings.",
            ))
            .examples(["1732260000123-0"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for MessageId {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_orders_numerically() {
        let a: MessageId = "999-5".parse().unwrap();
        let b: MessageId = "1000-0".parse().unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "999-5");
    }

    #[test]
    fn rejects_malformed() {
        for s in ["", "1", "1-", "-1", "a-1", "1-2-3", "+1-2", "1 -2", "123456789012345678901-0"] {
            assert!(s.parse::<MessageId>().is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn next_after_is_monotonic_even_when_clock_goes_back() {
        let id = MessageId::new(100, 7);
        assert_eq!(id.next_after(101), MessageId::new(101, 0));
        assert_eq!(id.next_after(100), MessageId::new(100, 8));
        assert_eq!(id.next_after(50), MessageId::new(100, 8));
        assert_eq!(MessageId::new(5, u64::MAX).successor(), MessageId::new(6, 0));
    }
}
