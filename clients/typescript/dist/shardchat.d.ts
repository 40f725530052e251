/**
 * Shardchat client SDK, protocol v1 (see docs/protocol.md and docs/clients.md).
 *
 * This file is the whole SDK for browsers: it imports nothing and uses the
 * platform's `WebSocket`. In Node.js import the package root (its `node`
 * entry passes the `ws` library in).
 *
 * ```js
 * const chat = new ShardchatClient({ url: "wss://chat.example.com", getToken: fetchToken });
 * chat.on("message", (m) => show(m));
 * chat.on("rejoin", (r) => { if (!r.recovered) reloadFromHistory(r.channel); });
 * await chat.connect();
 * await chat.join("town-137");
 * await chat.publish("town-137", "hello");
 * ```
 *
 * @packageDocumentation
 */
/** A channel message (the `message` push, and the items of `history`). */
export interface ChatMessage {
    channel: string;
    /** `<ms>-<seq>`; compare with {@link compareIds}, never as strings. */
    id: string;
    from: string;
    text: string;
    /** When the channel's owner accepted it, ms since the Unix epoch. */
    ts: number;
    /** Present only when the sender gave one. */
    meta?: Record<string, unknown>;
}
/** A user's first connection entered a channel, or their last one left it. */
export interface PresenceEvent {
    channel: string;
    event: "join" | "leave";
    user: string;
}
/** A direct message (the `dm` push, and the items of `dm_history` / `dm_sync`). */
export interface DirectMessage {
    /** Orders the message within its conversation. */
    id: string;
    /** Orders the message within your mailbox (pass the newest to {@link ShardchatClient.dmSync}). */
    cursor?: string;
    from: string;
    to: string;
    text: string;
    ts: number;
    meta?: Record<string, unknown>;
}
/** Reply of `join`. */
export interface JoinResult {
    /** Distinct users now in the channel. */
    members?: number;
    /**
     * Whether the server could replay every message after `since`. `false`:
     * messages may be missing, reload the channel with {@link ShardchatClient.history}.
     */
    recovered?: boolean;
}
/** Reply of `publish` (and `dm`). */
export interface PublishResult {
    messageId: string;
    /** The nonce matched an earlier publish: nothing new was stored. */
    duplicate: boolean;
    /** The nonce the request carried (generated when none was given). */
    nonce: string;
}
/** Reply of `history` (and `dm_history`). */
export interface HistoryResult<M = ChatMessage> {
    /** Oldest first. */
    messages: M[];
    /** The page was cut to fit the connection's budget: keep paging with `before`. */
    truncated: boolean;
}
/** Reply of `dm_sync`. */
export interface DmSyncResult {
    messages: DirectMessage[];
    /** The newest cursor handed over: pass it as `since` next time. */
    cursor?: string;
    recovered?: boolean;
    truncated: boolean;
}
/**
 * Error codes: the server's stable codes (docs/protocol.md, "Errors") plus
 * the SDK's own:
 * - `request_timeout`: no reply within the request's timeout;
 * - `disconnected`: the connection was lost before the reply came;
 * - `not_connected`: the request needs a connection and there is none;
 * - `client_closed`: {@link ShardchatClient.close} was called.
 */
export type ErrorCode = "bad_request" | "unauthorized" | "forbidden" | "not_found" | "not_joined" | "rate_limited" | "too_large" | "channel_full" | "filtered" | "unavailable" | "timeout" | "request_timeout" | "disconnected" | "not_connected" | "client_closed" | (string & {});
/** A failed request, an `error` push, or a connection problem. */
export declare class ShardchatError extends Error {
    readonly code: ErrorCode;
    /** Retrying (for a publish: with the same {@link nonce}) may succeed. */
    readonly retryable: boolean;
    /** For `publish` / `dm`: the nonce to retry with. */
    readonly nonce?: string;
    /** The channel concerned, when there is one. */
    readonly channel?: string;
    constructor(code: ErrorCode, message: string, extra?: {
        nonce?: string;
        channel?: string;
    });
}
/**
 * Compares two message ids (`<ms>-<seq>`) numerically, part by part:
 * negative when `a` is older, 0 when equal, positive when newer.
 * Malformed ids compare as strings, after every well-formed one.
 */
