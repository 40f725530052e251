//! Pre-flight check of the open-files limit: every connection needs one
//! file descriptor in the bench (and one in the server).

/// Descriptors kept free for stdio, the runtime and the like.
pub const RESERVE: u64 = 64;

/// The soft "Max open files" limit from `/proc/self/limits` text.
pub fn parse_soft_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.trim_start_matches("Max open files").split_whitespace().next()?;
    if soft == "unlimited" { Some(u64::MAX) } else { soft.parse().ok() }
}

/// The current soft limit, where the platform tells (Linux).
pub fn soft_limit() -> Option<u64> {
    parse_soft_limit(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

/// An error message when `connections` will not fit under `limit`.
pub fn check(connections: usize, limit: Option<u64>) -> Result<(), String> {
    let Some(limit) = limit else { return Ok(()) };
    let need = connections as u64 + RESERVE;
    if need > limit {
        return Err(format!(
            "{connections} connections need about {need} open files but the limit is {limit}; \
             raise it (ulimit -n) or split the load over several bench processes. Where the \
             limit cannot exceed 20,000 and the server runs on the same machine, keep \
             --connections at or below about 9,000 per process"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            20000                20000                files
Max locked memory         8388608              8388608              bytes
";

    #[test]
    fn parses_proc_limits() {
        assert_eq!(parse_soft_limit(SAMPLE), Some(20000));
        assert_eq!(parse_soft_limit("Max open files  unlimited unlimited files"), Some(u64::MAX));
        assert_eq!(parse_soft_limit("nothing here"), None);
    }

    #[test]
    fn checks_the_budget() {
        assert!(check(9_000, Some(20_000)).is_ok());
        assert!(check(19_936, Some(20_000)).is_ok());
        assert!(check(19_937, Some(20_000)).is_err());
        assert!(check(1_000_000, None).is_ok());
    }
}
