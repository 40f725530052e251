//! Delivery accounting: which accepted messages each member received, and
//! whether any arrived twice or out of order.
//!
//! Each bench message is identified by its origin, `(publisher slot, seq)`,
//! carried in the message's `meta` (see [`crate::meta`]). A publisher's
//! [`PublisherLog`] records which of its sequence numbers the server accepted
//! (`ok:true` reply with a `message_id`); a member's [`MemberLog`] records
//! which it received. Both are bit sets, so a run with tens of millions of
//! deliveries costs one bit per (member, message) rather than a stored id.
//!
//! Rules, per member connection (each connection is a member of exactly one
//! channel):
//! * **duplicated**: the same message delivered a second time (same origin;
//!   that covers the same message id twice, and also the same publish stored
//!   twice under two ids).
//! * **out-of-order**: a first delivery whose message id is not greater than
//!   the highest id already delivered on that connection (ids compared
//!   numerically, [`MessageId`]'s `Ord`). A duplicate is counted only as a
//!   duplicate.
//! * **lost**: an accepted message the member never received ([`reconcile`]).
//! * **unconfirmed**: a delivered bench message whose publish was not
//!   accepted (error reply, or no reply by the end of the run).
//! * **foreign**: a delivery without a usable bench origin (no/garbled meta,
//!   or a publisher that is not one of this channel's); it is still checked
//!   for order.
//! * **excused**: with `--reconnect`, an accepted message the member never
//!   received whose id falls inside a window the server itself declared
//!   unprovable (a `recovered: false` join reply or a `gap` push; see
//!   [`Excuses`]). Not a failure: the protocol tells the client to reload.
//!   Any other missing message is lost.

use shardchat_common::MessageId;

/// A growable set of sequence numbers, one bit each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

impl SeqSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `seq`; returns `false` when it was already present.
    pub fn insert(&mut self, seq: u64) -> bool {
        let (word, bit) = Self::locate(seq);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let mask = 1u64 << bit;
        if self.words[word] & mask != 0 {
            return false;
        }
        self.words[word] |= mask;
        self.len += 1;
        true
    }

    pub fn contains(&self, seq: u64) -> bool {
        let (word, bit) = Self::locate(seq);
        self.words.get(word).is_some_and(|w| w & (1u64 << bit) != 0)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many elements of `self` are not in `other`.
    pub fn count_missing_from(&self, other: &SeqSet) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let o = other.words.get(i).copied().unwrap_or(0);
                u64::from((w & !o).count_ones())
            })
            .sum()
    }

    /// Elements of `self` that are not in `other`, ascending.
    pub fn missing_from<'a>(&'a self, other: &'a SeqSet) -> impl Iterator<Item = u64> + 'a {
        self.words.iter().enumerate().flat_map(move |(i, w)| {
            let mut bits = w & !other.words.get(i).copied().unwrap_or(0);
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                Some(i as u64 * 64 + b)
            })
        })
    }

    fn locate(seq: u64) -> (usize, u32) {
        // Sequence numbers are bounded by the plan (see `MemberLog::new`),
        // so the word index always fits in memory and in usize.
        ((seq / 64) as usize, (seq % 64) as u32)
    }
}

/// Where a delivered bench message came from: the publisher's slot within
/// the channel (0..publishers_per_channel) and its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub slot: usize,
    pub seq: u64,
}

/// How one delivery was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First delivery of a bench message, in order.
    InOrder,
    /// First delivery of a bench message, but its id is not greater than one
    /// already delivered.
    OutOfOrder,
    /// Second (or later) delivery of the same bench message.
    Duplicate,
    /// No usable origin (checked for order only; counted as foreign).
    Foreign { out_of_order: bool },
}

impl Verdict {
    /// Whether this is the first delivery of a known bench message (so its
    /// latency should be recorded).
    pub fn is_first_delivery(self) -> bool {
        matches!(self, Verdict::InOrder | Verdict::OutOfOrder)
    }
}

/// Counters of one member connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberCounts {
    /// Every message push received (all verdicts).
    pub delivered: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub foreign: u64,
}

/// What one member connection received.
#[derive(Debug, Clone)]
pub struct MemberLog {
    seen: Vec<SeqSet>,
    max_seq: u64,
    highest: Option<MessageId>,
    counts: MemberCounts,
}