export declare function compareIds(a: string, b: string): number;
/** The part of the WebSocket API the SDK uses (browsers' and `ws`'s both fit). */
export interface WebSocketLike {
    readonly readyState: number;
    send(data: string): void;
    close(code?: number, reason?: string): void;
    onopen: ((ev: unknown) => void) | null;
    onmessage: ((ev: {
        data: unknown;
    }) => void) | null;
    onclose: ((ev: {
        code: number;
        reason: string;
    }) => void) | null;
    onerror: ((ev: unknown) => void) | null;
}
/** Creates a WebSocket: `new WebSocket(url, protocols)` in a browser. */
export type WebSocketFactory = (url: string, protocols: string[]) => WebSocketLike;
/** Why a token is asked for. */
export type TokenReason = "connect" | "expired";
export interface ReconnectOptions {
    /** First delay (default 500 ms). */
    minDelayMs?: number;
    /** Upper bound (default 15 s). */
    maxDelayMs?: number;
    /** Growth per failed attempt (default 2). */
    factor?: number;
    /** Random spread: each delay is multiplied by 1 ± jitter/2 (default 0.5). */
    jitter?: number;
}
export interface ClientOptions {
    /**
     * The node: `wss://host` (the SDK adds `/v1/ws` when the URL has no path),
     * `http(s)://` also works. Several URLs: each reconnect attempt takes the next.
     */
    url: string | string[];
    /** A JWT (sent as the `bearer.<JWT>` WebSocket subprotocol, never in the URL). */
    token?: string;
    /**
     * Returns a token: called before the first connection (`"connect"`) and
     * after the server said the token expired (close 4001 or HTTP 401,
     * `"expired"`). The SDK reconnects after a 4001 only when this returns a
     * token different from the rejected one.
     */
    getToken?: (reason: TokenReason) => string | Promise<string>;
    /** Dev mode only (`--dev-mode` nodes): the user id to connect as. */
    user?: string;
    /** Dev mode only: role names. */
    roles?: string[];
    /** Default per-request timeout (default 10 s). */
    requestTimeoutMs?: number;
    /** `false`: never reconnect by itself. */
    reconnect?: ReconnectOptions | false;
    /**
     * Keep publishes made while disconnected, and publishes whose connection
     * dropped before their reply, and send them (same nonce, so never twice)
     * once connected again. Off by default: such publishes fail with
     * `not_connected` / `disconnected` and the caller decides.
     */
    offlineQueue?: boolean;
    /** Most publishes the offline queue holds (default 100); past it publish fails with `not_connected`. */
    offlineQueueLimit?: number;
    /**
     * Send a `ping` after this long without any frame from the server, and
     * reconnect when its reply does not come within the request timeout
     * (default 25 s; 0 disables). Catches connections that died silently.
     */
    heartbeatMs?: number;
    /** WebSocket implementation (default: the global `WebSocket`). */
    WebSocket?: WebSocketFactory | (new (url: string, protocols?: string | string[]) => WebSocketLike);
}
/** Per-request options. */
export interface RequestOptions {
    /** Overrides the client's `requestTimeoutMs` for this request. */
    timeoutMs?: number;
}
export interface PublishOptions extends RequestOptions {
    /** Optional JSON object (≤ 1 KiB). */
    meta?: Record<string, unknown>;
    /**
     * Idempotency key (1–64 of `A–Z a–z 0–9 - _ . :`). Generated when absent.
     * Retry a failed publish with `err.nonce` and the server stores it at most once.
     */
    nonce?: string;
}
/** Connection states. */
export type ConnectionState = 
/** Not started, or stopped by {@link ShardchatClient.close}. */
"idle"
/** Opening the first connection. */
 | "connecting"
