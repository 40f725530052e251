//! Ring membership: which chat-node pods are in the ring, debounced, and
//! which epoch a membership gets. Pure code (time is passed in) so every
//! rule is unit tested.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::ring::RingSnapshot;

/// What the debouncer needs to know about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    /// Ready condition true and not terminating.
    pub ready: bool,
    /// When the pod entered that state, if the API says so (the Ready
    /// condition's lastTransitionTime, or deletionTimestamp).
    pub since: Option<SystemTime>,
}

fn to_system_time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> SystemTime {
    SystemTime::from(t.0)
}

impl PodView {
    pub fn from_pod(pod: &Pod) -> PodView {
        let name = pod.name_any();
        if let Some(ts) = &pod.metadata.deletion_timestamp {
            return PodView { name, ready: false, since: Some(to_system_time(ts)) };
        }
        let cond = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
        match cond {
            Some(c) => PodView {
                name,
                ready: c.status == "True",
                since: c.last_transition_time.as_ref().map(to_system_time),
            },
            None => PodView { name, ready: false, since: None },
        }
    }
}

/// Debounced ring membership.
///
/// A pod joins once it has been Ready for `debounce`, and leaves once it has
/// been not Ready (or terminating, or gone) for `debounce`. Time in a state
/// is measured from the API's transition timestamp when there is one, else
/// from when this process first saw the state.
#[derive(Debug, Clone)]
pub struct Membership {
    debounce: Duration,
    members: BTreeSet<String>,
    /// Local observation: pod -> (ready, first seen in that state).
    seen: HashMap<String, (bool, SystemTime)>,
}

/// Result of one [`Membership::observe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub changed: bool,
    /// Look again after this long (a pending join or leave matures then).
    pub recheck_in: Option<Duration>,
}

impl Membership {
    pub fn new(debounce: Duration, initial: impl IntoIterator<Item = String>) -> Self {
        Self { debounce, members: initial.into_iter().collect(), seen: HashMap::new() }
    }

    /// Sorted member names.
    pub fn members(&self) -> Vec<String> {
        self.members.iter().cloned().collect()
    }

    /// Feeds the full current pod list.
    pub fn observe(&mut self, pods: &[PodView], now: SystemTime) -> Observation {
        let present: HashMap<&str, &PodView> = pods.iter().map(|p| (p.name.as_str(), p)).collect();
        let mut names: BTreeSet<String> = self.members.clone();
        names.extend(pods.iter().map(|p| p.name.clone()));
        let mut changed = false;
        let mut recheck: Option<Duration> = None;
        for name in names {
            let (ready, api_since) = match present.get(name.as_str()) {
                Some(p) => (p.ready, p.since),
                None => (false, None),
            };
            let entry = self.seen.entry(name.clone()).or_insert((ready, now));
            if entry.0 != ready {
                *entry = (ready, now);
            }
            let since = api_since.unwrap_or(entry.1);
            let is_member = self.members.contains(&name);
            if ready == is_member {
                continue;
            }
            let elapsed = now.duration_since(since).unwrap_or(Duration::ZERO);
            if elapsed >= self.debounce {
                if ready {
                    self.members.insert(name.clone());
                } else {
                    self.members.remove(&name);
                }
                changed = true;
            } else {
                let left = self.debounce - elapsed;
                recheck = Some(recheck.map_or(left, |r| r.min(left)));
            }
        }
        // Forget pods that are gone and not members.
        self.seen.retain(|n, _| present.contains_key(n.as_str()) || self.members.contains(n));
        Observation { changed, recheck_in: recheck }
    }
}

