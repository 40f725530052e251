//! The `Origin` allow-list of the WebSocket upgrade (`--allowed-origins`).
//!
//! Browsers send `Origin` on every WebSocket handshake and let any page open
//! a socket to any host, so without a check a hostile page could talk to the
//! node with a visitor's cookies or network position. Non-browser clients
//! (game clients, bots) send no `Origin`; they are not affected, and could
//! forge it anyway — the check is a browser-side defence, not authentication.

/// `scheme://host[:port]`, lower-cased, with the scheme's default port left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin(String);

/// Parses an origin as browsers serialize it (`https://play.example.com`,
/// `http://localhost:8080`); paths, queries and credentials are refused.
pub fn parse_origin(raw: &str) -> Result<Origin, String> {
    let raw = raw.trim();
    let bad = || format!("{raw:?} is not an origin (scheme://host[:port])");
    let (scheme, rest) = raw.split_once("://").ok_or_else(bad)?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return Err(format!("{raw:?}: origin scheme must be http or https")),
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad());
    }
    let rest = rest.to_ascii_lowercase();
    let (host, port) = match rest.rsplit_once(':') {
        // IPv6 literals keep their colons inside brackets.
        Some((h, p)) if !p.contains(']') => (h.to_string(), Some(p.to_string())),
        _ => (rest.clone(), None),
    };
    if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c)) {
        return Err(bad());
    }
    let origin = match port {
        Some(p) if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) => return Err(bad()),
        Some(p) if p == default_port => format!("{scheme}://{host}"),
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    };
    Ok(Origin(origin))
}

/// The configured allow-list; empty allows every origin.
#[derive(Debug, Default)]
pub struct OriginPolicy {
    allowed: Vec<Origin>,
}

impl OriginPolicy {
    pub fn new(allowed: &[String]) -> Result<Self, String> {
        let allowed = allowed
            .iter()
            .filter(|o| !o.trim().is_empty())
            .map(|o| parse_origin(o))
            .collect::<Result<_, _>>()?;
        Ok(Self { allowed })
    }

    /// Whether a handshake with this `Origin` header value (if any) may proceed.
    pub fn admits(&self, header: Option<&str>) -> bool {
        if self.allowed.is_empty() {
            return true;
        }
        match header {
            None => true,
            Some(value) => parse_origin(value).is_ok_and(|o| self.allowed.contains(&o)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalized() {
        assert_eq!(
            parse_origin("HTTPS://Play.Example.com:443").unwrap(),
            parse_origin("https://play.example.com").unwrap()
        );
        assert_ne!(parse_origin("http://a.example").unwrap(), parse_origin("https://a.example").unwrap());
        assert_eq!(parse_origin("http://[::1]:8080").unwrap().0, "http://[::1]:8080");
        for bad in [
            "",
            "play.example.com",
            "ftp://x",
            "https://",
            "https://a/b",
            "https://u@a",
            "https://a:x",
            "null",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_allow_list_applies_to_browsers_only() {
        let any = OriginPolicy::new(&[]).unwrap();
        assert!(any.admits(Some("https://evil.example")) && any.admits(None));
        let list = OriginPolicy::new(&["https://play.example.com".into()]).unwrap();
        assert!(list.admits(Some("https://play.example.com")));
        assert!(list.admits(Some("https://PLAY.example.com:443")));
        assert!(!list.admits(Some("https://play.example.com.evil.example")));
        assert!(!list.admits(Some("http://play.example.com")), "scheme matters");
        assert!(!list.admits(Some("null")), "sandboxed and file pages send null");
        assert!(list.admits(None), "no Origin: not a browser");
    }
}
