//! Who claims which channel name: an index from data-plane channel name to
//! the `ChatChannel` objects that declare it, kept up to date from the same
//! watch stream that feeds the controller's cache.
//!
//! The planner asks "is this object the oldest claimant of its channel?"
//! on every reconcile. Scanning every object for that made each reconcile
//! cost O(fleet) (and a fleet-wide ring change O(fleet²)); with this index
//! it costs O(claimants of one name), almost always one.

use std::collections::HashMap;
use std::sync::RwLock;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::crd::ChatChannel;

/// What the planner needs to know about one claimant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// metadata.name of the object.
    pub name: String,
    pub uid: Option<String>,
    /// creationTimestamp in nanoseconds (None: not persisted yet).
    pub created: Option<i128>,
    /// deletionTimestamp is set.
    pub deleting: bool,
}

impl Claim {
    pub fn of(obj: &ChatChannel) -> Claim {
        Claim {
            name: obj.name_any(),
            uid: obj.uid(),
            created: obj.metadata.creation_timestamp.as_ref().map(|t| t.0.as_nanosecond()),
            deleting: obj.metadata.deletion_timestamp.is_some(),
        }
    }

    /// Sort key for "who claimed the channel first": creationTimestamp
    /// (objects without one sort last), then metadata.name, so the order is
    /// total and the same on every replica.
    pub fn key(&self) -> (i128, &str) {
        (self.created.unwrap_or(i128::MAX), &self.name)
    }
}

/// The oldest claimant among `claims`.
pub fn oldest<'a>(claims: impl IntoIterator<Item = &'a Claim>) -> Option<&'a Claim> {
    claims.into_iter().min_by(|a, b| a.key().cmp(&b.key()))
}

#[derive(Debug, Default)]
struct Index {
    /// channel name -> claimants
    by_channel: HashMap<String, Vec<Claim>>,
    /// object name -> the channel it claims
    by_object: HashMap<String, String>,
}

impl Index {
    fn upsert(&mut self, channel: String, claim: Claim) {
        if let Some(old) = self.by_object.get(&claim.name)
            && *old != channel
        {
            let old = old.clone();
            self.remove(&claim.name, &old);
        }
        self.by_object.insert(claim.name.clone(), channel.clone());
        let list = self.by_channel.entry(channel).or_default();
        match list.iter_mut().find(|c| c.name == claim.name) {
            Some(c) => *c = claim,
            None => list.push(claim),
        }
    }

    fn remove(&mut self, name: &str, channel: &str) {
        self.by_object.remove(name);
        if let Some(list) = self.by_channel.get_mut(channel) {
            list.retain(|c| c.name != name);
            if list.is_empty() {
                self.by_channel.remove(channel);
            }
        }
    }
}

/// The index, shared between the watch stream (writer) and reconciles
/// (readers).
#[derive(Debug, Default)]
pub struct Claims {
    live: RwLock<Index>,
    /// Filled during a re-list (`Init` .. `InitDone`), then swapped in, the
    /// same way the reflector store does it.
    building: RwLock<Option<Index>>,
}

impl Claims {
    /// Feeds one watcher event. Returns the other claimants of every channel
    /// whose set of claimants changed (they may have won or lost it), to be
    /// reconciled again. After a re-list (`InitDone`) it returns the
    /// claimants of every channel whose winner differs from before (a
    /// deletion may have been missed while the watch was down).
    pub fn apply(&self, event: &watcher::Event<ChatChannel>) -> Vec<ObjectRef<ChatChannel>> {
        match event {
            watcher::Event::Init => {
                *self.building.write().expect("claims lock") = Some(Index::default());
                Vec::new()
            }
            watcher::Event::InitApply(obj) => {
                if let Some(b) = self.building.write().expect("claims lock").as_mut() {
                    b.upsert(obj.channel_name(), Claim::of(obj));
                }
                Vec::new()
            }
            watcher::Event::InitDone => {
                let Some(new) = self.building.write().expect("claims lock").take() else { return Vec::new() };
                let mut live = self.live.write().expect("claims lock");
                let winner =
                    |i: &Index, ch: &str| i.by_channel.get(ch).and_then(oldest).map(|c| c.name.clone());
                let affected = new
                    .by_channel
                    .iter()
                    .filter(|(ch, list)| list.len() > 1 && winner(&live, ch) != winner(&new, ch))
                    .flat_map(|(_, list)| list.iter().map(|c| ObjectRef::new(&c.name)))
                    .collect();
                *live = new;
                affected
            }
            watcher::Event::Apply(obj) => {
                let claim = Claim::of(obj);
                let channel = obj.channel_name();
                let mut live = self.live.write().expect("claims lock");
                let moved_from = live.by_object.get(&claim.name).filter(|c| **c != channel).cloned();
                let before = live.by_channel.get(&channel).cloned().unwrap_or_default();
                live.upsert(channel.clone(), claim.clone());
                // Only a new claimant, or one that started being deleted (or
                // was recreated), can change who wins.
                let mut affected = Vec::new();
                if !before.contains(&claim) {
                    affected = others(&live, &channel, &claim.name);
                }
                if let Some(old) = moved_from {
                    affected.extend(others(&live, &old, &claim.name));
                }
                affected
            }
            watcher::Event::Delete(obj) => {
                let channel = obj.channel_name();
                let name = obj.name_any();
                let mut live = self.live.write().expect("claims lock");
                live.remove(&name, &channel);
                others(&live, &channel, &name)
            }
        }
    }