/// Decides the ring to publish for `members`.
///
/// * `stored`: what `{p}:ring` holds now (None when Redis lost it).
/// * `last`: the ring this process published last (None after a restart).
/// * `floor`: highest epoch recorded outside Redis (the Lease annotation of
///   `epoch_floor`), so the epoch never goes back even when Redis restarted
///   empty.
///
/// The epoch stays when the members are those of the newest known ring and
/// increases by one otherwise. Returns None when `stored` is already right.
pub fn next_ring(
    members: &[String],
    vnodes: u32,
    stored: Option<&RingSnapshot>,
    last: Option<&RingSnapshot>,
    floor: u64,
) -> Option<RingSnapshot> {
    let newest = stored.map_or(0, |s| s.epoch).max(last.map_or(0, |l| l.epoch)).max(floor);
    let same = |r: Option<&RingSnapshot>| r.is_some_and(|r| r.epoch == newest && r.nodes == members);
    if same(stored) {
        if stored.is_some_and(|s| s.vnodes == vnodes) {
            return None;
        }
        // vnode count changed by configuration: that changes owners, so
        // it is a new epoch too.
        return Some(RingSnapshot { epoch: newest.saturating_add(1), vnodes, nodes: members.to_vec() });
    }
    if same(last) && last.is_some_and(|l| l.vnodes == vnodes) {
        // Redis lost (or holds an older copy of) the ring we published.
        return last.cloned();
    }
    Some(RingSnapshot { epoch: newest.saturating_add(1), vnodes, nodes: members.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(10);

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }
    fn pod(name: &str, ready: bool, since: Option<u64>) -> PodView {
        PodView { name: name.into(), ready, since: since.map(t) }
    }
    fn names(m: &Membership) -> Vec<&str> {
        m.members.iter().map(String::as_str).collect()
    }

    #[test]
    fn pods_ready_long_enough_join_at_once() {
        let mut m = Membership::new(D, []);
        let o = m.observe(&[pod("a", true, Some(0)), pod("b", true, Some(5))], t(20));
        assert_eq!(o, Observation { changed: true, recheck_in: None });
        assert_eq!(names(&m), ["a", "b"]);
    }

    #[test]
    fn a_new_ready_pod_waits_for_the_debounce() {
        let mut m = Membership::new(D, ["a".to_string()]);
        let pods = [pod("a", true, Some(0)), pod("b", true, Some(100))];
        let o = m.observe(&pods, t(104));
        assert!(!o.changed);
        assert_eq!(o.recheck_in, Some(Duration::from_secs(6)));
        assert!(m.observe(&pods, t(110)).changed);
        assert_eq!(names(&m), ["a", "b"]);
    }

    #[test]
    fn a_flapping_pod_does_not_churn_the_ring() {
        let mut m = Membership::new(D, ["a".to_string(), "b".to_string()]);
        // b goes not ready for 3 s, then ready again: never leaves.
        assert!(!m.observe(&[pod("a", true, Some(0)), pod("b", false, Some(100))], t(100)).changed);
        assert!(!m.observe(&[pod("a", true, Some(0)), pod("b", false, Some(100))], t(103)).changed);
        let o = m.observe(&[pod("a", true, Some(0)), pod("b", true, Some(103))], t(103));
        assert_eq!(o, Observation { changed: false, recheck_in: None });
        assert!(!m.observe(&[pod("a", true, Some(0)), pod("b", true, Some(103))], t(200)).changed);
        assert_eq!(names(&m), ["a", "b"]);
    }

    #[test]
    fn not_ready_and_vanished_pods_leave_after_the_debounce() {
        let mut m = Membership::new(D, ["a".to_string(), "b".to_string(), "c".to_string()]);
        let pods = [pod("a", true, Some(0)), pod("b", false, Some(100))]; // c is gone
        let o = m.observe(&pods, t(100));
        assert!(!o.changed);
        assert_eq!(o.recheck_in, Some(D));
        let o = m.observe(&pods, t(110));
        assert!(o.changed);
        assert_eq!(names(&m), ["a"]);
        assert_eq!(o.recheck_in, None);
    }

    #[test]
    fn without_api_timestamps_local_first_sight_counts() {
        let mut m = Membership::new(D, []);
        assert!(!m.observe(&[pod("a", true, None)], t(0)).changed);
        assert!(!m.observe(&[pod("a", true, None)], t(9)).changed);
        assert!(m.observe(&[pod("a", true, None)], t(10)).changed);
    }

    #[test]
    fn terminating_pods_are_not_ready() {
        let mut p = Pod::default();
        p.metadata.name = Some("chat-node-2".into());
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_000_000).unwrap(),
        ));
        let v = PodView::from_pod(&p);
        assert!(!v.ready);
        assert_eq!(v.since, Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)));
        p.metadata.deletion_timestamp = None;
        assert_eq!(PodView::from_pod(&p), PodView { name: "chat-node-2".into(), ready: false, since: None });
    }

    fn snap(epoch: u64, nodes: &[&str]) -> RingSnapshot {
        RingSnapshot { epoch, vnodes: 128, nodes: nodes.iter().map(|s| s.to_string()).collect() }
    }
    fn v(nodes: &[&str]) -> Vec<String> {
        nodes.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn epoch_moves_only_on_membership_change_and_never_back() {
        // First ring ever.
        assert_eq!(next_ring(&v(&["a"]), 128, None, None, 0), Some(snap(1, &["a"])));
        // Same members as stored: nothing to write.
        assert_eq!(next_ring(&v(&["a"]), 128, Some(&snap(4, &["a"])), None, 2), None);
        // Member change: epoch + 1.
        assert_eq!(
            next_ring(&v(&["a", "b"]), 128, Some(&snap(4, &["a"])), None, 0),
            Some(snap(5, &["a", "b"]))
        );
        // Redis lost the ring: our last copy is restored unchanged.
        let last = snap(5, &["a", "b"]);
        assert_eq!(next_ring(&v(&["a", "b"]), 128, None, Some(&last), 0), Some(last.clone()));
        // Redis lost it and we restarted: the recorded floor keeps it going up.
        assert_eq!(next_ring(&v(&["a", "b"]), 128, None, None, 5), Some(snap(6, &["a", "b"])));
        // Someone wrote a higher epoch than ours: we go above it.
        assert_eq!(
            next_ring(&v(&["a", "b"]), 128, Some(&snap(9, &["a"])), Some(&last), 0),
            Some(snap(10, &["a", "b"]))
        );
        // vnodes changed: new epoch.
        assert_eq!(
            next_ring(&v(&["a"]), 64, Some(&snap(4, &["a"])), None, 0),
            Some(RingSnapshot { epoch: 5, vnodes: 64, nodes: v(&["a"]) })
        );
    }
}
