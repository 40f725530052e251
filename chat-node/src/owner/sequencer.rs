//! The owner's sequencer: one FIFO per channel, drained into batches.
//!
//! Every operation on an owned channel (publish, join, leave; local or from
//! another node) is queued on its channel. One task takes whatever is ready
//! at the head of every idle channel — up to a bound per channel and per
//! batch — and hands it to the backend as one call (one Lua script in
//! Redis), keeping up to a few calls in flight. A channel is in at most one
//! call at a time, so its operations are applied in the order they were
//! queued; under load batches grow by themselves, so the cost per message
//! falls instead of requests queueing behind one round trip each.
//!
//! A publish whose moderation is still running (external service) holds its
//! channel's later operations back until it is decided. A call that fails
//! ambiguously (timeout) keeps its channels fenced until every publish in it
//! has been looked up after its deadline, so a later batch can never
//! overtake an earlier one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use shardchat_common::protocol::ErrorCode;
use shardchat_common::{ChannelName, MessageId, Retention};
use tokio::sync::Notify;

use super::backend::{ApplyError, ChannelBatch, OpResult, OwnerBackend, PublishOp, ReadyOp};
use crate::error::{ChatError, ChatResult};
use crate::metrics::Metrics;

/// A publish's result as the edge reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub id: MessageId,
    /// A repeated nonce: nothing new was stored.
    pub duplicate: bool,
}

/// What one queued operation came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpOutcome {
    Published(Published),
    Joined { members: usize },
    Left,
}

/// Called exactly once with the operation's outcome.
pub type Respond = Box<dyn FnOnce(ChatResult<OpOutcome>) + Send>;

/// The result slot of a publish whose moderation runs in the background.
pub type ModerationSlot = Arc<Mutex<Option<ChatResult<ReadyOp>>>>;

/// A queued operation: ready, or waiting for its moderation verdict.
pub enum Pending {
    Ready(ReadyOp),
    Moderating(ModerationSlot),
}

/// Channel settings in force for a queued operation.
#[derive(Debug, Clone, Copy)]
pub struct ChannelSettings {
    pub retention: Retention,
    pub max_members: u32,
    pub dynamic: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Operations of one channel in one backend call.
    pub per_channel: usize,
    /// Operations in one backend call.
    pub per_batch: usize,
    /// Backend calls in flight.
    pub in_flight: usize,
    /// Operations waiting on one channel before new ones are refused (`unavailable`).
    pub queued_per_channel: usize,
    /// Operations waiting in all before new ones are refused.
    pub queued_total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_channel: 256,
            per_batch: 1024,
            in_flight: 4,
            queued_per_channel: 4096,
            queued_total: 100_000,
        }
    }
}

struct Item {
    pending: Pending,
    respond: Respond,
}

struct ChannelQueue {
    items: VecDeque<Item>,
    /// In a backend call (or being resolved after an ambiguous one).
    busy: bool,
    /// Listed in `State::runnable`.
    scheduled: bool,
    settings: ChannelSettings,
}

impl ChannelQueue {
    fn head_ready(&self) -> bool {
        match self.items.front().map(|i| &i.pending) {
            Some(Pending::Ready(_)) => true,
            Some(Pending::Moderating(slot)) => slot.lock().unwrap_or_else(|p| p.into_inner()).is_some(),
            None => false,
        }
    }
}

#[derive(Default)]
struct State {
    channels: HashMap<ChannelName, ChannelQueue>,
    runnable: VecDeque<ChannelName>,
    queued: usize,
}

impl State {
    fn schedule_if_ready(&mut self, channel: &ChannelName) -> bool {
        let Some(q) = self.channels.get_mut(channel) else { return false };
        if !q.busy && !q.scheduled && q.head_ready() {
            q.scheduled = true;
            self.runnable.push_back(channel.clone());
            return true;
        }
        false
    }
}

/// One backend call being prepared or in flight.
struct Batch {
    batches: Arc<Vec<ChannelBatch>>,
    responders: Vec<Vec<Respond>>,
}

pub struct Sequencer {
    backend: Arc<dyn OwnerBackend>,
    state: Mutex<State>,
    wake: Notify,
    limits: Limits,
    metrics: Arc<Metrics>,
}

/// Margin past a deadline before an ambiguous publish is looked up.
const LOOKUP_MARGIN: Duration = Duration::from_millis(250);