impl MemberLog {
    /// `publishers`: publisher slots in the channel; `max_seq`: exclusive
    /// upper bound of any publisher's sequence numbers. Origins outside
    /// these bounds are treated as foreign, so data from the network can
    /// never make the bit sets grow without bound.
    pub fn new(publishers: usize, max_seq: u64) -> Self {
        Self {
            seen: vec![SeqSet::new(); publishers],
            max_seq,
            highest: None,
            counts: MemberCounts::default(),
        }
    }

    /// Records one message push.
    pub fn record(&mut self, id: MessageId, origin: Option<Origin>) -> Verdict {
        self.counts.delivered += 1;
        let known = origin.filter(|o| o.slot < self.seen.len() && o.seq < self.max_seq);
        if let Some(o) = known
            && !self.seen[o.slot].insert(o.seq)
        {
            self.counts.duplicated += 1;
            return Verdict::Duplicate;
        }
        let out_of_order = self.highest.is_some_and(|h| id <= h);
        if !out_of_order {
            self.highest = Some(id);
        }
        if known.is_none() {
            self.counts.foreign += 1;
            if out_of_order {
                self.counts.out_of_order += 1;
            }
            return Verdict::Foreign { out_of_order };
        }
        if out_of_order {
            self.counts.out_of_order += 1;
            Verdict::OutOfOrder
        } else {
            Verdict::InOrder
        }
    }

    pub fn counts(&self) -> MemberCounts {
        self.counts
    }

    /// The highest message id delivered so far (what a re-join passes as `since`).
    pub fn highest(&self) -> Option<MessageId> {
        self.highest
    }

    /// The set of sequence numbers received from publisher `slot`.
    pub fn seen(&self, slot: usize) -> Option<&SeqSet> {
        self.seen.get(slot)
    }
}

/// Windows of one member's stream that the server declared it could not
/// prove complete: from the highest id delivered when the signal came (a
/// join reply with `recovered: false`, or a `gap` push) to the first id
/// delivered after it. A missing accepted message whose id lies strictly
/// inside such a window is excused, not lost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Excuses {
    closed: Vec<(Option<MessageId>, MessageId)>,
    /// An open window (signal seen, nothing delivered since): its lower end.
    open: Option<Option<MessageId>>,
}

impl Excuses {
    /// The server signalled a possible gap after `highest` (the member's
    /// highest delivered id at that moment).
    pub fn open(&mut self, highest: Option<MessageId>) {
        if self.open.is_none() {
            self.open = Some(highest);
        }
    }

    /// A message `id` was delivered: closes an open window.
    pub fn delivered(&mut self, id: MessageId) {
        if let Some(low) = self.open.take() {
            self.closed.push((low, id));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.closed.is_empty() && self.open.is_none()
    }

    /// Whether a missing message with this id is excused.
    pub fn covers(&self, id: MessageId) -> bool {
        let above = |low: &Option<MessageId>| low.is_none_or(|l| id > l);
        self.closed.iter().any(|(low, high)| above(low) && id < *high)
            || self.open.as_ref().is_some_and(above)
    }
}

/// What one publisher sent and what the server answered.
#[derive(Debug, Clone, Default)]
pub struct PublisherLog {
    sent: SeqSet,
    accepted: SeqSet,
    rejected: SeqSet,
    /// Sent, but the connection was lost before the reply and the publish
    /// was not retried: its outcome is unknown, and not the server's fault.
    interrupted: SeqSet,
    /// Message id of every accepted publish, kept only when the run needs
    /// it (`--reconnect`: to place a missing message against [`Excuses`]).
    ids: Option<std::collections::HashMap<u64, MessageId>>,
    /// Accepted publishes whose reply said `duplicate: true` (a retry that
    /// the server recognised by its nonce).
    pub duplicates: u64,
    /// Publishes sent again (same nonce) after an error reply or a lost connection.
    pub retries: u64,
    /// Replies for a seq that was never sent or was already answered.
    pub unexpected_replies: u64,
}

/// The server's answer to one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    Accepted,
    Rejected,
}

