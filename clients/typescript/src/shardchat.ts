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

// ---------------------------------------------------------------- wire types

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

// ---------------------------------------------------------------- errors

/**
 * Error codes: the server's stable codes (docs/protocol.md, "Errors") plus
 * the SDK's own:
 * - `request_timeout`: no reply within the request's timeout;
 * - `disconnected`: the connection was lost before the reply came;
 * - `not_connected`: the request needs a connection and there is none;
 * - `client_closed`: {@link ShardchatClient.close} was called.
 */
export type ErrorCode =
  | "bad_request"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "not_joined"
  | "rate_limited"
  | "too_large"
  | "channel_full"
  | "filtered"
  | "unavailable"
  | "timeout"
  | "request_timeout"
  | "disconnected"
  | "not_connected"
  | "client_closed"
  | (string & {});

/** Codes after which sending the same request again (same nonce) is sensible. */
const RETRYABLE: ReadonlySet<string> = new Set([
  "rate_limited",
  "unavailable",
  "timeout",
  "request_timeout",
  "disconnected",
  "not_connected",
]);

/** A failed request, an `error` push, or a connection problem. */
export class ShardchatError extends Error {
  readonly code: ErrorCode;
  /** Retrying (for a publish: with the same {@link nonce}) may succeed. */
  readonly retryable: boolean;
  /** For `publish` / `dm`: the nonce to retry with. */
  readonly nonce?: string;
  /** The channel concerned, when there is one. */
  readonly channel?: string;

  constructor(code: ErrorCode, message: string, extra: { nonce?: string; channel?: string } = {}) {
    super(message);
    this.name = "ShardchatError";
    this.code = code;
    this.retryable = RETRYABLE.has(code);
    if (extra.nonce !== undefined) this.nonce = extra.nonce;
    if (extra.channel !== undefined) this.channel = extra.channel;
  }
}

// ---------------------------------------------------------------- message ids

function parseId(id: string): [string, string] | null {
  const m = /^(\d+)-(\d+)$/.exec(id);
  if (!m) return null;
  return [m[1].replace(/^0+(?=\d)/, ""), m[2].replace(/^0+(?=\d)/, "")];
}

function compareDigits(a: string, b: string): number {
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Compares two message ids (`<ms>-<seq>`) numerically, part by part:
 * negative when `a` is older, 0 when equal, positive when newer.
 * Malformed ids compare as strings, after every well-formed one.
 */
export function compareIds(a: string, b: string): number {
  const pa = parseId(a);
  const pb = parseId(b);
  if (pa && pb) return compareDigits(pa[0], pb[0]) || compareDigits(pa[1], pb[1]);
  if (pa) return -1;
  if (pb) return 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

// ---------------------------------------------------------------- options

/** The part of the WebSocket API the SDK uses (browsers' and `ws`'s both fit). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
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

// ---------------------------------------------------------------- events

/** Connection states. */
export type ConnectionState =
  /** Not started, or stopped by {@link ShardchatClient.close}. */
  | "idle"
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
  closed: { channel: string; reason: string };
  /** Messages of the channel may have been lost: reload it (`history`). */
  gap: { channel: string; reason: string };
  dm: DirectMessage;
  dm_gap: { reason: string };
  /** An `error` push, or a failure the SDK hit on its own (e.g. a re-join refused). */
  error: ShardchatError;
  state: { state: ConnectionState; previous: ConnectionState };
  /** A connection ended. */
  disconnect: DisconnectEvent;
  /** A channel was joined again after a reconnect. */
  rejoin: RejoinEvent;
}

type Handler<T> = (payload: T) => void;

// ---------------------------------------------------------------- internals

interface Pending {
  op: string;
  frame: Record<string, unknown>;
  resolve: (reply: Record<string, unknown>) => void;
  reject: (err: ShardchatError) => void;
  timer: ReturnType<typeof setTimeout> | null;
  /** Publishes kept across reconnects by the offline queue. */
  queued: boolean;
  /** When the request gives up (ms since the epoch). */
  deadline: number;
}

interface ChannelState {
  /** Newest message id delivered (or the `since` it was joined with). */
  lastId: string;
}

const OPEN = 1;
const NONCE_RE = /^[A-Za-z0-9._:-]{1,64}$/;

function randomPrefix(): string {
  const bytes = new Uint8Array(8);
  const c = (globalThis as { crypto?: { getRandomValues?: (a: Uint8Array) => Uint8Array } }).crypto;
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(36).padStart(2, "0")).join("");
}

