//! The bench's stamp on every message it publishes:
//! `meta: {"bench": {"pub": <publisher index>, "seq": <n>, "t": <ns>}}`.
//!
//! `pub` is the publishing connection's index, `seq` its publish counter
//! (also the request `id`), `t` the send time in nanoseconds since the
//! bench's start instant. All clients live in one process, so one monotonic
//! clock measures publish→deliver latency without clock skew.

use serde_json::{Map, Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchMeta {
    pub publisher: u64,
    pub seq: u64,
    pub t_ns: u64,
}

impl BenchMeta {
    pub fn to_value(self) -> Value {
        json!({"bench": {"pub": self.publisher, "seq": self.seq, "t": self.t_ns}})
    }

    /// Reads the stamp back from a delivered message's `meta`; `None` when it
    /// is absent or malformed.
    pub fn from_meta(meta: Option<&Map<String, Value>>) -> Option<Self> {
        let bench = meta?.get("bench")?.as_object()?;
        Some(Self {
            publisher: bench.get("pub")?.as_u64()?,
            seq: bench.get("seq")?.as_u64()?,
            t_ns: bench.get("t")?.as_u64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let m = BenchMeta { publisher: 7, seq: 42, t_ns: 123_456_789 };
        let v = m.to_value();
        assert_eq!(v.to_string(), r#"{"bench":{"pub":7,"seq":42,"t":123456789}}"#);
        assert_eq!(BenchMeta::from_meta(v.as_object()), Some(m));
    }

    #[test]
    fn rejects_missing_or_mistyped_fields() {
        for v in [
            json!({}),
            json!({"bench": 1}),
            json!({"bench": {"pub": 1, "seq": 2}}),
            json!({"bench": {"pub": -1, "seq": 2, "t": 3}}),
            json!({"bench": {"pub": 1, "seq": "2", "t": 3}}),
            json!({"bench": {"pub": 1, "seq": 2, "t": 1.5}}),
        ] {
            assert_eq!(BenchMeta::from_meta(v.as_object()), None, "{v}");
        }
        assert_eq!(BenchMeta::from_meta(None), None);
    }
}
