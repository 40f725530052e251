//! Direct messages: conversations between two users, addressed by user
//! rather than by channel membership.
//!
//! * Each conversation (an unordered pair of users) has one owner on the
//!   hash ring (key `dm:<a>|<b>`, apart from channel names). The owner
//!   applies the rules ([`Conversations::send`]: no self-messages, the
//!   recipient's per-second limit, the recipient's `dm_settings`,
//!   moderation) and the [`DmStore`] stores the message atomically: in the
//!   conversation (its id), in both users' mailboxes (their cursors), the
//!   recipient's unread count, and a fan-out to every node where either
//!   user is connected.
//! * [`mailboxes`] delivers to the local connections of a user.
//! * Reads (`dm_history`, `dm_sync`, `dm_unread`, `dm_read`, settings) go
//!   straight to the store from any node.

pub mod mailboxes;
pub mod memory;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{Map, Value};
use shardchat_common::protocol::{DirectMessage, DmAllow, ErrorCode, Nonce};
use shardchat_common::{MessageId, ModerationMode};

use crate::clock::now_micros;
use crate::error::{ChatError, ChatResult};
use crate::frames::DmPushTemplate;
use crate::moderation::Moderator;
use crate::owner::backend::{ApplyError, Dedup};
use crate::owner::{OpOutcome, Published, RequestContext, Respond};

/// Bounds of direct-message storage.
#[derive(Debug, Clone, Copy)]
pub struct DmLimits {
    /// Messages kept per conversation.
    pub max_messages: u32,
    /// How long a direct message is kept (conversation and mailboxes).
    pub max_age: Duration,
    /// Entries kept per user's mailbox (what `dm_sync` can hand over).
    pub mailbox_max: u32,
    /// Direct messages one user may receive per second (burst: twice that).
    pub per_recipient_rate: u32,
}

/// A direct message ready to store.
#[derive(Debug, Clone)]
pub struct DmDraft {
    pub from: Arc<str>,
    pub to: String,
    pub text: String,
    pub meta: Option<Map<String, Value>>,
    pub meta_json: Option<String>,
    pub push: DmPushTemplate,
    pub dedup: Dedup,
    pub deadline_ms: Option<u64>,
    /// From the server: the recipient's settings do not apply.
    pub system: bool,
    pub accepted_at_micros: u64,
}

/// What the store did with a draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendResult {
    Stored {
        id: MessageId,
        duplicate: bool,
    },
    /// Past its deadline: not stored.
    Expired,
    /// The recipient takes direct messages only from their contacts.
    NotAccepted,
}

/// What `dm_sync` found.
#[derive(Debug, Default)]
pub struct MailboxRead {
    /// Oldest first, each with its cursor.
    pub messages: Vec<DirectMessage>,
    /// False when the mailbox may have dropped messages after `since`
    /// (retention, or `since` unknown): reload with `dm_history`.
    pub complete: bool,
    /// More followed than one read hands over: sync again from the last cursor.
    pub more: bool,
}

/// Most messages one `dm_sync` hands over.
pub const MAX_SYNC: usize = 1_000;

/// Storage of conversations and mailboxes.
pub trait DmStore: Send + Sync + 'static {
    /// Stores and fans out a direct message, atomically.
    fn send(&self, draft: DmDraft) -> BoxFuture<'static, Result<SendResult, ApplyError>>;

    /// After an ambiguous failure, once the draft's deadline has passed: the
    /// id it was stored under, or `None`.
    fn lookup(&self, draft: &DmDraft) -> BoxFuture<'static, ChatResult<Option<MessageId>>>;

    /// The clock deadlines are measured in; `None` while unknown.
    fn now_ms(&self) -> Option<u64>;

    /// The newest `limit` messages of the conversation of `a` and `b` (before `before`), oldest first.
    fn history(
        &self,
        a: &str,
        b: &str,
        limit: usize,
        before: Option<MessageId>,
    ) -> BoxFuture<'static, ChatResult<Vec<DirectMessage>>>;

    /// `user`'s mailbox after `since` (and before `before`): the oldest
    /// [`MAX_SYNC`], oldest first.
    fn mailbox(
        &self,
        user: &str,
        since: Option<MessageId>,
        before: Option<MessageId>,
    ) -> BoxFuture<'static, ChatResult<MailboxRead>>;

    fn unread(&self, user: &str) -> BoxFuture<'static, ChatResult<BTreeMap<String, u64>>>;

    /// Sets `user`'s unread count for the conversation with `with` to what came after `up_to`.
    fn mark_read(&self, user: &str, with: &str, up_to: MessageId) -> BoxFuture<'static, ChatResult<()>>;

    fn set_allow(&self, user: &str, allow: DmAllow) -> BoxFuture<'static, ChatResult<()>>;

    /// `user` has its first connection on this node (cluster: register for fan-out).
    fn connected(&self, user: &str) -> BoxFuture<'static, ChatResult<()>>;

    /// `user`'s last connection on this node left.
    fn disconnected(&self, user: &str) -> BoxFuture<'static, ChatResult<()>>;
}

