//! The Redis key layout and the inbox entry format: the one definition that
//! `chat-node` and `chat-operator` both use (docs/redis-layout.md documents
//! every key; the Lua scripts in chat-node derive the same names from the
//! prefix, and a test there checks they agree with these).
//!
//! Every key starts with a prefix (`shardchat` by default) so several installs
//! can share one Redis.

pub mod inbox;

/// Key names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    // --- written by the operator, read by nodes

    /// String: the ring snapshot JSON (`RingSnapshot`).
    pub fn ring(&self) -> String {
        format!("{}:ring", self.prefix)
    }
    /// Hash: channel name → channel config JSON.
    pub fn channels(&self) -> String {
        format!("{}:channels", self.prefix)
    }
    /// String (integer): bumped after every change to [`channels`](Self::channels).
    pub fn channels_version(&self) -> String {
        format!("{}:channels:version", self.prefix)
    }

    // --- channel data, kept by the channel's owner

    /// Stream: the channel's messages; entry id = message id.
    pub fn history(&self, channel: &str) -> String {
        format!("{}:history:{channel}", self.prefix)
    }
    /// String: the newest message id that retention dropped.
    pub fn trimmed(&self, channel: &str) -> String {
        format!("{}:trimmed:{channel}", self.prefix)
    }
    /// Hash: user → number of edges where the user is connected.
    pub fn users(&self, channel: &str) -> String {
        format!("{}:users:{channel}", self.prefix)
    }
    /// Hash: edge → number of users it has in the channel (the fan-out targets).
    pub fn channel_edges(&self, channel: &str) -> String {
        format!("{}:edges:{channel}", self.prefix)
    }
    /// Set: `<edge>\t<user>` membership pairs.
    pub fn pairs(&self, channel: &str) -> String {
        format!("{}:pairs:{channel}", self.prefix)
    }
    /// String, expiring: the message id stored for a publish with this
    /// client nonce (see [`nonce_field`]).
    pub fn nonce(&self, channel: &str, user: &str, nonce: &str) -> String {
        format!("{}:nonce:{}", self.prefix, nonce_field(channel, user, nonce))
    }
    /// String, expiring: the message id stored for the edge request `req`
    /// (`<edge>:<n>`), for publishes without a client nonce.
    pub fn request(&self, req: &str) -> String {
        format!("{}:req:{req}", self.prefix)
    }

    // --- direct messages (see `conversation_id`)

    /// Stream: the messages of one conversation; entry id = message id.
    pub fn dm(&self, conversation: &str) -> String {
        format!("{}:dm:{conversation}", self.prefix)
    }
    /// String: the newest message id of a conversation that retention dropped.
    pub fn dm_trimmed(&self, conversation: &str) -> String {
        format!("{}:dm-trimmed:{conversation}", self.prefix)
    }
    /// Stream: one user's mailbox, every direct message to or from them;
    /// entry id = the user's sync cursor.
    pub fn mailbox(&self, user: &str) -> String {
        format!("{}:mbox:{user}", self.prefix)
    }
    /// String: the newest cursor of a mailbox that retention dropped.
    pub fn mailbox_trimmed(&self, user: &str) -> String {
        format!("{}:mbox-trimmed:{user}", self.prefix)
    }
    /// Hash: the other user → unread direct messages from them.
    pub fn dm_unread(&self, user: &str) -> String {
        format!("{}:dm-unread:{user}", self.prefix)
    }
    /// Set: users this user has sent a direct message to.
    pub fn dm_contacts(&self, user: &str) -> String {
        format!("{}:dm-contacts:{user}", self.prefix)
    }
    /// Hash: user → `none` for users who take direct messages only from their contacts.
    pub fn dm_allow(&self) -> String {
        format!("{}:dm-allow", self.prefix)
    }
    /// String, expiring: the message id of a direct message sent with this nonce.
    pub fn dm_nonce(&self, conversation: &str, from: &str, nonce: &str) -> String {
        format!("{}:dm-nonce:{conversation}|{from}|{nonce}", self.prefix)
    }
    /// Hash: edge → 1 for every edge where the user has connections (direct-message fan-out).
    pub fn user_edges(&self, user: &str) -> String {
        format!("{}:user-edges:{user}", self.prefix)
    }
    /// Set: users with connections on an edge (for dead-edge cleanup).
    pub fn edge_users(&self, edge: &str) -> String {
        format!("{}:edge-users:{edge}", self.prefix)
    }

    // --- node bookkeeping

    /// Stream: a node's inbound traffic (requests, acks, fan-out events).
    pub fn inbox(&self, node: &str) -> String {
        format!("{}:inbox:{node}", self.prefix)
    }
    /// String: set by a fan-out that found the node's inbox at its cap
    /// (unread entries about to be trimmed); the node clears it and tells its
    /// members they may have missed messages.
    pub fn overflow(&self, node: &str) -> String {
        format!("{}:overflow:{node}", self.prefix)
    }
    /// String with a TTL: an edge's heartbeat.
    pub fn alive(&self, edge: &str) -> String {
        format!("{}:alive:{edge}", self.prefix)
    }
    /// Set: every edge that has (had) members.
    pub fn edges(&self) -> String {
        format!("{}:edges", self.prefix)
    }
    /// Set: channels where an edge has members.
    pub fn edge_channels(&self, edge: &str) -> String {
        format!("{}:edge-channels:{edge}", self.prefix)
    }
    /// Set: channels with at least one member.
    pub fn active(&self) -> String {
        format!("{}:active", self.prefix)
    }
    /// Set: active channels that no ChatChannel declares (bounded by `--max-dynamic-channels`).
    pub fn dynamic(&self) -> String {
        format!("{}:dynamic", self.prefix)
    }
    /// Hash: channel name → the access rules it was last declared with, so a
    /// restricted channel stays restricted while its declaration is missing.
    pub fn access(&self) -> String {
        format!("{}:access", self.prefix)
    }
    /// Hash: node id → last heartbeat (ms since the epoch), for removing the
    /// inboxes of nodes that left for good.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
}