function normaliseUrl(raw: string): string {
  const u = new URL(raw);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  else if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new ShardchatError("bad_request", `unsupported URL scheme ${u.protocol} (use ws:, wss:, http: or https:)`);
  }
  if (u.pathname === "" || u.pathname === "/") u.pathname = "/v1/ws";
  u.hash = "";
  return u.toString();
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function toError(v: unknown, extra: { nonce?: string; channel?: string } = {}): ShardchatError {
  if (isObject(v)) {
    const code = typeof v.code === "string" ? v.code : "error";
    const message = typeof v.message === "string" ? v.message : "request failed";
    return new ShardchatError(code, message, extra);
  }
  return new ShardchatError("error", "request failed", extra);
}

/** Close codes after which reconnecting would only repeat the problem. */
const FATAL_CLOSE: Record<number, string> = {
  1007: "the client sent invalid UTF-8",
  1008: "policy violation (flooding past the rate limits)",
  1009: "the client sent a frame that is too large",
};

/** HTTP statuses of a refused upgrade that retrying cannot fix. */
const FATAL_HTTP: Record<number, string> = {
  400: "bad request (malformed user id?)",
  403: "forbidden (Origin not allowed?)",
  404: "no WebSocket endpoint at this URL",
};

const CLIENT_RECONNECT = 4000;

// ---------------------------------------------------------------- the client

/**
 * One logical connection to Shardchat, kept alive across network drops and
 * node restarts. See docs/clients.md for the full behaviour.
 */
export class ShardchatClient {
  private readonly opts: ClientOptions;
  private readonly urls: string[];
  private urlIndex = 0;
  private readonly factory: WebSocketFactory;
  private readonly handlers = new Map<keyof ClientEvents, Set<Handler<never>>>();
  private readonly channelStates = new Map<string, ChannelState>();
  private readonly pending = new Map<number | string, Pending>();
  /** Offline-queued publishes waiting for a connection, oldest first. */
  private readonly queue: Pending[] = [];
  private readonly waiters = new Set<{ resolve: () => void; reject: (e: ShardchatError) => void }>();
  private ws: WebSocketLike | null = null;
  private _state: ConnectionState = "idle";
  private nextId = 1;
  private readonly noncePrefix = randomPrefix();
  private nonceCounter = 0;
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private heartbeatTimer: ReturnType<typeof setTimeout> | null = null;
  private token: string | undefined;
  private rejectedToken: string | undefined;
  private handshakeStatus: number | undefined;
  /** Bumps on every new socket: stale callbacks check it. */
  private generation = 0;
  private _duplicatesDropped = 0;
  private _reconnects = 0;
  private everOpened = false;

  constructor(options: ClientOptions) {
    if (!options || (typeof options.url !== "string" && !Array.isArray(options.url))) {
      throw new ShardchatError("bad_request", "options.url is required");
    }
    this.opts = { ...options };
    const list = Array.isArray(options.url) ? options.url : [options.url];
    if (list.length === 0) throw new ShardchatError("bad_request", "options.url is an empty list");
    this.urls = list.map(normaliseUrl);
    this.token = options.token;
    this.factory = ShardchatClient.makeFactory(options.WebSocket);
  }

  private static makeFactory(impl: ClientOptions["WebSocket"]): WebSocketFactory {
    const ctor =
      impl ??
      ((globalThis as { WebSocket?: new (url: string, protocols?: string | string[]) => WebSocketLike }).WebSocket);
    if (!ctor) {
      throw new ShardchatError("bad_request", "no WebSocket implementation: pass options.WebSocket (in Node.js import the package root)");
    }
    // A class (has a prototype with send) is called with `new`; a plain function is a factory.
    const proto = (ctor as { prototype?: { send?: unknown } }).prototype;
    if (proto && typeof proto.send === "function") {
      const C = ctor as new (url: string, protocols?: string | string[]) => WebSocketLike;
      return (url, protocols) => (protocols.length > 0 ? new C(url, protocols) : new C(url));
    }
    return ctor as WebSocketFactory;
  }

  // ------------------------------------------------------------ public API

  /** The connection state. */
  get state(): ConnectionState {
    return this._state;
  }

