//! The assignment planner: for one `ChatChannel`, given the other
//! `ChatChannel`s that claim the same channel name and the current ring,
//! what should be published and what the status should say. Pure: no I/O.

use shardchat_common::ChannelConfig;

use crate::claims::{Claim, oldest};
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

/// The claimants of `obj`'s channel with `obj` itself in its current state
/// (`claimants` may hold an older copy of it, or not hold it yet).
pub fn with_self(obj: &ChatChannel, claimants: &[Claim]) -> Vec<Claim> {
    let me = Claim::of(obj);
    let mut all: Vec<Claim> = claimants.iter().filter(|c| c.name != me.name).cloned().collect();
    all.push(me);
    all
}

/// Decides what to do with `obj`. `claimants` are the objects that claim
/// the same channel name (from [`crate::claims::Claims`]; `obj` itself may
/// or may not be among them). Costs O(claimants), not O(fleet).
pub fn decide(obj: &ChatChannel, claimants: &[Claim], ring: Option<&Ring>) -> Decision {
    let config = match obj.channel_config() {
        Ok(c) => c,
        Err(e) => return Decision::Invalid(e),
    };
    let channel = config.name.as_str().to_string();
    let all = with_self(obj, claimants);
    let w = oldest(&all).expect("obj claims its own channel");
    if w.name != obj.name_any() {
        return Decision::Conflict { channel, winner: w.name.clone() };
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

    /// The claimants of `obj`'s channel among `all` (what the index holds).
    pub(crate) fn claims_of(obj: &ChatChannel, all: &[ChatChannel]) -> Vec<Claim> {
        all.iter().filter(|c| c.channel_name() == obj.channel_name()).map(Claim::of).collect()
    }

    fn decide_in(obj: &ChatChannel, all: &[ChatChannel], ring: Option<&Ring>) -> Decision {
        decide(obj, &claims_of(obj, all), ring)
    }

    fn plan(all: &[ChatChannel], ring: Option<&Ring>) -> BTreeMap<String, Decision> {
        all.iter().map(|c| (c.name_any(), decide_in(c, all, ring))).collect()
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
        let d = decide_in(&all[0], &all, None);
        assert_eq!(d.reason(), Reason::NoNodes);
        assert!(matches!(d, Decision::Publish { owner: None, epoch: None, .. }));
    }

    #[test]
    fn invalid_spec_publishes_nothing() {
        let mut bad = cc("town-1", 0, None);
        bad.spec.retention = Some(RetentionSpec { max_messages: Some(0), max_age_seconds: None });
        let d = decide(&bad, &[], Some(&ring(1, 3)));
        assert_eq!(d.reason(), Reason::InvalidSpec);
    }

    #[test]
    fn oldest_claimant_wins_a_channel_name() {
        let older = cc("lobby-a", 0, Some("lobby"));
        let newer = cc("lobby-b", 10, Some("lobby"));
        let plain = cc("lobby", 20, None); // claims "lobby" through its name
        let all = vec![newer.clone(), plain.clone(), older.clone()];
        let r = ring(1, 3);
        assert_eq!(decide_in(&older, &all, Some(&r)).reason(), Reason::Assigned);
        assert_eq!(
            decide_in(&newer, &all, Some(&r)),
            Decision::Conflict { channel: "lobby".into(), winner: "lobby-a".into() }
        );
        assert_eq!(decide_in(&plain, &all, Some(&r)).reason(), Reason::Conflict);
        // Once the winner is gone the next oldest takes over.
        let rest = vec![newer.clone(), plain.clone()];
        assert_eq!(decide_in(&newer, &rest, Some(&r)).reason(), Reason::Assigned);
        assert_eq!(decide_in(&plain, &rest, Some(&r)).reason(), Reason::Conflict);
    }

    #[test]
    fn equal_timestamps_break_ties_by_name() {
        let a = cc("a", 5, Some("x"));
        let b = cc("b", 5, Some("x"));
        let all = vec![b.clone(), a.clone()];
        assert_eq!(decide_in(&a, &all, None).reason(), Reason::NoNodes);
        assert_eq!(decide_in(&b, &all, None).reason(), Reason::Conflict);
    }
}