/// `<channel>|<user>|<nonce>`: unambiguous, because `|` is allowed in none
/// of channel names, user ids and nonces.
pub fn nonce_field(channel: &str, user: &str, nonce: &str) -> String {
    format!("{channel}|{user}|{nonce}")
}

/// The conversation of two users: `<a>|<b>` with `a < b`, so both sides name
/// it the same (`|` is in no user id).
pub fn conversation_id(a: &str, b: &str) -> String {
    if a <= b { format!("{a}|{b}") } else { format!("{b}|{a}") }
}

/// The key a conversation is placed on the ring by (a key space apart from channels').
pub fn conversation_ring_key(conversation: &str) -> String {
    format!("dm:{conversation}")
}

/// The node id of an edge id `<node>#<incarnation>` (or the id itself).
pub fn node_of_edge(edge: &str) -> &str {
    edge.split_once('#').map(|(node, _)| node).unwrap_or(edge)
}

/// Consumer group every node reads its own inbox through.
pub const INBOX_GROUP: &str = "chat-node";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_follow_the_documented_layout() {
        let k = Keys::new("p");
        assert_eq!(k.ring(), "p:ring");
        assert_eq!(k.channels(), "p:channels");
        assert_eq!(k.channels_version(), "p:channels:version");
        assert_eq!(k.history("town-137"), "p:history:town-137");
        assert_eq!(k.trimmed("town-137"), "p:trimmed:town-137");
        assert_eq!(k.users("c"), "p:users:c");
        assert_eq!(k.channel_edges("c"), "p:edges:c");
        assert_eq!(k.pairs("c"), "p:pairs:c");
        assert_eq!(k.nonce("c", "u", "n-1"), "p:nonce:c|u|n-1");
        assert_eq!(k.request("n0#ab:7"), "p:req:n0#ab:7");
        assert_eq!(k.inbox("chat-node-0"), "p:inbox:chat-node-0");
        assert_eq!(k.alive("n0#ab"), "p:alive:n0#ab");
        assert_eq!(k.overflow("chat-node-0"), "p:overflow:chat-node-0");
        assert_eq!(k.edges(), "p:edges");
        assert_eq!(k.edge_channels("n0#ab"), "p:edge-channels:n0#ab");
        assert_eq!(k.active(), "p:active");
        assert_eq!(k.dynamic(), "p:dynamic");
        assert_eq!(k.nodes(), "p:nodes");
        assert_eq!(k.access(), "p:access");
        assert_eq!(k.dm("a|b"), "p:dm:a|b");
        assert_eq!(k.dm_trimmed("a|b"), "p:dm-trimmed:a|b");
        assert_eq!(k.mailbox("u"), "p:mbox:u");
        assert_eq!(k.mailbox_trimmed("u"), "p:mbox-trimmed:u");
        assert_eq!(k.dm_unread("u"), "p:dm-unread:u");
        assert_eq!(k.dm_contacts("u"), "p:dm-contacts:u");
        assert_eq!(k.dm_allow(), "p:dm-allow");
        assert_eq!(k.dm_nonce("a|b", "a", "n"), "p:dm-nonce:a|b|a|n");
        assert_eq!(k.user_edges("u"), "p:user-edges:u");
        assert_eq!(k.edge_users("n0#ab"), "p:edge-users:n0#ab");
        assert_eq!(conversation_id("bob", "alice"), "alice|bob");
        assert_eq!(conversation_id("alice", "bob"), "alice|bob");
        assert_eq!(conversation_ring_key("alice|bob"), "dm:alice|bob");
        assert_eq!(node_of_edge("chat-node-0#3fa2"), "chat-node-0");
        assert_eq!(node_of_edge("chat-node-0"), "chat-node-0");
    }
}