/** Open, every channel (re-)joined. */
 | "connected"
/** Lost the connection; waiting or trying to get it back. */
 | "reconnecting"
/** Stopped by the server's decision (policy close, token not refreshed); see the `disconnect` event. */
 | "stopped";
export interface DisconnectEvent {
    /** WebSocket close code (1006: no close frame, e.g. network loss or a refused upgrade). */
    code: number;
    reason: string;
    /** HTTP status of a refused upgrade, when the platform reveals it (Node.js does, browsers do not). */
    httpStatus?: number;
    /** Whether the SDK will reconnect by itself. */
    willReconnect: boolean;
    /** Delay before the next attempt, when reconnecting. */
    delayMs?: number;
}
export interface RejoinEvent {
    channel: string;
    /** The `since` the join carried (the last message id seen). */
    since: string;
    /** `false`: messages may be missing, reload the channel from history. */
    recovered: boolean;
    members?: number;
}
/** Everything the client emits, by event name. */
export interface ClientEvents {
    message: ChatMessage;
    presence: PresenceEvent;
    /** The channel was removed by its operator; the client is no longer a member. */
    closed: {
        channel: string;
        reason: string;
    };
    /** Messages of the channel may have been lost: reload it (`history`). */
    gap: {
        channel: string;
        reason: string;
    };
    dm: DirectMessage;
    dm_gap: {
        reason: string;
    };
    /** An `error` push, or a failure the SDK hit on its own (e.g. a re-join refused). */
    error: ShardchatError;
    state: {
        state: ConnectionState;
        previous: ConnectionState;
    };
    /** A connection ended. */
    disconnect: DisconnectEvent;
    /** A channel was joined again after a reconnect. */
    rejoin: RejoinEvent;
}
type Handler<T> = (payload: T) => void;
/**
 * One logical connection to Shardchat, kept alive across network drops and
 * node restarts. See docs/clients.md for the full behaviour.
 */
