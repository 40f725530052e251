//! The assignment planner: for one `ChatChannel`, given every other
//! `ChatChannel` and the current ring, what should be published and what
//! the status should say. Pure: no I/O.

use shardchat_common::ChannelConfig;

use crate::crd::{ChatChannel, Reason, SpecError};
use crate::ring::Ring;
use kube::ResourceExt;

/// What the reconciler should do with one `ChatChannel`.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Publish `config`; `owner` is None when the ring has no nodes.
    Publish { config: ChannelConfig, owner: Option<String>, epoch: Option<u64> },
    /// The spec is invalid: publish nothing.
    Invalid(SpecError),
    /// An older object (`winner`, its metadata.name) claims the channel.
    Conflict { channel: String, winner: String },
}

impl Decision {
    pub fn reason(&self) -> Reason {
        match self {
            Decision::Publish { owner: Some(_), .. } => Reason::Assigned,
            Decision::Publish { owner: None, .. } => Reason::NoNodes,
            Decision::Invalid(_) => Reason::InvalidSpec,
            Decision::Conflict { .. } => Reason::Conflict,
        }
    }
}

/// Sort key for "who claimed the channel first": creationTimestamp, then
/// metadata.name so the order is total and the same on every replica.
fn claim_key(c: &ChatChannel) -> (Option<i64>, String) {
    let ts = c.metadata.creation_timestamp.as_ref().map(|t| t.0.as_nanosecond() as i64);
    // Objects without a timestamp (not yet persisted) sort last.
    (Some(ts.unwrap_or(i64::MAX)), c.name_any())
}

/// The object that owns `channel` among `all`: the oldest claimant.
pub fn winner<'a, I>(channel: &str, all: I) -> Option<&'a ChatChannel>
where
    I: IntoIterator<Item = &'a ChatChannel>,
{
    all.into_iter().filter(|c| c.channel_name() == channel).min_by_key(|c| claim_key(c))
}

/// Decides what to do with `obj`. `all` is every `ChatChannel` in the
/// namespace (it may or may not include `obj` itself).
pub fn decide<'a, I>(obj: &'a ChatChannel, all: I, ring: Option<&Ring>) -> Decision
where
    I: IntoIterator<Item = &'a ChatChannel>,
{
    let config = match obj.channel_config() {
        Ok(c) => c,
        Err(e) => return Decision::Invalid(e),
    };
    let channel = config.name.as_str().to_string();
    let claimants = all.into_iter().filter(|c| c.uid() != obj.uid() || c.uid().is_none());
    let w = winner(&channel, claimants.chain(std::iter::once(obj))).expect("obj claims its own channel");
    if w.uid() != obj.uid() || w.name_any() != obj.name_any() {
        return Decision::Conflict { channel, winner: w.name_any() };
    }
    let owner = ring.and_then(|r| r.owner(&channel)).map(str::to_string);
    let epoch = ring.map(|r| r.epoch());
    Decision::Publish { config, owner, epoch }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::{ChatChannelSpec, RetentionSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use std::collections::BTreeMap;

    pub(crate) fn cc(name: &str, created: i64, channel: Option<&str>) -> ChatChannel {
        let mut c = ChatChannel::new(
            name,
            ChatChannelSpec { channel: channel.map(str::to_string), ..Default::default() },
        );
        c.metadata.namespace = Some("games".into());
        c.metadata.uid = Some(format!("uid-{name}"));
        c.metadata.generation = Some(1);
        c.metadata.creation_timestamp =
            Some(Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + created).unwrap()));
        c
    }

    fn ring(epoch: u64, n: usize) -> Ring {
        Ring::new(epoch, crate::ring::DEFAULT_VNODES, (0..n).map(|i| format!("chat-node-{i}"))).unwrap()
    }

    fn plan(all: &[ChatChannel], ring: Option<&Ring>) -> BTreeMap<String, Decision> {
        all.iter().map(|c| (c.name_any(), decide(c, all, ring))).collect()
    }

    fn owners(all: &[ChatChannel], ring: &Ring) -> BTreeMap<String, String> {
        plan(all, Some(ring))
            .into_iter()
            .map(|(k, d)| match d {
                Decision::Publish { owner: Some(o), .. } => (k, o),
                other => panic!("{k}: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn every_valid_channel_gets_an_owner_from_the_ring() {
        let all: Vec<_> = (0..50).map(|i| cc(&format!("town-{i}"), i, None)).collect();
        let r = ring(3, 3);
        for (name, d) in plan(&all, Some(&r)) {
            match d {
                Decision::Publish { config, owner, epoch } => {
                    assert_eq!(config.name.as_str(), name);
                    assert_eq!(owner.as_deref(), r.owner(&name));
                    assert_eq!(epoch, Some(3));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn scale_up_moves_only_some_channels_and_only_to_the_new_node() {
        let all: Vec<_> = (0..2000).map(|i| cc(&format!("town-{i}"), i, None)).collect();
        let before = owners(&all, &ring(1, 3));
        let after = owners(&all, &ring(2, 4));
        let moved: Vec<_> = before.iter().filter(|(k, v)| after[*k] != **v).map(|(k, _)| k).collect();
        assert!(!moved.is_empty());
        assert!(moved.len() < all.len() / 2, "{} of {} moved", moved.len(), all.len());
        for k in &moved {
            assert_eq!(after[*k], "chat-node-3", "{k} moved between old nodes");
        }
        // And back down: exactly the moved ones return to their old owner.
        assert_eq!(owners(&all, &ring(3, 3)), before);
    }

    #[test]
    fn no_nodes_still_publishes_config() {
        let all = vec![cc("town-1", 0, None)];
        let d = decide(&all[0], &all, None);
        assert_eq!(d.reason(), Reason::NoNodes);
        assert!(matches!(d, Decision::Publish { owner: None, epoch: None, .. }));
    }

    #[test]
    fn invalid_spec_publishes_nothing() {
        let mut bad = cc("town-1", 0, None);
        bad.spec.retention = Some(RetentionSpec { max_messages: Some(0), max_age_seconds: None });
        let d = decide(&bad, std::slice::from_ref(&bad), Some(&ring(1, 3)));
        assert_eq!(d.reason(), Reason::InvalidSpec);
    }

    #[test]
    fn oldest_claimant_wins_a_channel_name() {
        let older = cc("lobby-a", 0, Some("lobby"));
        let newer = cc("lobby-b", 10, Some("lobby"));
        let plain = cc("lobby", 20, None); // claims "lobby" through its name
        let all = vec![newer.clone(), plain.clone(), older.clone()];
        let r = ring(1, 3);
        assert_eq!(decide(&older, &all, Some(&r)).reason(), Reason::Assigned);
        assert_eq!(
            decide(&newer, &all, Some(&r)),
            Decision::Conflict { channel: "lobby".into(), winner: "lobby-a".into() }
        );
        assert_eq!(decide(&plain, &all, Some(&r)).reason(), Reason::Conflict);
        // Once the winner is gone the next oldest takes over.
        let rest = vec![newer.clone(), plain.clone()];
        assert_eq!(decide(&newer, &rest, Some(&r)).reason(), Reason::Assigned);
        assert_eq!(decide(&plain, &rest, Some(&r)).reason(), Reason::Conflict);
    }

    #[test]
    fn equal_timestamps_break_ties_by_name() {
        let a = cc("a", 5, Some("x"));
        let b = cc("b", 5, Some("x"));
        let all = vec![b.clone(), a.clone()];
        assert_eq!(decide(&a, &all, None).reason(), Reason::NoNodes);
        assert_eq!(decide(&b, &all, None).reason(), Reason::Conflict);
    }
}