impl Sequencer {
    pub fn new(backend: Arc<dyn OwnerBackend>, limits: Limits, metrics: Arc<Metrics>) -> Arc<Sequencer> {
        Arc::new(Sequencer {
            backend,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            limits,
            metrics,
        })
    }

    pub fn backend(&self) -> &Arc<dyn OwnerBackend> {
        &self.backend
    }

    /// Queues `pending` on `channel`; `respond` is called once it is applied or refused.
    pub fn submit(
        &self,
        channel: &ChannelName,
        settings: ChannelSettings,
        pending: Pending,
        respond: Respond,
    ) {
        let refused = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let total_full = st.queued >= self.limits.queued_total;
            let q = st.channels.entry(channel.clone()).or_insert_with(|| ChannelQueue {
                items: VecDeque::new(),
                busy: false,
                scheduled: false,
                settings,
            });
            if total_full || q.items.len() >= self.limits.queued_per_channel {
                Some(respond)
            } else {
                q.settings = settings;
                q.items.push_back(Item { pending, respond });
                st.queued += 1;
                self.metrics.owner_queued.set(st.queued as i64);
                if st.schedule_if_ready(channel) {
                    self.wake.notify_one();
                }
                None
            }
        };
        if let Some(respond) = refused {
            self.metrics.owner_overloaded.inc();
            respond(Err(ChatError::unavailable(format!(
                "the owner of {channel} is overloaded; try again shortly"
            ))));
        }
    }

    /// A background moderation of `channel` has filled its slot.
    pub fn moderation_done(&self, channel: &ChannelName) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.schedule_if_ready(channel) {
            self.wake.notify_one();
        }
    }

    /// Runs the sequencer until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut in_flight = FuturesUnordered::new();
        loop {
            while in_flight.len() < self.limits.in_flight {
                let Some(batch) = self.take_batch() else { break };
                // Its own task: calls of different channels run on several cores
                // (the embedded backend fans out inside the call).
                let backend = self.backend.clone();
                let batches = batch.batches.clone();
                let call = tokio::spawn(async move { backend.apply(batches).await });
                in_flight.push(async move {
                    let result = call.await.unwrap_or_else(|e| {
                        Err(ApplyError::Ambiguous(ChatError::unavailable(format!(
                            "the storage call failed: {e}"
                        ))))
                    });
                    (batch, result)
                });
            }
            tokio::select! {
                () = self.wake.notified() => {}
                Some((batch, result)) = in_flight.next(), if !in_flight.is_empty() => self.finish(batch, result),
            }
        }
    }

    /// Takes the ready heads of runnable channels, marking them busy.
    fn take_batch(&self) -> Option<Batch> {
        let mut refused: Vec<(Respond, ChatError)> = Vec::new();
        let mut batches = Vec::new();
        let mut responders = Vec::new();
        let mut total = 0;
        let now = self.backend.now_ms();
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            while total < self.limits.per_batch {
                let Some(channel) = st.runnable.pop_front() else { break };
                let mut taken = 0;
                let Some(q) = st.channels.get_mut(&channel) else { continue };
                q.scheduled = false;
                let mut ops = Vec::new();
                let mut rs = Vec::new();
                while ops.len() < self.limits.per_channel && total + ops.len() < self.limits.per_batch {
                    let op = match q.items.front().map(|i| &i.pending) {
                        Some(Pending::Ready(_)) => {
                            match q.items.pop_front().map(|i| (i.pending, i.respond)) {
                                Some((Pending::Ready(op), respond)) => Ok((op, respond)),
                                _ => break,
                            }
                        }
                        Some(Pending::Moderating(slot)) => {
                            let decided = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                            match decided {
                                None => break,
                                Some(decided) => match q.items.pop_front() {
                                    Some(item) => match decided {
                                        Ok(op) => Ok((op, item.respond)),
                                        Err(e) => Err((item.respond, e)),
                                    },
                                    None => break,
                                },
                            }
                        }
                        None => break,
                    };
                    taken += 1;
                    match op {
                        Ok((ReadyOp::Publish(p), respond)) if expired(&p, now) => {
                            refused.push((respond, expired_error()));
                        }
                        Ok((op, respond)) => {
                            ops.push(op);
                            rs.push(respond);
                        }
                        Err(refusal) => refused.push(refusal),
                    }
                }
                let settings = q.settings;
                if !ops.is_empty() {
                    q.busy = true;
                    total += ops.len();
                    batches.push(ChannelBatch {
                        channel: channel.clone(),
                        retention: settings.retention,
                        max_members: settings.max_members,
                        dynamic: settings.dynamic,
                        ops,
                    });
                    responders.push(rs);
                } else if q.items.is_empty() {
                    st.channels.remove(&channel);
                } else {
                    st.schedule_if_ready(&channel);
                }
                st.queued = st.queued.saturating_sub(taken);
            }
            self.metrics.owner_queued.set(st.queued as i64);
        }
        for (respond, e) in refused {
            respond(Err(e));
        }
        if batches.is_empty() {
            return None;
        }
        self.metrics.owner_batch_ops.observe(total as f64);
        Some(Batch { batches: Arc::new(batches), responders })
    }

    fn finish(self: &Arc<Self>, batch: Batch, result: Result<Vec<Vec<OpResult>>, ApplyError>) {
        match result {
            Ok(results) => {
                for ((cb, rs), results) in batch.batches.iter().zip(batch.responders).zip(results) {
                    let mut results = results.into_iter();
                    for (op, respond) in cb.ops.iter().zip(rs) {
                        let outcome = match results.next() {
                            Some(r) => outcome(&cb.channel, op, r),
                            None => Err(ChatError::unavailable("the owner's storage gave no result")),
                        };
                        if matches!(outcome, Ok(OpOutcome::Published(Published { duplicate: false, .. }))) {
                            self.metrics.published.inc();
                        }
                        respond(outcome);
                    }
                }
                self.release(&batch.batches);
            }
            Err(ApplyError::Refused(e)) => {
                for rs in batch.responders {
                    for respond in rs {
                        respond(Err(e.clone()));
                    }
                }
                self.release(&batch.batches);
            }
            Err(ApplyError::Ambiguous(e)) => {
                tracing::warn!(error = %e, "a commit may or may not have been applied; resolving after its deadlines");
                let this = self.clone();
                tokio::spawn(async move { this.resolve(batch, e).await });
            }
        }
    }

    /// After an ambiguous call: waits out each publish's deadline, then
    /// looks it up, so the answer is exact (stored with this id, or not stored).
    async fn resolve(self: Arc<Self>, batch: Batch, error: ChatError) {
        for (cb, rs) in batch.batches.iter().zip(batch.responders) {
            for (op, respond) in cb.ops.iter().zip(rs) {
                let outcome = match op {
                    ReadyOp::Publish(p) => self.look_up_after_deadline(&cb.channel, p).await,
                    // Joins and leaves are idempotent: the edge repeats or undoes them.
                    _ => Err(ChatError::unavailable(error.message.clone())),
                };
                respond(outcome);
            }
        }
        self.release(&batch.batches);
    }

    async fn look_up_after_deadline(&self, channel: &ChannelName, op: &PublishOp) -> ChatResult<OpOutcome> {
        let id =
            after_deadline(op.deadline_ms, || self.backend.now_ms(), || self.backend.lookup(channel, op))
                .await?;
        Ok(OpOutcome::Published(Published { id, duplicate: false }))
    }

    /// The channels of `batches` are idle again.
    fn release(&self, batches: &[ChannelBatch]) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut any = false;
        for cb in batches {
            if let Some(q) = st.channels.get_mut(&cb.channel) {
                q.busy = false;
                if q.items.is_empty() {
                    st.channels.remove(&cb.channel);
                } else {
                    any |= st.schedule_if_ready(&cb.channel);
                }
            }
        }
        drop(st);
        if any {
            self.wake.notify_one();
        }
    }
}

