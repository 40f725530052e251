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
/** Codes after which sending the same request again (same nonce) is sensible. */
const RETRYABLE = new Set([
    "rate_limited",
    "unavailable",
    "timeout",
    "request_timeout",
    "disconnected",
    "not_connected",
]);
/** A failed request, an `error` push, or a connection problem. */
export class ShardchatError extends Error {
    constructor(code, message, extra = {}) {
        super(message);
        this.name = "ShardchatError";
        this.code = code;
        this.retryable = RETRYABLE.has(code);
        if (extra.nonce !== undefined)
            this.nonce = extra.nonce;
        if (extra.channel !== undefined)
            this.channel = extra.channel;
    }
}
// ---------------------------------------------------------------- message ids
function parseId(id) {
    const m = /^(\d+)-(\d+)$/.exec(id);
    if (!m)
        return null;
    return [m[1].replace(/^0+(?=\d)/, ""), m[2].replace(/^0+(?=\d)/, "")];
}
function compareDigits(a, b) {
    if (a.length !== b.length)
        return a.length < b.length ? -1 : 1;
    return a < b ? -1 : a > b ? 1 : 0;
}
/**
 * Compares two message ids (`<ms>-<seq>`) numerically, part by part:
 * negative when `a` is older, 0 when equal, positive when newer.
 * Malformed ids compare as strings, after every well-formed one.
 */