export declare class ShardchatClient {
    private readonly opts;
    private readonly urls;
    private urlIndex;
    private readonly factory;
    private readonly handlers;
    private readonly channelStates;
    private readonly pending;
    /** Offline-queued publishes waiting for a connection, oldest first. */
    private readonly queue;
    private readonly waiters;
    private ws;
    private _state;
    private nextId;
    private readonly noncePrefix;
    private nonceCounter;
    private attempt;
    private reconnectTimer;
    private heartbeatTimer;
    private token;
    private rejectedToken;
    private handshakeStatus;
    /** Bumps on every new socket: stale callbacks check it. */
    private generation;
    private _duplicatesDropped;
    private _reconnects;
    private everOpened;
    constructor(options: ClientOptions);
    private static makeFactory;
    /** The connection state. */
    get state(): ConnectionState;
    /** Channels this client is a member of (re-joined after every reconnect). */
    get channels(): string[];
    /** The newest message id delivered in `channel` (what a re-join passes as `since`). */
    lastId(channel: string): string | undefined;
    /**
     * Counters: `reconnects` (connections opened after the first),
     * `duplicatesDropped` (pushed messages not newer than the last one seen
     * in their channel; the server guarantees none, so this stays 0), and
     * `queued` (publishes waiting in the offline queue).
     */
    get stats(): {
        reconnects: number;
        duplicatesDropped: number;
        queued: number;
    };
    /** Subscribes to an event; returns a function that unsubscribes. */
    on<E extends keyof ClientEvents>(event: E, handler: Handler<ClientEvents[E]>): () => void;
    off<E extends keyof ClientEvents>(event: E, handler: Handler<ClientEvents[E]>): void;
    /**
     * Starts the client. Resolves once connected (and every channel joined
     * before is joined again); rejects when the client stops first (policy
     * close, token refused, {@link close}), or after `timeoutMs` (then the
     * client is closed). The client keeps reconnecting until then.
     */
    connect(options?: {
        timeoutMs?: number;
    }): Promise<void>;
    /**
     * Closes the connection and stops reconnecting. Pending requests fail
     * with `client_closed`; the offline queue is dropped. Channel memberships
     * and last ids are kept: {@link connect} again re-joins with `since`.
     */
    close(): void;
    /**
     * Replaces the token (e.g. after a 4001). When the client stopped because
     * its token was refused, this resumes reconnecting.
     */
    setToken(token: string): void;
    /**
     * Joins a channel. Without `since` the SDK first asks `history` for the
     * newest id and joins with it, so that every later message arrives and a
     * reconnect can always resume exactly after the last one seen. With
     * `since`, messages after it are replayed first (then `recovered` tells
     * whether that was complete). Waits for a connection (within the timeout).
     */
    join(channel: string, options?: RequestOptions & {
        since?: string;
    }): Promise<JoinResult>;
    /** Leaves a channel (it is no longer re-joined). Resolves also when not connected. */
    leave(channel: string, options?: RequestOptions): Promise<void>;
    /**
     * Publishes to a joined channel. Resolves with the stored message's id
     * (the message itself also arrives as a `message` event). Every publish
     * carries a nonce: on a retryable error, publishing again with
     * `{ nonce: err.nonce }` never stores it twice. Without a connection it
     * fails at once with `not_connected`, unless `offlineQueue` is on.
     */
    publish(channel: string, text: string, options?: PublishOptions): Promise<PublishResult>;
    /** The newest `limit` messages (before `before`), oldest first. */
    history(channel: string, options?: RequestOptions & {
        limit?: number;
        before?: string;
    }): Promise<HistoryResult>;
    /** Round trip to the node: its clock (`ts`) and the measured `rttMs`. */
    ping(options?: RequestOptions): Promise<{
        ts: number;
        rttMs: number;
    }>;
    /** Sends a direct message (same nonce rules as {@link publish}). */
    dm(to: string, text: string, options?: PublishOptions): Promise<PublishResult>;
    /** Direct messages to or from you after the mailbox cursor `since`. */
    dmSync(since?: string, options?: RequestOptions): Promise<DmSyncResult>;
    /** The newest `limit` messages of your conversation with `withUser`, oldest first. */
    dmHistory(withUser: string, options?: RequestOptions & {
        limit?: number;
        before?: string;
    }): Promise<HistoryResult<DirectMessage>>;
    /**
     * Any request (e.g. `dm_unread`, `dm_read`, `dm_settings`): resolves with
     * the reply object when `ok`, rejects with a {@link ShardchatError}.
     * Waits for a connection within the timeout.
     */
    request(op: string, fields?: Record<string, unknown>, options?: RequestOptions): Promise<Record<string, unknown>>;
    private checkNonce;
    private timeoutOf;
    /**
     * Sends `op`. `publishLike` requests (publish, dm) never wait for a
     * connection unless the offline queue is on; other requests wait for one
     * within their timeout.
     */
    private send;
    private expire;
    /** Forgets `p` wherever it is waiting. */
    private settle;
    /** Writes `p` to the open socket with a fresh id. */
    private transmit;
    /** Sends a request on the current socket right now (used while re-joining). */
    private direct;
    private failPending;
    private whenConnected;
    private failWaiters;
    private isOpen;
    private setState;
    private currentToken;
    private open;
    private onOpen;
    /** Closes the current socket so that the normal reconnect path runs. */
    private dropConnection;
    private afterClose;
    private onUnauthorized;
    /** Stops for good (until connect()/setToken()); fails what waits. */
    private stop;
    private minDelay;
    private jitter;
    /** Jittered exponential backoff for the current attempt. */
    private backoff;
    private scheduleReconnect;
    private armHeartbeat;
    private clearTimers;
    private onFrame;
    private emit;
}
export {};