/// The exact outcome of a write that failed ambiguously: waits until the
/// storage's clock (`now`) is past `deadline` — from then on the commit
/// script refuses the write, so the answer is final — then looks its dedup
/// record up: the id it was stored under, `unavailable` (not stored), or
/// `timeout` when the record cannot be read.
pub async fn after_deadline<L, Fut>(
    deadline: Option<u64>,
    now: impl Fn() -> Option<u64>,
    lookup: L,
) -> ChatResult<MessageId>
where
    L: Fn() -> Fut,
    Fut: std::future::Future<Output = ChatResult<Option<MessageId>>>,
{
    let Some(deadline) = deadline else {
        return Err(ChatError::new(ErrorCode::Timeout, "the outcome of this request is unknown"));
    };
    for _ in 0..200 {
        match now() {
            Some(now) if now > deadline + LOOKUP_MARGIN.as_millis() as u64 => break,
            _ => tokio::time::sleep(LOOKUP_MARGIN).await,
        }
    }
    for attempt in 0..3 {
        match lookup().await {
            Ok(Some(id)) => return Ok(id),
            Ok(None) => return Err(expired_error()),
            Err(e) if attempt == 2 => {
                return Err(ChatError::new(
                    ErrorCode::Timeout,
                    format!(
                        "the outcome of this request is unknown ({}); retry with the same nonce",
                        e.message
                    ),
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    Err(ChatError::new(
        ErrorCode::Timeout,
        "the outcome of this request is unknown; retry with the same nonce",
    ))
}

fn expired(op: &PublishOp, now: Option<u64>) -> bool {
    matches!((op.deadline_ms, now), (Some(deadline), Some(now)) if now > deadline)
}

fn expired_error() -> ChatError {
    ChatError::unavailable("the request waited too long and was not stored; try again")
}

fn outcome(channel: &ChannelName, op: &ReadyOp, result: OpResult) -> ChatResult<OpOutcome> {
    match (op, result) {
        (ReadyOp::Publish(_), OpResult::Published { id, duplicate }) => {
            Ok(OpOutcome::Published(Published { id, duplicate }))
        }
        (_, OpResult::Expired) => Err(expired_error()),
        (ReadyOp::Join { .. }, OpResult::Joined { members }) => Ok(OpOutcome::Joined { members }),
        (ReadyOp::Join { .. }, OpResult::Full) => Err(super::channel_full(channel)),
        (ReadyOp::Join { .. }, OpResult::TooManyChannels) => Err(super::too_many_channels(channel)),
        (ReadyOp::Leave { .. }, OpResult::Left) => Ok(OpOutcome::Left),
        (_, other) => Err(ChatError::unavailable(format!("unexpected storage result {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::PushTemplate;
    use crate::history::Draft;
    use crate::owner::backend::Dedup;
    use futures_util::FutureExt;
    use futures_util::future::BoxFuture;
    use tokio::sync::{mpsc, oneshot};

    type Done = oneshot::Sender<Result<Vec<Vec<OpResult>>, ApplyError>>;
    type Calls = mpsc::UnboundedReceiver<(Arc<Vec<ChannelBatch>>, Done)>;

    /// A backend whose calls the test completes by hand.
    struct Manual {
        calls: mpsc::UnboundedSender<(Arc<Vec<ChannelBatch>>, Done)>,
        stored: Mutex<HashMap<String, MessageId>>,
        now: Mutex<u64>,
    }

    impl OwnerBackend for Manual {
        fn apply(
            &self,
            batches: Arc<Vec<ChannelBatch>>,
        ) -> BoxFuture<'static, Result<Vec<Vec<OpResult>>, ApplyError>> {
            let (tx, rx) = oneshot::channel();
            let _ = self.calls.send((batches, tx));
            async move { rx.await.unwrap_or(Err(ApplyError::Refused(ChatError::unavailable("dropped")))) }
                .boxed()
        }
        fn lookup(
            &self,
            _: &ChannelName,
            op: &PublishOp,
        ) -> BoxFuture<'static, ChatResult<Option<MessageId>>> {
            let found = self.stored.lock().unwrap().get(&op.draft.text).copied();
            futures_util::future::ready(Ok(found)).boxed()
        }
        fn now_ms(&self) -> Option<u64> {
            Some(*self.now.lock().unwrap())
        }
        fn members<'a>(&'a self, _: &'a ChannelName) -> BoxFuture<'a, ChatResult<Vec<String>>> {
            futures_util::future::ready(Ok(Vec::new())).boxed()
        }
        fn member_counts(&self) -> BoxFuture<'_, ChatResult<Vec<(ChannelName, usize)>>> {
            futures_util::future::ready(Ok(Vec::new())).boxed()
        }
    }

    fn publish(channel: &ChannelName, text: &str, deadline_ms: Option<u64>) -> ReadyOp {
        ReadyOp::Publish(Box::new(PublishOp {
            draft: Draft {
                channel: channel.clone(),
                from: Arc::from("u"),
                text: text.into(),
                meta: None,
                accepted_at_micros: 0,
            },
            meta_json: None,
            push: PushTemplate::new(channel, "u", text, None),
            dedup: Dedup::None,
            deadline_ms,
        }))
    }

    fn settings() -> ChannelSettings {
        ChannelSettings { retention: Retention::default(), max_members: 10, dynamic: false }
    }

    fn start(limits: Limits) -> (Arc<Sequencer>, Arc<Manual>, Calls) {
        let (tx, rx) = mpsc::unbounded_channel();
        let backend =
            Arc::new(Manual { calls: tx, stored: Mutex::new(HashMap::new()), now: Mutex::new(1_000) });
        let seq = Sequencer::new(backend.clone(), limits, Arc::new(Metrics::new()));
        tokio::spawn(seq.clone().run());
        (seq, backend, rx)
    }

    fn responder() -> (Respond, oneshot::Receiver<ChatResult<OpOutcome>>) {
        let (tx, rx) = oneshot::channel();
        (Box::new(move |r| drop(tx.send(r))), rx)
    }

    fn texts(b: &ChannelBatch) -> Vec<String> {
        b.ops
            .iter()
            .map(|op| match op {
                ReadyOp::Publish(p) => p.draft.text.clone(),
                _ => "?".into(),
            })
            .collect()
    }

    fn ids(n: usize) -> Vec<OpResult> {
        (0..n).map(|i| OpResult::Published { id: MessageId::new(1, i as u64), duplicate: false }).collect()
    }

    #[tokio::test]
    async fn a_busy_channel_batches_what_queued_meanwhile_in_order() {
        let (seq, _, mut calls) = start(Limits::default());
        let c = ChannelName::new("c").unwrap();
        let (r0, rx0) = responder();
        seq.submit(&c, settings(), Pending::Ready(publish(&c, "0", None)), r0);
        let (first, done0) = calls.recv().await.unwrap();
        assert_eq!(texts(&first[0]), ["0"]);
        // While the first call is in flight, the channel is busy: these wait and go together.
        let mut rxs = Vec::new();
        for i in 1..=5 {
            let (r, rx) = responder();
            seq.submit(&c, settings(), Pending::Ready(publish(&c, &i.to_string(), None)), r);
            rxs.push(rx);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(calls.try_recv().is_err(), "a channel is in one call at a time");
        done0.send(Ok(vec![ids(1)])).unwrap();
        assert!(matches!(rx0.await.unwrap(), Ok(OpOutcome::Published(_))));
        let (second, done1) = calls.recv().await.unwrap();
        assert_eq!(texts(&second[0]), ["1", "2", "3", "4", "5"]);
        done1.send(Ok(vec![ids(5)])).unwrap();
        for (i, rx) in rxs.into_iter().enumerate() {
            match rx.await.unwrap() {
                Ok(OpOutcome::Published(p)) => assert_eq!(p.id, MessageId::new(1, i as u64)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn other_channels_do_not_wait_for_a_busy_one() {
        let (seq, _, mut calls) = start(Limits::default());
        let (a, b) = (ChannelName::new("a").unwrap(), ChannelName::new("b").unwrap());
        let (r, _rxa) = responder();
        seq.submit(&a, settings(), Pending::Ready(publish(&a, "a0", None)), r);
        let (first, _keep_a_busy) = calls.recv().await.unwrap();
        assert_eq!(first[0].channel, a);
        let (r, rxb) = responder();
        seq.submit(&b, settings(), Pending::Ready(publish(&b, "b0", None)), r);
        let (second, done) = calls.recv().await.unwrap();
        assert_eq!(second[0].channel, b);
        done.send(Ok(vec![ids(1)])).unwrap();
        assert!(rxb.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_pending_moderation_holds_back_later_ops_of_its_channel() {
        let (seq, _, mut calls) = start(Limits::default());
        let c = ChannelName::new("c").unwrap();
        let slot: ModerationSlot = Arc::new(Mutex::new(None));
        let (r0, rx0) = responder();
        seq.submit(&c, settings(), Pending::Moderating(slot.clone()), r0);
        let (r1, rx1) = responder();
        seq.submit(&c, settings(), Pending::Ready(publish(&c, "1", None)), r1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(calls.try_recv().is_err(), "the later publish must not overtake the one being moderated");
        *slot.lock().unwrap() = Some(Ok(publish(&c, "0", None)));
        seq.moderation_done(&c);
        let (batch, done) = calls.recv().await.unwrap();
        assert_eq!(texts(&batch[0]), ["0", "1"]);
        done.send(Ok(vec![ids(2)])).unwrap();
        assert!(rx0.await.unwrap().is_ok());
        assert!(rx1.await.unwrap().is_ok());

        // A rejected message answers its sender and lets the rest through.
        let slot: ModerationSlot = Arc::new(Mutex::new(None));
        let (r2, rx2) = responder();
        seq.submit(&c, settings(), Pending::Moderating(slot.clone()), r2);
        let (r3, rx3) = responder();
        seq.submit(&c, settings(), Pending::Ready(publish(&c, "3", None)), r3);
        *slot.lock().unwrap() = Some(Err(ChatError::new(ErrorCode::Filtered, "no")));
        seq.moderation_done(&c);
        assert_eq!(rx2.await.unwrap().unwrap_err().code, ErrorCode::Filtered);
        let (batch, done) = calls.recv().await.unwrap();
        assert_eq!(texts(&batch[0]), ["3"]);
        done.send(Ok(vec![ids(1)])).unwrap();
        assert!(rx3.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn overload_and_expired_deadlines_are_refused_without_storing() {
        let limits = Limits { queued_per_channel: 2, ..Limits::default() };
        let (seq, backend, mut calls) = start(limits);
        let c = ChannelName::new("c").unwrap();
        let (r, _first) = responder();
        seq.submit(&c, settings(), Pending::Ready(publish(&c, "0", None)), r);
        let (_, done) = calls.recv().await.unwrap();
        let mut waiting = Vec::new();
        for i in 1..=2 {
            let (r, rx) = responder();
            seq.submit(&c, settings(), Pending::Ready(publish(&c, &i.to_string(), Some(1_500))), r);
            waiting.push(rx);
        }
        let (r, over) = responder();
        seq.submit(&c, settings(), Pending::Ready(publish(&c, "3", None)), r);
        assert_eq!(over.await.unwrap().unwrap_err().code, ErrorCode::Unavailable, "queue bound");
        // The waiting publishes' deadline passes before the channel is free.
        *backend.now.lock().unwrap() = 2_000;
        done.send(Ok(vec![ids(1)])).unwrap();
        for rx in waiting {
            assert_eq!(rx.await.unwrap().unwrap_err().code, ErrorCode::Unavailable);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(calls.try_recv().is_err(), "expired publishes never reach the backend");
    }

    #[tokio::test]
    async fn an_ambiguous_failure_is_resolved_exactly_and_fences_the_channel() {
        let (seq, backend, mut calls) = start(Limits::default());
        let c = ChannelName::new("c").unwrap();
        let (r0, rx0) = responder();
        seq.submit(&c, settings(), Pending::Ready(publish(&c, "stored", Some(1_100))), r0);
        let (r1, rx1) = responder();
        seq.submit(&c, settings(), Pending::Ready(publish(&c, "lost", Some(1_100))), r1);
        let (batch, done) = calls.recv().await.unwrap();
        assert_eq!(texts(&batch[0]), ["stored", "lost"]);
        // Redis applied the first one, then the connection broke.
        backend.stored.lock().unwrap().insert("stored".into(), MessageId::new(9, 0));
        done.send(Err(ApplyError::Ambiguous(ChatError::unavailable("timeout")))).unwrap();
        let (r2, rx2) = responder();
        seq.submit(&c, settings(), Pending::Ready(publish(&c, "later", None)), r2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(calls.try_recv().is_err(), "the channel stays fenced until the lookups are done");
        *backend.now.lock().unwrap() = 5_000;
        match rx0.await.unwrap() {
            Ok(OpOutcome::Published(p)) => assert_eq!(p.id, MessageId::new(9, 0)),
            other => panic!("{other:?}"),
        }
        assert_eq!(rx1.await.unwrap().unwrap_err().code, ErrorCode::Unavailable);
        let (batch, done) = calls.recv().await.unwrap();
        assert_eq!(texts(&batch[0]), ["later"]);
        done.send(Ok(vec![ids(1)])).unwrap();
        assert!(rx2.await.unwrap().is_ok());
    }
}