impl PublisherLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Also remembers the message id of every accepted publish.
    pub fn with_ids() -> Self {
        Self { ids: Some(Default::default()), ..Self::default() }
    }

    /// Records a send; a second send of the same seq counts as a retry.
    pub fn sent(&mut self, seq: u64) {
        if !self.sent.insert(seq) {
            self.retries += 1;
        }
    }

    /// Whether `seq` already has its final answer.
    pub fn is_settled(&self, seq: u64) -> bool {
        self.accepted.contains(seq) || self.rejected.contains(seq)
    }

    /// Records an accepted publish with the id the server gave it.
    pub fn accepted_as(&mut self, seq: u64, id: MessageId, duplicate: bool) -> bool {
        if !self.answered(seq, PublishOutcome::Accepted) {
            return false;
        }
        if duplicate {
            self.duplicates += 1;
        }
        if let Some(ids) = self.ids.as_mut() {
            ids.insert(seq, id);
        }
        true
    }

    /// The id an accepted publish got (only with [`PublisherLog::with_ids`]).
    pub fn id_of(&self, seq: u64) -> Option<MessageId> {
        self.ids.as_ref()?.get(&seq).copied()
    }

    /// The connection carrying `seq` was lost before its reply and it will
    /// not be sent again.
    pub fn interrupted(&mut self, seq: u64) {
        if self.sent.contains(seq) && !self.is_settled(seq) {
            self.interrupted.insert(seq);
        }
    }

    /// Sent, lost with its connection, never answered.
    pub fn interrupted_count(&self) -> u64 {
        self.interrupted.len()
    }

    /// Records the reply to publish `seq`. Returns `false` (and counts it)
    /// when that publish was never sent or already had its reply.
    pub fn answered(&mut self, seq: u64, outcome: PublishOutcome) -> bool {
        if !self.sent.contains(seq) || self.is_settled(seq) {
            self.unexpected_replies += 1;
            return false;
        }
        match outcome {
            PublishOutcome::Accepted => {
                self.accepted.insert(seq);
            }
            PublishOutcome::Rejected => {
                self.rejected.insert(seq);
            }
        }
        true
    }

    pub fn attempted(&self) -> u64 {
        self.sent.len()
    }

    pub fn accepted(&self) -> &SeqSet {
        &self.accepted
    }

    pub fn rejected(&self) -> u64 {
        self.rejected.len()
    }

    /// Sent but never answered (on a connection that stayed up).
    pub fn unanswered(&self) -> u64 {
        self.sent.len().saturating_sub(self.accepted.len() + self.rejected.len() + self.interrupted.len())
    }
}

/// The end-of-run comparison of one member against its channel's publishers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Accepted messages this member never received.
    pub lost: u64,
    /// Missing messages inside a window the server declared (see [`Excuses`]).
    pub excused: u64,
    /// The lowest (slot, seq) lost, and its id when known, for diagnosis.
    pub first_lost: Option<(usize, u64, Option<MessageId>)>,
    /// Bench messages received whose publish was not accepted.
    pub unconfirmed: u64,
}

