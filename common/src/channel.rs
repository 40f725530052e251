//! Channel names: 1–128 characters of `A–Z a–z 0–9 - _ . :`.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest channel name accepted anywhere (WebSocket, REST, CRD).
pub const MAX_CHANNEL_NAME_LEN: usize = 128;

/// Why a string is not a valid channel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidChannelName {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_NAME_LEN} characters")]
    TooLong,
    #[error("channel name contains {0:?}; allowed are A-Z a-z 0-9 - _ . :")]
    BadCharacter(char),
}

/// A validated channel name. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validates `name` against the channel-name rules.
    pub fn new(name: &str) -> Result<Self, InvalidChannelName> {
        validate(name)?;
        Ok(Self(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks `name` without allocating.
pub fn validate(name: &str) -> Result<(), InvalidChannelName> {
    if name.is_empty() {
        return Err(InvalidChannelName::Empty);
    }
    if name.len() > MAX_CHANNEL_NAME_LEN {
        return Err(InvalidChannelName::TooLong);
    }
    match name.chars().find(|c| !is_allowed(*c)) {
        Some(c) => Err(InvalidChannelName::BadCharacter(c)),
        None => Ok(()),
    }
}

fn is_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

/// Pattern of a valid channel name (JSON Schema / OpenAPI, CRD); the same
/// rule as [`validate`].
pub const CHANNEL_NAME_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ChannelName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(CHANNEL_NAME_PATTERN))
            .description(Some("1-128 characters of `A-Z a-z 0-9 - _ . :`"))
            .examples(["town-137"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ChannelName {}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ChannelName {
    type Err = InvalidChannelName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for ChannelName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChannelName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ChannelName::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_allowed_character() {
        assert!(ChannelName::new("Town-137_a.b:c").is_ok());
        assert!(ChannelName::new(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_bad_characters() {
        assert_eq!(validate(""), Err(InvalidChannelName::Empty));
        assert_eq!(validate(&"x".repeat(129)), Err(InvalidChannelName::TooLong));
        assert_eq!(validate("town 137"), Err(InvalidChannelName::BadCharacter(' ')));
        assert_eq!(validate("town/1"), Err(InvalidChannelName::BadCharacter('/')));
        assert_eq!(validate("마을"), Err(InvalidChannelName::BadCharacter('마')));
    }

    #[test]
    fn deserialization_validates() {
        assert!(serde_json::from_str::<ChannelName>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<ChannelName>("\"not ok\"").is_err());
    }
}