  /** Channels this client is a member of (re-joined after every reconnect). */
  get channels(): string[] {
    return [...this.channelStates.keys()];
  }

  /** The newest message id delivered in `channel` (what a re-join passes as `since`). */
  lastId(channel: string): string | undefined {
    return this.channelStates.get(channel)?.lastId;
  }

  /**
   * Counters: `reconnects` (connections opened after the first),
   * `duplicatesDropped` (pushed messages not newer than the last one seen
   * in their channel; the server guarantees none, so this stays 0), and
   * `queued` (publishes waiting in the offline queue).
   */
  get stats(): { reconnects: number; duplicatesDropped: number; queued: number } {
    return { reconnects: this._reconnects, duplicatesDropped: this._duplicatesDropped, queued: this.queue.length };
  }

  /** Subscribes to an event; returns a function that unsubscribes. */
  on<E extends keyof ClientEvents>(event: E, handler: Handler<ClientEvents[E]>): () => void {
    let set = this.handlers.get(event);
    if (!set) {
      set = new Set();
      this.handlers.set(event, set);
    }
    set.add(handler as Handler<never>);
    return () => this.off(event, handler);
  }

  off<E extends keyof ClientEvents>(event: E, handler: Handler<ClientEvents[E]>): void {
    this.handlers.get(event)?.delete(handler as Handler<never>);
  }