/// Compares what `member` received with what the server accepted from each
/// publisher slot of its channel (`publishers[slot]`; `None` when that
/// publisher never connected, so nothing of it can be expected). Missing
/// messages inside `excuses` count as excused when their id is known.
pub fn reconcile(publishers: &[Option<&PublisherLog>], member: &MemberLog, excuses: &Excuses) -> Reconciled {
    let empty = SeqSet::new();
    let mut out = Reconciled::default();
    let slots = publishers.len().max(member.seen.len());
    for slot in 0..slots {
        let publisher = publishers.get(slot).copied().flatten();
        let acc = publisher.map_or(&empty, |p| &p.accepted);
        let seen = member.seen.get(slot).unwrap_or(&empty);
        for seq in acc.missing_from(seen) {
            let id = publisher.and_then(|p| p.id_of(seq));
            if id.is_some_and(|id| excuses.covers(id)) {
                out.excused += 1;
            } else {
                out.lost += 1;
                let lower = match out.first_lost {
                    None => true,
                    Some((_, _, known)) => matches!((id, known), (Some(a), Some(b)) if a < b),
                };
                if lower {
                    out.first_lost = Some((slot, seq, id));
                }
            }
        }
        out.unconfirmed += seen.count_missing_from(acc);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64, seq: u64) -> MessageId {
        MessageId::new(ms, seq)
    }

    fn o(slot: usize, seq: u64) -> Option<Origin> {
        Some(Origin { slot, seq })
    }

    fn seqs(seqs: impl IntoIterator<Item = u64>) -> SeqSet {
        let mut s = SeqSet::new();
        for q in seqs {
            s.insert(q);
        }
        s
    }

    /// A publisher whose publishes `seqs` were accepted, publish k as id (k+1)-0.
    fn accepted(seqs: impl IntoIterator<Item = u64>) -> PublisherLog {
        let mut p = PublisherLog::with_ids();
        for q in seqs {
            p.sent(q);
            assert!(p.accepted_as(q, id(q + 1, 0), false));
        }
        p
    }

    fn rec(publishers: &[Option<&PublisherLog>], m: &MemberLog) -> Reconciled {
        reconcile(publishers, m, &Excuses::default())
    }

    #[test]
    fn seq_set_basics() {
        let mut s = SeqSet::new();
        assert!(s.is_empty());
        assert!(s.insert(0));
        assert!(s.insert(63));
        assert!(s.insert(64));
        assert!(s.insert(1000));
        assert!(!s.insert(64), "second insert reports presence");
        assert_eq!(s.len(), 4);
        assert!(s.contains(1000) && s.contains(0) && !s.contains(1) && !s.contains(99_999));
        let other = seqs([0, 64, 5]);
        assert_eq!(s.count_missing_from(&other), 2); // 63, 1000
        assert_eq!(other.count_missing_from(&s), 1); // 5
        assert_eq!(SeqSet::new().count_missing_from(&s), 0);
    }

    #[test]
    fn clean_stream_is_clean() {
        let mut m = MemberLog::new(2, 10);
        assert_eq!(m.record(id(1, 0), o(0, 0)), Verdict::InOrder);
        assert_eq!(m.record(id(1, 1), o(1, 0)), Verdict::InOrder);
        assert_eq!(m.record(id(2, 0), o(0, 1)), Verdict::InOrder);
        assert_eq!(m.counts(), MemberCounts { delivered: 3, ..Default::default() });
        let r = rec(&[Some(&accepted([0, 1])), Some(&accepted([0]))], &m);
        assert_eq!(r, Reconciled::default());
    }

    #[test]
    fn detects_a_lost_message() {
        let mut m = MemberLog::new(1, 10);
        m.record(id(1, 0), o(0, 0));
        // seq 1 never arrives
        m.record(id(3, 0), o(0, 2));
        let r = rec(&[Some(&accepted([0, 1, 2]))], &m);
        assert_eq!(r.lost, 1);
        assert_eq!(r.unconfirmed, 0);
        // nothing at all received: everything accepted is lost
        let empty = MemberLog::new(1, 10);
        assert_eq!(rec(&[Some(&accepted([0, 1, 2]))], &empty).lost, 3);
    }

    #[test]
    fn loss_is_per_publisher_slot() {
        // Same seq from two publishers are different messages.
        let mut m = MemberLog::new(2, 10);
        m.record(id(1, 0), o(0, 0));
        let r = rec(&[Some(&accepted([0])), Some(&accepted([0]))], &m);
        assert_eq!(r.lost, 1);
    }

    #[test]
    fn detects_a_duplicate_with_the_same_id() {
        let mut m = MemberLog::new(1, 10);
        m.record(id(1, 0), o(0, 0));
        m.record(id(2, 0), o(0, 1));
        assert_eq!(m.record(id(2, 0), o(0, 1)), Verdict::Duplicate);
        let c = m.counts();
        assert_eq!((c.delivered, c.duplicated, c.out_of_order), (3, 1, 0), "a dup is not also out of order");
        // A duplicate does not hide a loss and is not a loss itself.
        let r = rec(&[Some(&accepted([0, 1]))], &m);
        assert_eq!(r, Reconciled::default());
    }

    #[test]
    fn detects_a_publish_stored_twice_under_two_ids() {
        let mut m = MemberLog::new(1, 10);
        m.record(id(1, 0), o(0, 0));
        assert_eq!(m.record(id(1, 1), o(0, 0)), Verdict::Duplicate);
        assert_eq!(m.counts().duplicated, 1);
    }

    #[test]
    fn detects_reordering() {
        let mut m = MemberLog::new(1, 10);
        assert_eq!(m.record(id(1, 0), o(0, 0)), Verdict::InOrder);
        assert_eq!(m.record(id(3, 0), o(0, 2)), Verdict::InOrder);
        assert_eq!(m.record(id(2, 0), o(0, 1)), Verdict::OutOfOrder);
        assert_eq!(m.record(id(4, 0), o(0, 3)), Verdict::InOrder);
        assert_eq!(m.counts().out_of_order, 1);
        // Everything did arrive, so nothing is lost.
        assert_eq!(rec(&[Some(&accepted([0, 1, 2, 3]))], &m).lost, 0);
    }

    #[test]
    fn order_is_numeric_not_lexicographic() {
        // "999-0" < "1000-0" numerically but not as strings.
        let mut m = MemberLog::new(1, 10);
        m.record("999-0".parse().unwrap(), o(0, 0));
        assert_eq!(m.record("1000-0".parse().unwrap(), o(0, 1)), Verdict::InOrder);
        m.record("1000-9".parse().unwrap(), o(0, 2));
        assert_eq!(m.record("1000-10".parse().unwrap(), o(0, 3)), Verdict::InOrder);
        assert_eq!(m.counts().out_of_order, 0);
    }

    #[test]
    fn every_message_after_a_jump_ahead_is_out_of_order() {
        // 5 arrives first: 1..4 were all delivered after a later message.
        let mut m = MemberLog::new(1, 10);
        m.record(id(5, 0), o(0, 4));
        for s in 0..4 {
            assert_eq!(m.record(id(s + 1, 0), o(0, s)), Verdict::OutOfOrder);
        }
        assert_eq!(m.counts().out_of_order, 4);
    }

    #[test]
    fn an_equal_id_with_a_different_origin_is_out_of_order() {
        // Two different publishes delivered under the same id.
        let mut m = MemberLog::new(1, 10);
        m.record(id(1, 0), o(0, 0));
        assert_eq!(m.record(id(1, 0), o(0, 1)), Verdict::OutOfOrder);
    }

    #[test]
    fn unconfirmed_deliveries_are_counted() {
        let mut m = MemberLog::new(1, 10);
        m.record(id(1, 0), o(0, 0));
        m.record(id(2, 0), o(0, 1)); // rejected or unanswered publish
        let r = rec(&[Some(&accepted([0]))], &m);
        assert_eq!(r, Reconciled { lost: 0, excused: 0, unconfirmed: 1, first_lost: None });
        // A publisher that never connected: nothing expected from it.
        let r = rec(&[None], &m);
        assert_eq!(r, Reconciled { lost: 0, excused: 0, unconfirmed: 2, first_lost: None });
    }

    #[test]
    fn foreign_and_out_of_bounds_origins_are_foreign() {
        let mut m = MemberLog::new(1, 10);
        assert_eq!(m.record(id(1, 0), None), Verdict::Foreign { out_of_order: false });
        assert_eq!(m.record(id(2, 0), o(1, 0)), Verdict::Foreign { out_of_order: false });
        assert_eq!(m.record(id(3, 0), o(0, 10)), Verdict::Foreign { out_of_order: false });
        assert_eq!(m.record(id(3, 0), o(0, u64::MAX)), Verdict::Foreign { out_of_order: true });
        let c = m.counts();
        assert_eq!((c.foreign, c.out_of_order, c.duplicated), (4, 1, 0));
        assert!(m.seen(0).is_some_and(SeqSet::is_empty));
        assert!(!Verdict::Foreign { out_of_order: false }.is_first_delivery());
        assert!(Verdict::OutOfOrder.is_first_delivery());
    }

    #[test]
    fn publisher_log_tracks_replies() {
        let mut p = PublisherLog::new();
        for s in 0..4 {
            p.sent(s);
        }
        assert!(p.answered(0, PublishOutcome::Accepted));
        assert!(p.answered(1, PublishOutcome::Rejected));
        assert!(p.answered(2, PublishOutcome::Accepted));
        assert!(!p.answered(2, PublishOutcome::Accepted), "second reply for one id");
        assert!(!p.answered(1, PublishOutcome::Accepted), "second reply after a rejection");
        assert!(!p.answered(9, PublishOutcome::Accepted), "reply for an id never sent");
        assert_eq!(p.attempted(), 4);
        assert_eq!(p.accepted().len(), 2);
        assert_eq!(p.rejected(), 1);
        assert_eq!(p.unanswered(), 1);
        assert_eq!(p.unexpected_replies, 3);
    }

    #[test]
    fn missing_from_lists_the_difference_in_order() {
        let a = seqs([0, 3, 63, 64, 200]);
        let b = seqs([3, 64]);
        assert_eq!(a.missing_from(&b).collect::<Vec<_>>(), [0, 63, 200]);
        assert_eq!(b.missing_from(&a).count(), 0);
        assert_eq!(a.missing_from(&SeqSet::new()).count() as u64, a.len());
    }

    #[test]
    fn excuses_cover_only_the_declared_window() {
        let mut e = Excuses::default();
        assert!(e.is_empty() && !e.covers(id(5, 0)));
        e.open(Some(id(3, 0))); // gap signalled after 3-0 ...
        e.open(Some(id(4, 0))); // (a second signal keeps the earlier lower end)
        assert!(e.covers(id(9, 0)), "an open window reaches to the end");
        e.delivered(id(7, 0)); // ... closed by the next delivery
        assert!(!e.covers(id(3, 0)) && e.covers(id(4, 0)) && e.covers(id(6, 9)) && !e.covers(id(7, 0)));
        assert!(!e.covers(id(8, 0)));
        e.delivered(id(8, 0)); // no window open: nothing changes
        assert!(!e.covers(id(7, 5)));
        let mut from_start = Excuses::default();
        from_start.open(None);
        from_start.delivered(id(2, 0));
        assert!(from_start.covers(id(1, 0)) && !from_start.covers(id(2, 0)));
    }

    #[test]
    fn missing_messages_inside_a_window_are_excused_outside_lost() {
        // Accepted 0..6 as ids 1-0..6-0; the member got 1-0, then a gap
        // signal, then 5-0, 6-0. 2-0..4-0 are excused; if 6-0 were missing
        // it would be lost.
        let p = accepted(0..6);
        let mut m = MemberLog::new(1, 10);
        let mut e = Excuses::default();
        m.record(id(1, 0), o(0, 0));
        e.open(m.highest());
        for q in [4, 5] {
            m.record(id(q + 1, 0), o(0, q));
            e.delivered(id(q + 1, 0));
        }
        let r = reconcile(&[Some(&p)], &m, &e);
        assert_eq!(r, Reconciled { lost: 0, excused: 3, unconfirmed: 0, first_lost: None });
        let mut m2 = MemberLog::new(1, 10);
        m2.record(id(1, 0), o(0, 0));
        m2.record(id(5, 0), o(0, 4));
        let r = reconcile(&[Some(&p)], &m2, &e);
        assert_eq!((r.lost, r.excused), (1, 3), "6-0 is past the window: lost");
        // Without ids (no --reconnect) nothing can be placed in a window.
        let mut plain = PublisherLog::new();
        plain.sent(1);
        plain.answered(1, PublishOutcome::Accepted);
        let r = reconcile(&[Some(&plain)], &MemberLog::new(1, 10), &e);
        assert_eq!((r.lost, r.excused), (1, 0));
    }

    #[test]
    fn retries_duplicates_and_interruptions() {
        let mut p = PublisherLog::with_ids();
        p.sent(0);
        p.sent(0); // retried
        assert!(p.accepted_as(0, id(1, 0), true));
        assert_eq!((p.retries, p.duplicates), (1, 1));
        assert_eq!(p.id_of(0), Some(id(1, 0)));
        p.sent(1);
        p.interrupted(1);
        p.interrupted(0); // settled: not interrupted
        p.interrupted(7); // never sent
        assert_eq!(p.interrupted_count(), 1);
        assert_eq!(p.unanswered(), 0);
        p.sent(2);
        assert_eq!(p.unanswered(), 1);
        assert!(p.is_settled(0) && !p.is_settled(2));
    }
}
