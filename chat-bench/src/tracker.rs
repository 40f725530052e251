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

    /// The set of sequence numbers received from publisher `slot`.
    pub fn seen(&self, slot: usize) -> Option<&SeqSet> {
        self.seen.get(slot)
    }
}

/// What one publisher sent and what the server answered.
#[derive(Debug, Clone, Default)]
pub struct PublisherLog {
    sent: SeqSet,
    accepted: SeqSet,
    rejected: SeqSet,
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

    pub fn sent(&mut self, seq: u64) {
        self.sent.insert(seq);
    }

    /// Records the reply to publish `seq`. Returns `false` (and counts it)
    /// when that publish was never sent or already had its reply.
    pub fn answered(&mut self, seq: u64, outcome: PublishOutcome) -> bool {
        let already = self.accepted.contains(seq) || self.rejected.contains(seq);
        if !self.sent.contains(seq) || already {
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

    /// Sent but never answered.
    pub fn unanswered(&self) -> u64 {
        self.sent.len().saturating_sub(self.accepted.len() + self.rejected.len())
    }
}

/// The end-of-run comparison of one member against its channel's publishers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Accepted messages this member never received.
    pub lost: u64,
    /// Bench messages received whose publish was not accepted.
    pub unconfirmed: u64,
}

/// Compares what `member` received with what the server accepted from each
/// publisher slot of its channel (`accepted[slot]`; `None` when that
/// publisher never connected, so nothing of it can be expected).
pub fn reconcile(accepted: &[Option<&SeqSet>], member: &MemberLog) -> Reconciled {
    let empty = SeqSet::new();
    let mut out = Reconciled::default();
    let slots = accepted.len().max(member.seen.len());
    for slot in 0..slots {
        let acc = accepted.get(slot).copied().flatten().unwrap_or(&empty);
        let seen = member.seen.get(slot).unwrap_or(&empty);
        out.lost += acc.count_missing_from(seen);
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

    fn accepted(seqs: impl IntoIterator<Item = u64>) -> SeqSet {
        let mut s = SeqSet::new();
        for q in seqs {
            s.insert(q);
        }
        s
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
        let other = accepted([0, 64, 5]);
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
        let r = reconcile(&[Some(&accepted([0, 1])), Some(&accepted([0]))], &m);
        assert_eq!(r, Reconciled::default());
    }

    #[test]
    fn detects_a_lost_message() {
        let mut m = MemberLog::new(1, 10);
        m.record(id(1, 0), o(0, 0));
        // seq 1 never arrives
        m.record(id(3, 0), o(0, 2));
        let r = reconcile(&[Some(&accepted([0, 1, 2]))], &m);
        assert_eq!(r.lost, 1);
        assert_eq!(r.unconfirmed, 0);
        // nothing at all received: everything accepted is lost
        let empty = MemberLog::new(1, 10);
        assert_eq!(reconcile(&[Some(&accepted([0, 1, 2]))], &empty).lost, 3);
    }

    #[test]
    fn loss_is_per_publisher_slot() {
        // Same seq from two publishers are different messages.
        let mut m = MemberLog::new(2, 10);
        m.record(id(1, 0), o(0, 0));
        let r = reconcile(&[Some(&accepted([0])), Some(&accepted([0]))], &m);
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
        let r = reconcile(&[Some(&accepted([0, 1]))], &m);
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
        assert_eq!(reconcile(&[Some(&accepted([0, 1, 2, 3]))], &m).lost, 0);
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
        let r = reconcile(&[Some(&accepted([0]))], &m);
        assert_eq!(r, Reconciled { lost: 0, unconfirmed: 1 });
        // A publisher that never connected: nothing expected from it.
        let r = reconcile(&[None], &m);
        assert_eq!(r, Reconciled { lost: 0, unconfirmed: 2 });
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
}