/// The owner side of direct messages: rules, then the store.
pub struct Conversations {
    store: Arc<dyn DmStore>,
    moderator: Arc<Moderator>,
    moderation: ModerationMode,
    limits: DmLimits,
    recipients: Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
    /// The sender name of system messages; no player may send as it or to it.
    pub system_sender: Arc<str>,
}

/// A direct message as an edge hands it to the conversation's owner.
#[derive(Debug, Clone)]
pub struct DmRequest {
    pub from: Arc<str>,
    pub to: String,
    pub text: String,
    pub meta: Option<Map<String, Value>>,
    pub nonce: Option<Nonce>,
    pub system: bool,
}

impl Conversations {
    pub fn new(
        store: Arc<dyn DmStore>,
        moderator: Arc<Moderator>,
        moderation: ModerationMode,
        limits: DmLimits,
        system_sender: Arc<str>,
    ) -> Self {
        Self { store, moderator, moderation, limits, recipients: Mutex::new(HashMap::new()), system_sender }
    }

    pub fn store(&self) -> &Arc<dyn DmStore> {
        &self.store
    }

    /// The rules an edge checks before routing a direct message.
    pub fn check_addressing(&self, from: &str, to: &str, system: bool) -> ChatResult<()> {
        if from == to {
            return Err(ChatError::bad_request("you cannot send a direct message to yourself"));
        }
        if !system && (*self.system_sender == *from || *self.system_sender == *to) {
            return Err(ChatError::bad_request(format!(
                "{:?} is reserved for system messages",
                &*self.system_sender
            )));
        }
        Ok(())
    }

    fn check_recipient_rate(&self, to: &str) -> ChatResult<()> {
        let limiter = {
            let mut recipients = self.recipients.lock().unwrap_or_else(|p| p.into_inner());
            if recipients.len() > 100_000 {
                recipients.clear(); // bounded memory; a full bucket is the default anyway
            }
            recipients
                .entry(to.to_string())
                .or_insert_with(|| {
                    let rate = NonZeroU32::new(self.limits.per_recipient_rate).unwrap_or(NonZeroU32::MIN);
                    let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
                    Arc::new(RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)))
                })
                .clone()
        };
        limiter.check().map_err(|_| {
            ChatError::new(
                ErrorCode::RateLimited,
                format!("{to} is receiving too many direct messages; try again shortly"),
            )
        })
    }

    /// Applies the rules and stores `req`; `respond` gets the outcome.
    #[tracing::instrument(level = "debug", skip_all, fields(from = %req.from, to = %req.to))]
    pub fn send(self: &Arc<Self>, req: DmRequest, ctx: RequestContext, respond: Respond) {
        if let Err(e) = self
            .check_addressing(&req.from, &req.to, req.system)
            .and_then(|()| self.check_recipient_rate(&req.to))
        {
            return respond(Err(e));
        }
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = this.moderate_and_store(req, ctx).await;
            respond(outcome);
        });
    }

    async fn moderate_and_store(&self, req: DmRequest, ctx: RequestContext) -> ChatResult<OpOutcome> {
        let mode = if req.system { ModerationMode::Off } else { self.moderation };
        let text = if self.moderator.needs_service(mode) {
            self.moderator.moderate(mode, "", &req.from, req.text).await?
        } else {
            self.moderator.moderate_now(mode, req.text)?
        };
        let meta_json = req.meta.as_ref().map(|m| serde_json::to_string(m).unwrap_or_else(|_| "{}".into()));
        let dedup = match (&req.nonce, ctx.request_id) {
            (Some(n), _) => Dedup::Nonce(n.as_str().to_string()),
            (None, Some(r)) => Dedup::Request(r),
            (None, None) => Dedup::None,
        };
        let draft = DmDraft {
            push: DmPushTemplate::new(&req.from, &req.to, &text, meta_json.as_deref()),
            from: req.from,
            to: req.to,
            text,
            meta: req.meta,
            meta_json,
            dedup,
            deadline_ms: ctx.deadline_ms,
            system: req.system,
            accepted_at_micros: now_micros(),
        };
        let result = match self.store.send(draft.clone()).await {
            Ok(r) => r,
            Err(ApplyError::Refused(e)) => return Err(e),
            Err(ApplyError::Ambiguous(e)) => {
                tracing::warn!(error = %e, "a direct message may or may not have been stored; resolving after its deadline");
                let found = crate::owner::sequencer::after_deadline(
                    draft.deadline_ms,
                    || self.store.now_ms(),
                    || self.store.lookup(&draft),
                )
                .await?;
                return Ok(OpOutcome::Published(Published { id: found, duplicate: false }));
            }
        };
        match result {
            SendResult::Stored { id, duplicate } => Ok(OpOutcome::Published(Published { id, duplicate })),
            SendResult::Expired => {
                Err(ChatError::unavailable("the request waited too long and was not stored; try again"))
            }
            SendResult::NotAccepted => Err(ChatError::forbidden(format!(
                "{} takes direct messages only from people they wrote to",
                draft.to
            ))),
        }
    }
}