export function compareIds(a, b) {
    const pa = parseId(a);
    const pb = parseId(b);
    if (pa && pb)
        return compareDigits(pa[0], pb[0]) || compareDigits(pa[1], pb[1]);
    if (pa)
        return -1;
    if (pb)
        return 1;
    return a < b ? -1 : a > b ? 1 : 0;
}
const OPEN = 1;
const NONCE_RE = /^[A-Za-z0-9._:-]{1,64}$/;
function randomPrefix() {
    const bytes = new Uint8Array(8);
    const c = globalThis.crypto;
    if (c && typeof c.getRandomValues === "function")
        c.getRandomValues(bytes);
    else
        for (let i = 0; i < bytes.length; i++)
            bytes[i] = Math.floor(Math.random() * 256);
    return Array.from(bytes, (b) => b.toString(36).padStart(2, "0")).join("");
}
function normaliseUrl(raw) {
    const u = new URL(raw);
    if (u.protocol === "http:")
        u.protocol = "ws:";
    else if (u.protocol === "https:")
        u.protocol = "wss:";
    else if (u.protocol !== "ws:" && u.protocol !== "wss:") {
        throw new ShardchatError("bad_request", `unsupported URL scheme ${u.protocol} (use ws:, wss:, http: or https:)`);
    }
    if (u.pathname === "" || u.pathname === "/")
        u.pathname = "/v1/ws";
    u.hash = "";
    return u.toString();
}
function isObject(v) {
    return typeof v === "object" && v !== null && !Array.isArray(v);
}
function toError(v, extra = {}) {
    if (isObject(v)) {
        const code = typeof v.code === "string" ? v.code : "error";
        const message = typeof v.message === "string" ? v.message : "request failed";
        return new ShardchatError(code, message, extra);
    }
    return new ShardchatError("error", "request failed", extra);
}
/** Close codes after which reconnecting would only repeat the problem. */
const FATAL_CLOSE = {
    1007: "the client sent invalid UTF-8",
    1008: "policy violation (flooding past the rate limits)",
    1009: "the client sent a frame that is too large",
};
/** HTTP statuses of a refused upgrade that retrying cannot fix. */
const FATAL_HTTP = {
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
    constructor(options) {
        this.urlIndex = 0;
        this.handlers = new Map();
        this.channelStates = new Map();
        this.pending = new Map();
        /** Offline-queued publishes waiting for a connection, oldest first. */
        this.queue = [];
        this.waiters = new Set();
        this.ws = null;
        this._state = "idle";
        this.nextId = 1;
        this.noncePrefix = randomPrefix();
        this.nonceCounter = 0;
        this.attempt = 0;
        this.reconnectTimer = null;
        this.heartbeatTimer = null;
        /** Bumps on every new socket: stale callbacks check it. */
        this.generation = 0;
        this._duplicatesDropped = 0;
        this._reconnects = 0;
        this.everOpened = false;
        if (!options || (typeof options.url !== "string" && !Array.isArray(options.url))) {
            throw new ShardchatError("bad_request", "options.url is required");
        }
        this.opts = { ...options };
        const list = Array.isArray(options.url) ? options.url : [options.url];
        if (list.length === 0)
            throw new ShardchatError("bad_request", "options.url is an empty list");
        this.urls = list.map(normaliseUrl);
        this.token = options.token;
        this.factory = ShardchatClient.makeFactory(options.WebSocket);
    }
    static makeFactory(impl) {
        const ctor = impl ??
            (globalThis.WebSocket);
        if (!ctor) {
            throw new ShardchatError("bad_request", "no WebSocket implementation: pass options.WebSocket (in Node.js import the package root)");
        }
        // A class (has a prototype with send) is called with `new`; a plain function is a factory.
        const proto = ctor.prototype;
        if (proto && typeof proto.send === "function") {
            const C = ctor;
            return (url, protocols) => (protocols.length > 0 ? new C(url, protocols) : new C(url));
        }
        return ctor;
    }
    // ------------------------------------------------------------ public API
    /** The connection state. */
    get state() {
        return this._state;
    }
    /** Channels this client is a member of (re-joined after every reconnect). */
    get channels() {
        return [...this.channelStates.keys()];
    }
    /** The newest message id delivered in `channel` (what a re-join passes as `since`). */
    lastId(channel) {
        return this.channelStates.get(channel)?.lastId;
    }
    /**
     * Counters: `reconnects` (connections opened after the first),
     * `duplicatesDropped` (pushed messages not newer than the last one seen
     * in their channel; the server guarantees none, so this stays 0), and
     * `queued` (publishes waiting in the offline queue).
     */
    get stats() {
        return { reconnects: this._reconnects, duplicatesDropped: this._duplicatesDropped, queued: this.queue.length };
    }
    /** Subscribes to an event; returns a function that unsubscribes. */
    on(event, handler) {
        let set = this.handlers.get(event);
        if (!set) {
            set = new Set();
            this.handlers.set(event, set);
        }
        set.add(handler);
        return () => this.off(event, handler);
    }
    off(event, handler) {
        this.handlers.get(event)?.delete(handler);
    }
    /**
     * Starts the client. Resolves once connected (and every channel joined
     * before is joined again); rejects when the client stops first (policy
     * close, token refused, {@link close}), or after `timeoutMs` (then the
     * client is closed). The client keeps reconnecting until then.
     */
    connect(options = {}) {
        if (this._state === "connected")
            return Promise.resolve();
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
    close() {
        this.clearTimers();
        const ws = this.ws;
        this.ws = null;
        this.generation++;
        if (ws) {
            try {
                ws.close(1000, "client closed");
            }
            catch {
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
    setToken(token) {
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
    async join(channel, options = {}) {
        let since = options.since;
        if (since === undefined) {
            const h = await this.history(channel, { limit: 1, timeoutMs: options.timeoutMs });
            const newest = h.messages.length > 0 ? h.messages[h.messages.length - 1].id : undefined;
            since = newest ?? "0-0";
        }
        const reply = await this.request("join", { channel, since }, options);
        const known = this.channelStates.get(channel);
        if (!known || compareIds(known.lastId, since) < 0)
            this.channelStates.set(channel, { lastId: since });
        return { members: numberOr(reply.members), recovered: boolOr(reply.recovered) };
    }
    /** Leaves a channel (it is no longer re-joined). Resolves also when not connected. */
    async leave(channel, options = {}) {
        this.channelStates.delete(channel);
        if (!this.isOpen())
            return;
        try {
            await this.request("leave", { channel }, options);
        }
        catch (e) {
            if (e instanceof ShardchatError && (e.code === "not_joined" || e.code === "disconnected"))
                return;
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
    async publish(channel, text, options = {}) {
        const nonce = this.checkNonce(options.nonce);
        const frame = { channel, text, nonce };
        if (options.meta !== undefined)
            frame.meta = options.meta;
        const reply = await this.send("publish", frame, options, true);
        return publishResult(reply, nonce);
    }
    /** The newest `limit` messages (before `before`), oldest first. */
    async history(channel, options = {}) {
        const frame = { channel };
        if (options.limit !== undefined)
            frame.limit = options.limit;
        if (options.before !== undefined)
            frame.before = options.before;
        const reply = await this.request("history", frame, options);
        return { messages: arrayOr(reply.messages), truncated: reply.truncated === true };
    }
    /** Round trip to the node: its clock (`ts`) and the measured `rttMs`. */
    async ping(options = {}) {
        const start = Date.now();
        const reply = await this.request("ping", {}, options);
        return { ts: numberOr(reply.ts) ?? 0, rttMs: Date.now() - start };
    }
    /** Sends a direct message (same nonce rules as {@link publish}). */
    async dm(to, text, options = {}) {
        const nonce = this.checkNonce(options.nonce);
        const frame = { to, text, nonce };
        if (options.meta !== undefined)
            frame.meta = options.meta;
        const reply = await this.send("dm", frame, options, true);
        return publishResult(reply, nonce);
    }
    /** Direct messages to or from you after the mailbox cursor `since`. */
    async dmSync(since, options = {}) {
        const reply = await this.request("dm_sync", since === undefined ? {} : { since }, options);
        return {
            messages: arrayOr(reply.messages),
            cursor: typeof reply.cursor === "string" ? reply.cursor : undefined,
            recovered: boolOr(reply.recovered),
            truncated: reply.truncated === true,
        };
    }
    /** The newest `limit` messages of your conversation with `withUser`, oldest first. */
    async dmHistory(withUser, options = {}) {
        const frame = { with: withUser };
        if (options.limit !== undefined)
            frame.limit = options.limit;
        if (options.before !== undefined)
            frame.before = options.before;
        const reply = await this.request("dm_history", frame, options);
        return { messages: arrayOr(reply.messages), truncated: reply.truncated === true };
    }
    /**
     * Any request (e.g. `dm_unread`, `dm_read`, `dm_settings`): resolves with
     * the reply object when `ok`, rejects with a {@link ShardchatError}.
     * Waits for a connection within the timeout.
     */
    request(op, fields = {}, options = {}) {
        return this.send(op, fields, options, false);
    }
    // ------------------------------------------------------------ requests
    checkNonce(nonce) {
        if (nonce === undefined)
            return `${this.noncePrefix}-${++this.nonceCounter}`;
        if (!NONCE_RE.test(nonce)) {
            throw new ShardchatError("bad_request", "nonce must be 1-64 characters of A-Z a-z 0-9 - _ . :");
        }
        return nonce;
    }
    timeoutOf(options) {
        const t = options.timeoutMs ?? this.opts.requestTimeoutMs ?? 10000;
        return t > 0 ? t : 10000;
    }
    /**
     * Sends `op`. `publishLike` requests (publish, dm) never wait for a
     * connection unless the offline queue is on; other requests wait for one
     * within their timeout.
     */
    send(op, fields, options, publishLike) {
        const timeoutMs = this.timeoutOf(options);
        const extra = { nonce: typeof fields.nonce === "string" ? fields.nonce : undefined, channel: strOr(fields.channel) };
        return new Promise((resolve, reject) => {
            const p = {
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
    expire(p, extra) {
        p.timer = null;
        this.settle(p);
        p.reject(new ShardchatError("request_timeout", `${p.op}: no reply within the timeout`, extra));
    }
    /** Forgets `p` wherever it is waiting. */
    settle(p) {
        if (p.timer)
            clearTimeout(p.timer);
        p.timer = null;
        const i = this.queue.indexOf(p);
        if (i >= 0)
            this.queue.splice(i, 1);
        for (const [id, q] of this.pending) {
            if (q === p) {
                this.pending.delete(id);
                break;
            }
        }
    }
    /** Writes `p` to the open socket with a fresh id. */
    transmit(p) {
        const ws = this.ws;
        if (!ws)
            return;
        const id = this.nextId++;
        this.pending.set(id, p);
        try {
            ws.send(JSON.stringify({ op: p.op, id, ...p.frame }));
        }
        catch {
            // The socket is going away; its close handler deals with `p`.
        }
    }
    /** Sends a request on the current socket right now (used while re-joining). */
    direct(op, fields) {
        return new Promise((resolve, reject) => {
            const timeoutMs = this.timeoutOf({});
            const p = { op, frame: fields, resolve, reject, timer: null, queued: false, deadline: Date.now() + timeoutMs };
            p.timer = setTimeout(() => this.expire(p, { channel: strOr(fields.channel) }), timeoutMs);
            this.transmit(p);
        });
    }
    failPending(err, includeQueued) {
        const again = [];
        for (const [id, p] of [...this.pending]) {
            this.pending.delete(id);
            if (p.queued && !includeQueued) {
                // Its outcome is unknown: send it again (same nonce) when connected.
                again.push(p);
                continue;
            }
            if (p.timer)
                clearTimeout(p.timer);
            const nonce = typeof p.frame.nonce === "string" ? p.frame.nonce : undefined;
            p.reject(new ShardchatError(err.code, `${p.op}: ${err.message}`, { nonce, channel: strOr(p.frame.channel) }));
        }
        this.queue.unshift(...again);
        if (includeQueued) {
            for (const p of this.queue.splice(0)) {
                if (p.timer)
                    clearTimeout(p.timer);
                const nonce = typeof p.frame.nonce === "string" ? p.frame.nonce : undefined;
                p.reject(new ShardchatError(err.code, `${p.op}: ${err.message}`, { nonce, channel: strOr(p.frame.channel) }));
            }
        }
    }
    whenConnected(timeoutMs, closeOnTimeout) {
        return new Promise((resolve, reject) => {
            let timer = null;
            const w = {
                resolve: () => {
                    if (timer)
                        clearTimeout(timer);
                    resolve();
                },
                reject: (e) => {
                    if (timer)
                        clearTimeout(timer);
                    reject(e);
                },
            };
            this.waiters.add(w);
            if (timeoutMs !== undefined && timeoutMs > 0) {
                timer = setTimeout(() => {
                    this.waiters.delete(w);
                    reject(new ShardchatError("request_timeout", "not connected within the timeout"));
                    if (closeOnTimeout && this._state !== "connected")
                        this.close();
                }, timeoutMs);
            }
        });
    }
    failWaiters(err) {
        for (const w of [...this.waiters]) {
            this.waiters.delete(w);
            w.reject(err);
        }
    }
    // ------------------------------------------------------------ connection
    isOpen() {
        return this.ws !== null && this.ws.readyState === OPEN;
    }
    setState(next) {
        const previous = this._state;
        if (previous === next)
            return;
        this._state = next;
        this.emit("state", { state: next, previous });
    }
    async currentToken() {
        if (this.opts.getToken && this.token === undefined)
            this.token = await this.opts.getToken("connect");
        return this.token;
    }
    async open() {
        const gen = ++this.generation;
        this.clearTimers();
        let token;
        try {
            token = await this.currentToken();
        }
        catch (e) {
            if (gen !== this.generation)
                return;
            this.emit("error", new ShardchatError("unauthorized", `getToken failed: ${String(e?.message ?? e)}`));
            this.afterClose(gen, { code: 1006, reason: "no token" });
            return;
        }
        if (gen !== this.generation)
            return;
        const url = new URL(this.urls[this.urlIndex % this.urls.length]);
        this.urlIndex++;
        const protocols = [];
        if (token !== undefined) {
            protocols.push("shardchat.v1", `bearer.${token}`);
        }
        else if (this.opts.user !== undefined) {
            url.searchParams.set("user", this.opts.user);
            if (this.opts.roles && this.opts.roles.length > 0)
                url.searchParams.set("roles", this.opts.roles.join(","));
        }
        this.handshakeStatus = undefined;
        let ws;
        try {
            ws = this.factory(url.toString(), protocols);
        }
        catch (e) {
            const err = new ShardchatError("bad_request", `cannot open a WebSocket: ${String(e?.message ?? e)}`);
            this.emit("error", err);
            this.stop(err, { code: 1006, reason: err.message, willReconnect: false });
            return;
        }
        this.ws = ws;
        ws.onopen = () => {
            if (gen !== this.generation)
                return;
            void this.onOpen(gen);
        };
        ws.onmessage = (ev) => {
            if (gen !== this.generation)
                return;
            this.armHeartbeat(gen);
            if (typeof ev.data === "string")
                this.onFrame(ev.data);
        };
        ws.onerror = (ev) => {
            if (gen !== this.generation)
                return;
            // `ws` (Node.js) says why an upgrade was refused; browsers never do.
            const text = String(ev?.message ?? "");
            const m = /Unexpected server response: (\d{3})/.exec(text);
            if (m)
                this.handshakeStatus = Number(m[1]);
        };
        ws.onclose = (ev) => {
            if (gen !== this.generation)
                return;
            this.afterClose(gen, { code: ev.code, reason: ev.reason });
        };
    }
    async onOpen(gen) {
        if (this.everOpened)
            this._reconnects++;
        this.everOpened = true;
        this.armHeartbeat(gen);
        // Re-join every channel with since = last id seen, one by one (joins
        // are rate-limited per connection: 2/s with a burst of 20).
        for (const [channel, st] of [...this.channelStates]) {
            if (gen !== this.generation)
                return;
            const since = st.lastId;
            let reply = null;
            for (let tries = 0; reply === null; tries++) {
                try {
                    reply = await this.direct("join", { channel, since });
                }
                catch (e) {
                    if (gen !== this.generation)
                        return;
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
        if (gen !== this.generation)
            return;
        this.attempt = 0;
        this.setState("connected");
        for (const w of [...this.waiters]) {
            this.waiters.delete(w);
            w.resolve();
        }
        // Requests that waited for the connection, oldest first.
        for (const p of this.queue.splice(0)) {
            if (Date.now() >= p.deadline)
                continue; // its timer fires
            this.transmit(p);
        }
    }
    /** Closes the current socket so that the normal reconnect path runs. */
    dropConnection(reason) {
        const ws = this.ws;
        const gen = this.generation;
        if (!ws)
            return;
        try {
            ws.close(CLIENT_RECONNECT, reason.slice(0, 120));
        }
        catch {
            /* ignore */
        }
        // Do not wait for the close handshake of a dead connection.
        this.afterClose(gen, { code: CLIENT_RECONNECT, reason });
    }
    afterClose(gen, ev) {
        if (gen !== this.generation)
            return;
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
    async onUnauthorized(base) {
        const rejected = this.token;
        if (this.opts.getToken) {
            const gen = this.generation;
            let fresh;
            try {
                fresh = await this.opts.getToken("expired");
            }
            catch (e) {
                this.emit("error", new ShardchatError("unauthorized", `getToken failed: ${String(e?.message ?? e)}`));
            }
            if (gen !== this.generation || this._state === "idle")
                return;
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
    stop(err, ev) {
        this.clearTimers();
        this.failPending(err, true);
        this.failWaiters(err);
        this.setState("stopped");
        this.emit("disconnect", ev);
        this.emit("error", err);
    }
    minDelay() {
        const r = this.opts.reconnect;
        return (r && r.minDelayMs) || 500;
    }
    jitter(ms) {
        const r = this.opts.reconnect;
        const j = r && r.jitter !== undefined ? Math.min(Math.max(r.jitter, 0), 1) : 0.5;
        return Math.round(ms * (1 - j / 2 + Math.random() * j));
    }
    /** Jittered exponential backoff for the current attempt. */
    backoff() {
        const r = this.opts.reconnect || {};
        const max = r.maxDelayMs ?? 15000;
        const factor = r.factor ?? 2;
        const raw = Math.min(max, this.minDelay() * Math.pow(factor, Math.min(this.attempt, 30)));
        return Math.min(max, this.jitter(raw));
    }
    scheduleReconnect(delay) {
        if (this.reconnectTimer)
            clearTimeout(this.reconnectTimer);
        this.reconnectTimer = setTimeout(() => {
            this.reconnectTimer = null;
            if (this._state === "reconnecting" || this._state === "connecting")
                void this.open();
        }, delay);
    }
    armHeartbeat(gen) {
        const every = this.opts.heartbeatMs ?? 25000;
        if (this.heartbeatTimer)
            clearTimeout(this.heartbeatTimer);
        this.heartbeatTimer = null;
        if (!(every > 0))
            return;
        this.heartbeatTimer = setTimeout(() => {
            if (gen !== this.generation || !this.isOpen())
                return;
            this.direct("ping", {}).catch((e) => {
                if (gen !== this.generation)
                    return;
                if (e instanceof ShardchatError && e.code === "request_timeout")
                    this.dropConnection("heartbeat timed out");
            });
        }, every);
    }
    clearTimers() {
        if (this.reconnectTimer)
            clearTimeout(this.reconnectTimer);
        if (this.heartbeatTimer)
            clearTimeout(this.heartbeatTimer);
        this.reconnectTimer = null;
        this.heartbeatTimer = null;
    }
    // ------------------------------------------------------------ frames
    onFrame(text) {
        let f;
        try {
            f = JSON.parse(text);
        }
        catch {
            this.emit("error", new ShardchatError("bad_frame", "the server sent a frame that is not JSON"));
            return;
        }
        if (!isObject(f))
            return;
        switch (f.op) {
            case "reply": {
                const id = f.id;
                const p = this.pending.get(id);
                if (!p)
                    return; // timed out already
                this.pending.delete(id);
                if (p.timer)
                    clearTimeout(p.timer);
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
                const m = f;
                if (typeof m.channel !== "string" || typeof m.id !== "string")
                    return;
                const st = this.channelStates.get(m.channel);
                if (st) {
                    if (compareIds(m.id, st.lastId) <= 0) {
                        this._duplicatesDropped++;
                        return;
                    }
                    st.lastId = m.id;
                }
                this.emit("message", stripOp(f));
                return;
            }
            case "presence":
                this.emit("presence", stripOp(f));
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
                this.emit("dm", stripOp(f));
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
    emit(event, payload) {
        const set = this.handlers.get(event);
        if (!set)
            return;
        for (const h of [...set]) {
            try {
                h(payload);
            }
            catch (e) {
                // A throwing handler must not break the client; report it asynchronously.
                setTimeout(() => {
                    throw e;
                }, 0);
            }
        }
    }
}
// ---------------------------------------------------------------- helpers
function sleep(ms) {
    return new Promise((r) => setTimeout(r, ms));
}
function stripOp(f) {
    const { op: _op, ...rest } = f;
    return rest;
}
function numberOr(v) {
    return typeof v === "number" ? v : undefined;
}
function boolOr(v) {
    return typeof v === "boolean" ? v : undefined;
}
function strOr(v) {
    return typeof v === "string" ? v : undefined;
}
function arrayOr(v) {
    return Array.isArray(v) ? v : [];
}
function publishResult(reply, nonce) {
    const id = reply.message_id;
    if (typeof id !== "string")
        throw new ShardchatError("bad_frame", "reply without message_id", { nonce });
    return { messageId: id, duplicate: reply.duplicate === true, nonce };
}