  /**
   * Starts the client. Resolves once connected (and every channel joined
   * before is joined again); rejects when the client stops first (policy
   * close, token refused, {@link close}), or after `timeoutMs` (then the
   * client is closed). The client keeps reconnecting until then.
   */
  connect(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this._state === "connected") return Promise.resolve();
    const ready = this.whenConnected(options.timeoutMs, true);
    if (this._state === "idle" || this._state === "stopped") {
      this.attempt = 0;
      this.setState("connecting");
      void this.open();
    }
    return ready;
  }

  /**
   * Closes the connection and stops reconnecting. Pending requests fail
   * with `client_closed`; the offline queue is dropped. Channel memberships
   * and last ids are kept: {@link connect} again re-joins with `since`.
   */
  close(): void {
    this.clearTimers();
    const ws = this.ws;
    this.ws = null;
    this.generation++;
    if (ws) {
      try {
        ws.close(1000, "client closed");
      } catch {
        /* already closed */
      }
    }
    const err = new ShardchatError("client_closed", "the client was closed");
    this.failPending(err, true);
    this.failWaiters(err);
    this.setState("idle");
  }

  /**
   * Replaces the token (e.g. after a 4001). When the client stopped because
   * its token was refused, this resumes reconnecting.
   */
  setToken(token: string): void {
    this.token = token;
    if (this._state === "stopped" && this.rejectedToken !== undefined && token !== this.rejectedToken) {
      this.rejectedToken = undefined;
      this.attempt = 0;
      this.setState("reconnecting");
      this.scheduleReconnect(0);
    }
  }

  /**
   * Joins a channel. Without `since` the SDK first asks `history` for the
   * newest id and joins with it, so that every later message arrives and a
   * reconnect can always resume exactly after the last one seen. With
   * `since`, messages after it are replayed first (then `recovered` tells
   * whether that was complete). Waits for a connection (within the timeout).
   */
  async join(channel: string, options: RequestOptions & { since?: string } = {}): Promise<JoinResult> {
    let since = options.since;
    if (since === undefined) {
      const h = await this.history(channel, { limit: 1, timeoutMs: options.timeoutMs });
      const newest = h.messages.length > 0 ? h.messages[h.messages.length - 1].id : undefined;
      since = newest ?? "0-0";
    }
    const reply = await this.request("join", { channel, since }, options);
    const known = this.channelStates.get(channel);
    if (!known || compareIds(known.lastId, since) < 0) this.channelStates.set(channel, { lastId: since });
    return { members: numberOr(reply.members), recovered: boolOr(reply.recovered) };
  }

  /** Leaves a channel (it is no longer re-joined). Resolves also when not connected. */
  async leave(channel: string, options: RequestOptions = {}): Promise<void> {
    this.channelStates.delete(channel);
    if (!this.isOpen()) return;
    try {
      await this.request("leave", { channel }, options);
    } catch (e) {
      if (e instanceof ShardchatError && (e.code === "not_joined" || e.code === "disconnected")) return;
      throw e;
    }
  }

  /**
   * Publishes to a joined channel. Resolves with the stored message's id
   * (the message itself also arrives as a `message` event). Every publish
   * carries a nonce: on a retryable error, publishing again with
   * `{ nonce: err.nonce }` never stores it twice. Without a connection it
   * fails at once with `not_connected`, unless `offlineQueue` is on.
   */
  async publish(channel: string, text: string, options: PublishOptions = {}): Promise<PublishResult> {
    const nonce = this.checkNonce(options.nonce);
    const frame: Record<string, unknown> = { channel, text, nonce };
    if (options.meta !== undefined) frame.meta = options.meta;
    const reply = await this.send("publish", frame, options, true);
    return publishResult(reply, nonce);
  }

  /** The newest `limit` messages (before `before`), oldest first. */
  async history(
    channel: string,
    options: RequestOptions & { limit?: number; before?: string } = {},
  ): Promise<HistoryResult> {
    const frame: Record<string, unknown> = { channel };
    if (options.limit !== undefined) frame.limit = options.limit;
    if (options.before !== undefined) frame.before = options.before;
    const reply = await this.request("history", frame, options);
    return { messages: arrayOr<ChatMessage>(reply.messages), truncated: reply.truncated === true };
  }

  /** Round trip to the node: its clock (`ts`) and the measured `rttMs`. */
  async ping(options: RequestOptions = {}): Promise<{ ts: number; rttMs: number }> {
    const start = Date.now();
    const reply = await this.request("ping", {}, options);
    return { ts: numberOr(reply.ts) ?? 0, rttMs: Date.now() - start };
  }

  /** Sends a direct message (same nonce rules as {@link publish}). */
  async dm(to: string, text: string, options: PublishOptions = {}): Promise<PublishResult> {
    const nonce = this.checkNonce(options.nonce);
    const frame: Record<string, unknown> = { to, text, nonce };
    if (options.meta !== undefined) frame.meta = options.meta;
    const reply = await this.send("dm", frame, options, true);
    return publishResult(reply, nonce);
  }

  /** Direct messages to or from you after the mailbox cursor `since`. */
  async dmSync(since?: string, options: RequestOptions = {}): Promise<DmSyncResult> {
    const reply = await this.request("dm_sync", since === undefined ? {} : { since }, options);
    return {
      messages: arrayOr<DirectMessage>(reply.messages),
      cursor: typeof reply.cursor === "string" ? reply.cursor : undefined,
      recovered: boolOr(reply.recovered),
      truncated: reply.truncated === true,
    };
  }

  /** The newest `limit` messages of your conversation with `withUser`, oldest first. */
  async dmHistory(
    withUser: string,
    options: RequestOptions & { limit?: number; before?: string } = {},
  ): Promise<HistoryResult<DirectMessage>> {
    const frame: Record<string, unknown> = { with: withUser };
    if (options.limit !== undefined) frame.limit = options.limit;
    if (options.before !== undefined) frame.before = options.before;
    const reply = await this.request("dm_history", frame, options);
    return { messages: arrayOr<DirectMessage>(reply.messages), truncated: reply.truncated === true };
  }

  /**
   * Any request (e.g. `dm_unread`, `dm_read`, `dm_settings`): resolves with
   * the reply object when `ok`, rejects with a {@link ShardchatError}.
   * Waits for a connection within the timeout.
   */
  request(op: string, fields: Record<string, unknown> = {}, options: RequestOptions = {}): Promise<Record<string, unknown>> {
    return this.send(op, fields, options, false);
  }

  // ------------------------------------------------------------ requests

  private checkNonce(nonce: string | undefined): string {
    if (nonce === undefined) return `${this.noncePrefix}-${++this.nonceCounter}`;
    if (!NONCE_RE.test(nonce)) {
      throw new ShardchatError("bad_request", "nonce must be 1-64 characters of A-Z a-z 0-9 - _ . :");
    }
    return nonce;
  }

  private timeoutOf(options: RequestOptions): number {
    const t = options.timeoutMs ?? this.opts.requestTimeoutMs ?? 10_000;
    return t > 0 ? t : 10_000;
  }

  /**
   * Sends `op`. `publishLike` requests (publish, dm) never wait for a
   * connection unless the offline queue is on; other requests wait for one
   * within their timeout.
   */
  private send(
    op: string,
    fields: Record<string, unknown>,
    options: RequestOptions,
    publishLike: boolean,
  ): Promise<Record<string, unknown>> {
    const timeoutMs = this.timeoutOf(options);
    const extra = { nonce: typeof fields.nonce === "string" ? fields.nonce : undefined, channel: strOr(fields.channel) };
    return new Promise((resolve, reject) => {
      const p: Pending = {
        op,
        frame: { ...fields },
        resolve,
        reject,
        timer: null,
        queued: publishLike && this.opts.offlineQueue === true,
        deadline: Date.now() + timeoutMs,
      };
      p.timer = setTimeout(() => this.expire(p, extra), timeoutMs);
      if (this._state === "connected" && this.isOpen()) {
        this.transmit(p);
        return;
      }
      if (publishLike && !p.queued) {
        this.settle(p);
        reject(new ShardchatError("not_connected", `${op}: not connected`, extra));
        return;
      }
      if (this._state === "idle" || this._state === "stopped") {
        this.settle(p);
        reject(new ShardchatError("not_connected", `${op}: the client is ${this._state}; call connect()`, extra));
        return;
      }
      if (p.queued && this.queue.length >= (this.opts.offlineQueueLimit ?? 100)) {
        this.settle(p);
        reject(new ShardchatError("not_connected", `${op}: not connected and the offline queue is full`, extra));
        return;
      }
      this.queue.push(p);
    });
  }

  private expire(p: Pending, extra: { nonce?: string; channel?: string }): void {
    p.timer = null;
    this.settle(p);
    p.reject(new ShardchatError("request_timeout", `${p.op}: no reply within the timeout`, extra));
  }

  /** Forgets `p` wherever it is waiting. */
  private settle(p: Pending): void {
    if (p.timer) clearTimeout(p.timer);
    p.timer = null;
    const i = this.queue.indexOf(p);
    if (i >= 0) this.queue.splice(i, 1);
    for (const [id, q] of this.pending) {
      if (q === p) {
        this.pending.delete(id);
        break;
      }
    }
  }

  /** Writes `p` to the open socket with a fresh id. */
  private transmit(p: Pending): void {
    const ws = this.ws;
    if (!ws) return;
    const id = this.nextId++;
    this.pending.set(id, p);
    try {
      ws.send(JSON.stringify({ op: p.op, id, ...p.frame }));
    } catch {
      // The socket is going away; its close handler deals with `p`.
    }
  }

  /** Sends a request on the current socket right now (used while re-joining). */
  private direct(op: string, fields: Record<string, unknown>): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const timeoutMs = this.timeoutOf({});
      const p: Pending = { op, frame: fields, resolve, reject, timer: null, queued: false, deadline: Date.now() + timeoutMs };
      p.timer = setTimeout(() => this.expire(p, { channel: strOr(fields.channel) }), timeoutMs);
      this.transmit(p);
    });
  }

  private failPending(err: ShardchatError, includeQueued: boolean): void {
    const again: Pending[] = [];
    for (const [id, p] of [...this.pending]) {
      this.pending.delete(id);
      if (p.queued && !includeQueued) {
        // Its outcome is unknown: send it again (same nonce) when connected.
        again.push(p);
        continue;
      }
      if (p.timer) clearTimeout(p.timer);
      const nonce = typeof p.frame.nonce === "string" ? p.frame.nonce : undefined;
      p.reject(new ShardchatError(err.code, `${p.op}: ${err.message}`, { nonce, channel: strOr(p.frame.channel) }));
    }
    this.queue.unshift(...again);
    if (includeQueued) {
      for (const p of this.queue.splice(0)) {
        if (p.timer) clearTimeout(p.timer);
        const nonce = typeof p.frame.nonce === "string" ? p.frame.nonce : undefined;
        p.reject(new ShardchatError(err.code, `${p.op}: ${err.message}`, { nonce, channel: strOr(p.frame.channel) }));
      }
    }
  }

  private whenConnected(timeoutMs: number | undefined, closeOnTimeout: boolean): Promise<void> {
    return new Promise((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | null = null;
      const w = {
        resolve: () => {
          if (timer) clearTimeout(timer);
          resolve();
        },
        reject: (e: ShardchatError) => {
          if (timer) clearTimeout(timer);
          reject(e);
        },
      };
      this.waiters.add(w);
      if (timeoutMs !== undefined && timeoutMs > 0) {
        timer = setTimeout(() => {
          this.waiters.delete(w);
          reject(new ShardchatError("request_timeout", "not connected within the timeout"));
          if (closeOnTimeout && this._state !== "connected") this.close();
        }, timeoutMs);
      }
    });
  }

  private failWaiters(err: ShardchatError): void {
    for (const w of [...this.waiters]) {
      this.waiters.delete(w);
      w.reject(err);
    }
  }

  // ------------------------------------------------------------ connection

  private isOpen(): boolean {
    return this.ws !== null && this.ws.readyState === OPEN;
  }

  private setState(next: ConnectionState): void {
    const previous = this._state;
    if (previous === next) return;
    this._state = next;
    this.emit("state", { state: next, previous });
  }

  private async currentToken(): Promise<string | undefined> {
    if (this.opts.getToken && this.token === undefined) this.token = await this.opts.getToken("connect");
    return this.token;
  }

  private async open(): Promise<void> {
    const gen = ++this.generation;
    this.clearTimers();
    let token: string | undefined;
    try {
      token = await this.currentToken();
    } catch (e) {
      if (gen !== this.generation) return;
      this.emit("error", new ShardchatError("unauthorized", `getToken failed: ${String((e as Error)?.message ?? e)}`));
      this.afterClose(gen, { code: 1006, reason: "no token" });
      return;
    }
    if (gen !== this.generation) return;
    const url = new URL(this.urls[this.urlIndex % this.urls.length]);
    this.urlIndex++;
    const protocols: string[] = [];
    if (token !== undefined) {
      protocols.push("shardchat.v1", `bearer.${token}`);
    } else if (this.opts.user !== undefined) {
      url.searchParams.set("user", this.opts.user);
      if (this.opts.roles && this.opts.roles.length > 0) url.searchParams.set("roles", this.opts.roles.join(","));
    }
    this.handshakeStatus = undefined;
    let ws: WebSocketLike;
    try {
      ws = this.factory(url.toString(), protocols);
    } catch (e) {
      const err = new ShardchatError("bad_request", `cannot open a WebSocket: ${String((e as Error)?.message ?? e)}`);
      this.emit("error", err);
      this.stop(err, { code: 1006, reason: err.message, willReconnect: false });
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (gen !== this.generation) return;
      void this.onOpen(gen);
    };
    ws.onmessage = (ev) => {
      if (gen !== this.generation) return;
      this.armHeartbeat(gen);
      if (typeof ev.data === "string") this.onFrame(ev.data);
    };
    ws.onerror = (ev) => {
      if (gen !== this.generation) return;
      // `ws` (Node.js) says why an upgrade was refused; browsers never do.
      const text = String((ev as { message?: unknown })?.message ?? "");
      const m = /Unexpected server response: (\d{3})/.exec(text);
      if (m) this.handshakeStatus = Number(m[1]);
    };
    ws.onclose = (ev) => {
      if (gen !== this.generation) return;
      this.afterClose(gen, { code: ev.code, reason: ev.reason });
    };
  }

  private async onOpen(gen: number): Promise<void> {
    if (this.everOpened) this._reconnects++;
    this.everOpened = true;
    this.armHeartbeat(gen);
    // Re-join every channel with since = last id seen, one by one (joins
    // are rate-limited per connection: 2/s with a burst of 20).
    for (const [channel, st] of [...this.channelStates]) {
      if (gen !== this.generation) return;
      const since = st.lastId;
      let reply: Record<string, unknown> | null = null;
      for (let tries = 0; reply === null; tries++) {
        try {
          reply = await this.direct("join", { channel, since });
        } catch (e) {
          if (gen !== this.generation) return;
          const err = e instanceof ShardchatError ? e : new ShardchatError("error", String(e));
          if (err.code === "rate_limited" && tries < 20) {
            await sleep(600);
            continue;
          }
          if (err.retryable) {
            // The node cannot serve this channel now: try again on a new connection.
            this.emit("error", new ShardchatError(err.code, `re-joining ${channel}: ${err.message}`, { channel }));
            this.dropConnection(`re-join of ${channel} failed: ${err.code}`);
            return;
          }
          // Refused for good (access changed, channel deleted): no longer a member.
          this.channelStates.delete(channel);
          this.emit("error", new ShardchatError(err.code, `re-joining ${channel}: ${err.message}`, { channel }));
          break;
        }
      }
      if (reply !== null) {
        const recovered = reply.recovered !== false;
        this.emit("rejoin", { channel, since, recovered, members: numberOr(reply.members) });
      }
    }
    if (gen !== this.generation) return;
    this.attempt = 0;
    this.setState("connected");
    for (const w of [...this.waiters]) {
      this.waiters.delete(w);
      w.resolve();
    }
    // Requests that waited for the connection, oldest first.
    for (const p of this.queue.splice(0)) {
      if (Date.now() >= p.deadline) continue; // its timer fires
      this.transmit(p);
    }
  }

  /** Closes the current socket so that the normal reconnect path runs. */
  private dropConnection(reason: string): void {
    const ws = this.ws;
    const gen = this.generation;
    if (!ws) return;
    try {
      ws.close(CLIENT_RECONNECT, reason.slice(0, 120));
    } catch {
      /* ignore */
    }
    // Do not wait for the close handshake of a dead connection.
    this.afterClose(gen, { code: CLIENT_RECONNECT, reason });
  }

  private afterClose(gen: number, ev: { code: number; reason: string }): void {
    if (gen !== this.generation) return;
    this.generation++; // ignore anything the old socket still reports
    this.ws = null;
    this.clearTimers();
    this.failPending(new ShardchatError("disconnected", "connection lost before the reply"), false);
    const httpStatus = this.handshakeStatus;
    const base = { code: ev.code, reason: ev.reason, ...(httpStatus !== undefined ? { httpStatus } : {}) };

    if (ev.code === 4001 || httpStatus === 401) {
      void this.onUnauthorized(base);
      return;
    }
    const fatal = FATAL_CLOSE[ev.code] ?? (httpStatus !== undefined ? FATAL_HTTP[httpStatus] : undefined);
    if (fatal || this.opts.reconnect === false) {
      const err = new ShardchatError(fatal ? "forbidden" : "disconnected", fatal ?? `connection closed (${ev.code})`);
      this.stop(err, { ...base, willReconnect: false });
      return;
    }
    // 1012 (restart/drain) is planned: come back fast, to any node.
    const delay = ev.code === 1012 && this.attempt === 0 ? this.jitter(this.minDelay() / 2) : this.backoff();
    this.attempt++;
    this.setState(this._state === "connecting" ? "connecting" : "reconnecting");
    this.emit("disconnect", { ...base, willReconnect: true, delayMs: delay });
    this.scheduleReconnect(delay);
  }

  private async onUnauthorized(base: { code: number; reason: string; httpStatus?: number }): Promise<void> {
    const rejected = this.token;
    if (this.opts.getToken) {
      const gen = this.generation;
      let fresh: string | undefined;
      try {
        fresh = await this.opts.getToken("expired");
      } catch (e) {
        this.emit("error", new ShardchatError("unauthorized", `getToken failed: ${String((e as Error)?.message ?? e)}`));
      }
      if (gen !== this.generation || this._state === "idle") return;
      if (fresh !== undefined && fresh !== rejected) {
        this.token = fresh;
        const delay = this.backoff();
        this.attempt++;
        this.setState("reconnecting");
        this.emit("disconnect", { ...base, willReconnect: true, delayMs: delay });
        this.scheduleReconnect(delay);
        return;
      }
    }
    this.rejectedToken = rejected ?? "";
    const err = new ShardchatError("unauthorized", "the token was refused or expired; call setToken() with a new one");
    this.stop(err, { ...base, willReconnect: false });
  }

  /** Stops for good (until connect()/setToken()); fails what waits. */
  private stop(err: ShardchatError, ev: DisconnectEvent): void {
    this.clearTimers();
    this.failPending(err, true);
    this.failWaiters(err);
    this.setState("stopped");
    this.emit("disconnect", ev);
    this.emit("error", err);
  }

  private minDelay(): number {
    const r = this.opts.reconnect;
    return (r && r.minDelayMs) || 500;
  }

  private jitter(ms: number): number {
    const r = this.opts.reconnect;
    const j = r && r.jitter !== undefined ? Math.min(Math.max(r.jitter, 0), 1) : 0.5;
    return Math.round(ms * (1 - j / 2 + Math.random() * j));
  }

  /** Jittered exponential backoff for the current attempt. */
  private backoff(): number {
    const r = this.opts.reconnect || {};
    const max = r.maxDelayMs ?? 15_000;
    const factor = r.factor ?? 2;
    const raw = Math.min(max, this.minDelay() * Math.pow(factor, Math.min(this.attempt, 30)));
    return Math.min(max, this.jitter(raw));
  }

  private scheduleReconnect(delay: number): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (this._state === "reconnecting" || this._state === "connecting") void this.open();
    }, delay);
  }

  private armHeartbeat(gen: number): void {
    const every = this.opts.heartbeatMs ?? 25_000;
    if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
    this.heartbeatTimer = null;
    if (!(every > 0)) return;
    this.heartbeatTimer = setTimeout(() => {
      if (gen !== this.generation || !this.isOpen()) return;
      this.direct("ping", {}).catch((e) => {
        if (gen !== this.generation) return;
        if (e instanceof ShardchatError && e.code === "request_timeout") this.dropConnection("heartbeat timed out");
      });
    }, every);
  }

  private clearTimers(): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
    this.reconnectTimer = null;
    this.heartbeatTimer = null;
  }

  // ------------------------------------------------------------ frames

  private onFrame(text: string): void {
    let f: unknown;
    try {
      f = JSON.parse(text);
    } catch {
      this.emit("error", new ShardchatError("bad_frame", "the server sent a frame that is not JSON"));
      return;
    }
    if (!isObject(f)) return;
    switch (f.op) {
      case "reply": {
        const id = f.id as number | string;
        const p = this.pending.get(id);
        if (!p) return; // timed out already
        this.pending.delete(id);
        if (p.timer) clearTimeout(p.timer);
        p.timer = null;
        if (f.ok === true) {
          p.resolve(f);
          return;
        }
        const nonce = typeof p.frame.nonce === "string" ? p.frame.nonce : undefined;
        const err = toError(f.error, { nonce, channel: strOr(p.frame.channel) });
        p.reject(err);
        return;
      }
      case "message": {
        const m = f as unknown as ChatMessage;
        if (typeof m.channel !== "string" || typeof m.id !== "string") return;
        const st = this.channelStates.get(m.channel);
        if (st) {
          if (compareIds(m.id, st.lastId) <= 0) {
            this._duplicatesDropped++;
            return;
          }
          st.lastId = m.id;
        }
        this.emit("message", stripOp(f) as unknown as ChatMessage);
        return;
      }
      case "presence":
        this.emit("presence", stripOp(f) as unknown as PresenceEvent);
        return;
      case "closed": {
        const channel = String(f.channel ?? "");
        this.channelStates.delete(channel);
        this.emit("closed", { channel, reason: String(f.reason ?? "") });
        return;
      }
      case "gap":
        this.emit("gap", { channel: String(f.channel ?? ""), reason: String(f.reason ?? "") });
        return;
      case "dm":
        this.emit("dm", stripOp(f) as unknown as DirectMessage);
        return;
      case "dm_gap":
        this.emit("dm_gap", { reason: String(f.reason ?? "") });
        return;
      case "error":
        this.emit("error", toError(f.error));
        return;
      default:
        return; // newer servers may push more; ignore
    }
  }

  private emit<E extends keyof ClientEvents>(event: E, payload: ClientEvents[E]): void {
    const set = this.handlers.get(event);
    if (!set) return;
    for (const h of [...set]) {
      try {
        (h as Handler<ClientEvents[E]>)(payload);
      } catch (e) {
        // A throwing handler must not break the client; report it asynchronously.
        setTimeout(() => {
          throw e;
        }, 0);
      }
    }
  }
}

// ---------------------------------------------------------------- helpers

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function stripOp(f: Record<string, unknown>): Record<string, unknown> {
  const { op: _op, ...rest } = f;
  return rest;
}

function numberOr(v: unknown): number | undefined {
  return typeof v === "number" ? v : undefined;
}

function boolOr(v: unknown): boolean | undefined {
  return typeof v === "boolean" ? v : undefined;
}

function strOr(v: unknown): string | undefined {
  return typeof v === "string" ? v : undefined;
}

function arrayOr<T>(v: unknown): T[] {
  return Array.isArray(v) ? (v as T[]) : [];
}

function publishResult(reply: Record<string, unknown>, nonce: string): PublishResult {
  const id = reply.message_id;
  if (typeof id !== "string") throw new ShardchatError("bad_frame", "reply without message_id", { nonce });
  return { messageId: id, duplicate: reply.duplicate === true, nonce };
}