    /// Every claimant of `channel`.
    pub fn claimants(&self, channel: &str) -> Vec<Claim> {
        self.live.read().expect("claims lock").by_channel.get(channel).cloned().unwrap_or_default()
    }

    /// (channel, metadata.name of its oldest claimant) for every claimed
    /// channel.
    pub fn winners(&self) -> Vec<(String, String)> {
        let live = self.live.read().expect("claims lock");
        live.by_channel
            .iter()
            .filter_map(|(ch, list)| Some((ch.clone(), oldest(list)?.name.clone())))
            .collect()
    }

    /// Number of objects indexed.
    pub fn len(&self) -> usize {
        self.live.read().expect("claims lock").by_object.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn others(live: &Index, channel: &str, except: &str) -> Vec<ObjectRef<ChatChannel>> {
    live.by_channel
        .get(channel)
        .into_iter()
        .flatten()
        .filter(|c| c.name != except)
        .map(|c| ObjectRef::new(&c.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::tests::cc;

    fn names(refs: Vec<ObjectRef<ChatChannel>>) -> Vec<String> {
        let mut v: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        v.sort();
        v
    }

    #[test]
    fn index_follows_applies_and_deletes() {
        let claims = Claims::default();
        let a = cc("lobby-a", 0, Some("lobby"));
        let b = cc("lobby-b", 10, Some("lobby"));
        let town = cc("town-1", 5, None);
        assert!(claims.apply(&watcher::Event::Apply(a.clone())).is_empty());
        assert!(claims.apply(&watcher::Event::Apply(town.clone())).is_empty());
        // A second claimant: the first one is told.
        assert_eq!(names(claims.apply(&watcher::Event::Apply(b.clone()))), ["lobby-a"]);
        assert_eq!(claims.claimants("lobby").len(), 2);
        // The same object again (a status change): nobody to tell.
        assert!(claims.apply(&watcher::Event::Apply(b.clone())).is_empty());
        let mut winners = claims.winners();
        winners.sort();
        assert_eq!(
            winners,
            [("lobby".to_string(), "lobby-a".to_string()), ("town-1".to_string(), "town-1".to_string())]
        );
        // The winner goes: the loser is told and now wins.
        assert_eq!(names(claims.apply(&watcher::Event::Delete(a.clone()))), ["lobby-b"]);
        assert_eq!(oldest(&claims.claimants("lobby")).unwrap().name, "lobby-b");
        assert!(claims.apply(&watcher::Event::Delete(b)).is_empty());
        assert!(claims.claimants("lobby").is_empty());
        assert_eq!(claims.len(), 1);
    }

    #[test]
    fn deletion_start_is_a_change() {
        let claims = Claims::default();
        let a = cc("lobby-a", 0, Some("lobby"));
        let b = cc("lobby-b", 10, Some("lobby"));
        claims.apply(&watcher::Event::Apply(a.clone()));
        claims.apply(&watcher::Event::Apply(b.clone()));
        let mut deleting = a.clone();
        deleting.metadata.deletion_timestamp = b.metadata.creation_timestamp.clone();
        assert_eq!(names(claims.apply(&watcher::Event::Apply(deleting))), ["lobby-b"]);
        assert!(claims.claimants("lobby").iter().any(|c| c.deleting));
    }

    #[test]
    fn a_relist_replaces_the_index_at_init_done() {
        let claims = Claims::default();
        claims.apply(&watcher::Event::Apply(cc("gone", 0, None)));
        claims.apply(&watcher::Event::Init);
        claims.apply(&watcher::Event::InitApply(cc("town-1", 0, None)));
        // Until InitDone the old view answers.
        assert_eq!(claims.claimants("gone").len(), 1);
        claims.apply(&watcher::Event::InitDone);
        assert!(claims.claimants("gone").is_empty());
        assert_eq!(claims.claimants("town-1").len(), 1);
    }

    #[test]
    fn a_relist_that_lost_a_winner_reports_its_successors() {
        let claims = Claims::default();
        let a = cc("lobby-a", 0, Some("lobby"));
        let b = cc("lobby-b", 10, Some("lobby"));
        let c = cc("lobby-c", 20, Some("lobby"));
        for o in [&a, &b, &c] {
            claims.apply(&watcher::Event::Apply(o.clone()));
        }
        // The watch missed the deletion of lobby-a.
        claims.apply(&watcher::Event::Init);
        claims.apply(&watcher::Event::InitApply(b.clone()));
        claims.apply(&watcher::Event::InitApply(c.clone()));
        assert_eq!(names(claims.apply(&watcher::Event::InitDone)), ["lobby-b", "lobby-c"]);
        // Nothing changed: nothing to report.
        claims.apply(&watcher::Event::Init);
        claims.apply(&watcher::Event::InitApply(b));
        claims.apply(&watcher::Event::InitApply(c));
        assert!(claims.apply(&watcher::Event::InitDone).is_empty());
    }

    #[test]
    fn oldest_breaks_ties_by_name_and_puts_unpersisted_last() {
        let mut fresh = Claim::of(&cc("a-fresh", 0, Some("x")));
        fresh.created = None;
        let b = Claim::of(&cc("b", 5, Some("x")));
        let c = Claim::of(&cc("c", 5, Some("x")));
        assert_eq!(oldest([&c, &fresh, &b]).unwrap().name, "b");
    }
}
