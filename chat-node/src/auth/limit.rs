//! Requests per client IP: a keyed token bucket. One limits WebSocket
//! connection attempts, checked before the upgrade (and before any token
//! work, so a flood of bogus tokens costs the node almost nothing); another
//! limits REST reads.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

type Keyed<C> = RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Admits connection attempts per IP; `rate` 0 disables the limit.
pub struct IpLimiter<C: Clock = DefaultClock> {
    limiter: Option<Keyed<C>>,
}

impl IpLimiter<DefaultClock> {
    pub fn new(rate: u32, burst: u32) -> Self {
        Self::with_clock(rate, burst, DefaultClock::default())
    }
}

impl<C: Clock> IpLimiter<C> {
    pub fn with_clock(rate: u32, burst: u32, clock: C) -> Self {
        let limiter = NonZeroU32::new(rate).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::dashmap_with_clock(Quota::per_second(rate).allow_burst(burst), clock)
        });
        Self { limiter }
    }

    /// True when one more attempt from `ip` is allowed now.
    pub fn admit(&self, ip: IpAddr) -> bool {
        self.limiter.as_ref().is_none_or(|l| l.check_key(&canonical(ip)).is_ok())
    }

    /// True when `n` more tokens from `ip` are available now (all or none are taken).
    pub fn admit_n(&self, ip: IpAddr, n: u32) -> bool {
        let Some(n) = NonZeroU32::new(n) else { return true };
        self.limiter.as_ref().is_none_or(|l| matches!(l.check_key_n(&canonical(ip), n), Ok(Ok(()))))
    }

    /// Forgets IPs whose bucket is full again (bounded memory under churn).
    pub fn sweep(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    pub fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address; other IPv6
/// addresses are grouped by their /64, since one subscriber usually holds a
/// whole /64 and could otherwise rotate through it.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::time::Duration;

    #[test]
    fn bucket_per_ip_with_an_injected_clock() {
        let clock = FakeRelativeClock::default();
        let l = IpLimiter::with_clock(2, 3, clock.clone());
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "203.0.113.8".parse().unwrap();
        assert!((0..3).all(|_| l.admit(a)), "the burst is admitted");
        assert!(!l.admit(a), "past the burst");
        assert!(l.admit(b), "other IPs have their own bucket");
        clock.advance(Duration::from_millis(500));
        assert!(l.admit(a), "one token back after 1/rate");
        assert!(!l.admit(a));
        clock.advance(Duration::from_secs(10));
        l.sweep();
        assert_eq!(l.tracked(), 0, "full buckets are forgotten");
    }

    #[test]
    fn ipv6_groups_by_prefix_and_mapped_v4_is_v4() {
        let clock = FakeRelativeClock::default();
        let l = IpLimiter::with_clock(1, 1, clock);
        assert!(l.admit("2001:db8:1:2::1".parse().unwrap()));
        assert!(!l.admit("2001:db8:1:2::ffff".parse().unwrap()));
        assert!(l.admit("2001:db8:1:3::1".parse().unwrap()));
        assert!(l.admit("198.51.100.1".parse().unwrap()));
        assert!(!l.admit("::ffff:198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn weighted_requests_take_several_tokens() {
        let clock = FakeRelativeClock::default();
        let l = IpLimiter::with_clock(10, 20, clock.clone());
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        assert!(l.admit_n(a, 10) && l.admit_n(a, 10));
        assert!(!l.admit_n(a, 10) && !l.admit(a), "the burst is spent");
        assert!(!l.admit_n(a, 1000), "more than the burst is never admitted");
        clock.advance(Duration::from_secs(1));
        assert!(l.admit_n(a, 10));
    }

    #[test]
    fn zero_rate_disables() {
        let l = IpLimiter::new(0, 0);
        assert!((0..1000).all(|_| l.admit("192.0.2.1".parse().unwrap())));
    }
}
