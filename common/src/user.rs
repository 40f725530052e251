//! User ids (and role names): 1–64 characters of `A–Z a–z 0–9 - _ . : @`.

/// Longest user id accepted.
pub const MAX_USER_ID_LEN: usize = 64;

/// Whether `id` is a valid user id (or role name).
pub fn is_valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_USER_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_rules() {
        assert!(is_valid_user_id("user-42"));
        assert!(is_valid_user_id("a@b.c:d_e"));
        assert!(!is_valid_user_id(""));
        assert!(!is_valid_user_id("a b"));
        assert!(!is_valid_user_id("a|b"));
        assert!(!is_valid_user_id("가"));
        assert!(!is_valid_user_id(&"x".repeat(65)));
        assert!(is_valid_user_id(&"x".repeat(64)));
    }
}
