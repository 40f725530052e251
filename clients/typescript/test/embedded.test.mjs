// The SDK against one real chat-node in embedded mode (no Redis).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { ShardchatClient, ShardchatError, compareIds } from "../dist/node.js";
import { ChatNode, FAST_RECONNECT, TcpProxy, jwt, publishSurely, record, sleep, waitFor } from "./helpers.mjs";

const FAST = ["--publish-rate", "1000", "--publish-burst", "1000", "--frame-rate", "10000"];

function client(url, user, extra = {}) {
  return new ShardchatClient({ url, user, reconnect: FAST_RECONNECT, requestTimeoutMs: 5000, ...extra });
}

describe("embedded node", { timeout: 180_000 }, () => {
  let node;
  const clients = [];
  const track = (c) => (clients.push(c), c);

  before(async () => {
    node = await ChatNode.start(FAST);
  });
  after(() => {
    for (const c of clients) c.close();
    node?.kill();
  });

  it("compares message ids numerically", () => {
    assert.ok(compareIds("999-0", "1000-0") < 0);
    assert.ok(compareIds("1000-2", "1000-10") < 0);
    assert.equal(compareIds("0012-1", "12-1"), 0);
    assert.ok(compareIds("5-0", "4-9") > 0);
  });

  it("two clients exchange messages, presence, history and ping", async () => {
    const alice = track(client(node.httpUrl, "alice"));
    const bob = track(client(node.wsUrl, "bob"));
    const ra = record(alice);
    const rb = record(bob);
    await alice.connect({ timeoutMs: 10_000 });
    await bob.connect({ timeoutMs: 10_000 });
    assert.equal(alice.state, "connected");

    const ch = "town-exchange";
    await alice.join(ch);
    const joined = await bob.join(ch);
    assert.equal(joined.members, 2);
    assert.equal(joined.recovered, true);
    await waitFor("alice seeing bob join", () => ra.presence.some((p) => p.user === "bob" && p.event === "join"));

    const sent = [];
    for (let i = 0; i < 5; i++) {
      sent.push((await alice.publish(ch, `a${i}`, { meta: { i } })).messageId);
      sent.push((await bob.publish(ch, `b${i}`)).messageId);
    }
    for (const r of [ra, rb]) {
      await waitFor("all ten messages", () => r.ids(ch).length >= 10);
      assert.deepEqual(r.ids(ch), sent, "every message once, in id order");
    }
    assert.deepEqual(ra.messages[0].meta, { i: 0 });
    assert.equal(ra.messages[1].from, "bob");
    assert.equal(alice.lastId(ch), sent[sent.length - 1]);

    const h = await bob.history(ch, { limit: 4 });
    assert.deepEqual(h.messages.map((m) => m.text), ["a3", "b3", "a4", "b4"]);
    const older = await bob.history(ch, { limit: 50, before: h.messages[0].id });
    assert.equal(older.messages.length, 6);

    const p = await alice.ping();
    assert.ok(Math.abs(p.ts - Date.now()) < 60_000 && p.rttMs >= 0);

    await bob.leave(ch);
    await waitFor("alice seeing bob leave", () => ra.presence.some((p) => p.user === "bob" && p.event === "leave"));
    assert.deepEqual(bob.channels, []);
    assert.equal(alice.stats.duplicatesDropped + bob.stats.duplicatesDropped, 0);
  });

  it("turns error replies into ShardchatErrors with stable codes", async () => {
    const c = track(client(node.wsUrl, "erin"));
    await c.connect();
    await assert.rejects(c.publish("never-joined", "x"), (e) => e instanceof ShardchatError && e.code === "not_joined" && !e.retryable);
    await assert.rejects(c.join("no spaces"), (e) => e.code === "bad_request");
    await assert.rejects(c.request("no_such_op"), (e) => e.code === "bad_request");
    await c.join("town-errors");
    await assert.rejects(c.publish("town-errors", "x".repeat(2001)), (e) => e.code === "too_large");
    await assert.rejects(c.publish("town-errors", "x", { nonce: "has spaces" }), (e) => e.code === "bad_request");
    // A nonce repeated: stored once, the second answer says duplicate.
    const first = await c.publish("town-errors", "once", { nonce: "n-1" });
    const again = await c.publish("town-errors", "once", { nonce: "n-1" });
    assert.equal(first.duplicate, false);
    assert.equal(again.duplicate, true);
    assert.equal(again.messageId, first.messageId);
  });

  it("times out a request that gets no reply", async () => {
    const proxy = await TcpProxy.start(node.port);
    try {
      const c = track(client(proxy.wsUrl, "tim", { heartbeatMs: 0 }));
      await c.connect();
      // Freeze the proxy's forwarding: the request leaves, no reply comes back.
      for (const s of proxy.sockets) s.pause();
      await assert.rejects(c.ping({ timeoutMs: 300 }), (e) => e.code === "request_timeout" && e.retryable);
      c.close();
    } finally {
      proxy.close();
    }
  });

  it("survives a forced disconnect with exact recovery (no gap, no duplicate)", async () => {
    const proxy = await TcpProxy.start(node.port);
    try {
      const ch = "town-drop";
      const alice = track(client(proxy.wsUrl, "alice2"));
      const queued = track(client(proxy.wsUrl, "quinn", { offlineQueue: true }));
      const bob = track(client(node.wsUrl, "bob2"));
      const ra = record(alice);
      const rb = record(bob);
      for (const c of [alice, queued, bob]) {
        await c.connect();
        await c.join(ch);
      }
      const expected = [];
      for (let i = 0; i < 3; i++) expected.push(await publishSurely(bob, ch, `before ${i}`));
      await waitFor("alice has the first three", () => ra.ids(ch).length === 3);

      // The network drops and stays down while bob keeps talking.
      proxy.blocked = true;
      proxy.cut();
      await waitFor("alice and quinn noticing", () => alice.state === "reconnecting" && queued.state === "reconnecting");
      await assert.rejects(alice.publish(ch, "while offline"), (e) => e.code === "not_connected" && !!e.nonce);
      const late = queued.publish(ch, "queued while offline");
      assert.equal(queued.stats.queued, 1);
      for (let i = 0; i < 5; i++) expected.push(await publishSurely(bob, ch, `during ${i}`));
      await sleep(1000);
      proxy.blocked = false;
      // Every refused attempt waited longer, up to the maximum (jittered).
      const delays = ra.disconnects.map((d) => d.delayMs);
      assert.ok(delays.length >= 3, `attempts while blocked: ${delays}`);
      assert.ok(delays.every((d) => d > 0 && d <= FAST_RECONNECT.maxDelayMs), `${delays}`);
      assert.ok(Math.max(...delays) >= 4 * FAST_RECONNECT.minDelayMs * 0.75, `backoff does not grow: ${delays}`);

      await waitFor("alice reconnected", () => alice.state === "connected");
      const lateId = (await late).messageId;
      expected.push(lateId);
      for (let i = 0; i < 3; i++) expected.push(await publishSurely(bob, ch, `after ${i}`));
      await waitFor("alice has everything", () => ra.ids(ch).length >= expected.length);
      await waitFor("bob has everything", () => rb.ids(ch).length >= expected.length);
      // bob's own view is the truth (he never disconnected).
      assert.deepEqual(rb.ids(ch), expected);
      assert.deepEqual(ra.ids(ch), expected, "alice: no gap, no duplicate, in order");
      assert.ok(ra.rejoins.length >= 1 && ra.rejoins.every((r) => r.channel === ch && r.recovered === true), JSON.stringify(ra.rejoins));
      assert.ok(ra.disconnects.length >= 1 && ra.disconnects.every((d) => d.willReconnect));
      assert.equal(alice.stats.duplicatesDropped, 0);
      assert.ok(alice.stats.reconnects >= 1);
      assert.ok(ra.states.includes("reconnecting"));
    } finally {
      proxy.close();
    }
  });

  it("does not reconnect after a policy close (1008 flooding)", async () => {
    const strict = await ChatNode.start(["--publish-rate", "1", "--publish-burst", "1", "--flood-close-after", "5"]);
    try {
      const c = client(strict.wsUrl, "flooder");
      const r = record(c);
      await c.connect();
      await c.join("town-flood");
      // The server may close before it has sent every rate_limited reply.
      await Promise.allSettled(Array.from({ length: 20 }, (_, i) => c.publish("town-flood", `spam ${i}`)));
      await waitFor("the client to stop", () => c.state === "stopped");
      const last = r.disconnects.at(-1);
      assert.equal(last.code, 1008);
      assert.equal(last.willReconnect, false);
      await sleep(800);
      assert.equal(c.state, "stopped", "no reconnect after 1008");
      assert.equal(c.stats.reconnects, 0);
      c.close();
    } finally {
      strict.kill();
    }
  });

  it("after a node restart it reconnects and reports recovered:false (memory was lost)", async () => {
    const restartable = await ChatNode.start(FAST);
    try {
      const ch = "town-restart";
      const alice = track(client(restartable.wsUrl, "alice3"));
      const ra = record(alice);
      await alice.connect();
      await alice.join(ch);
      const first = (await alice.publish(ch, "before")).messageId;
      await restartable.stop();
      await waitFor("alice noticing the restart", () => ra.disconnects.some((d) => d.code === 1012 && d.willReconnect));
      await restartable.spawn();
      await waitFor("alice back", () => alice.state === "connected", 30_000);
      const rejoin = ra.rejoins.find((r) => r.channel === ch);
      assert.ok(rejoin, "re-joined the channel");
      assert.equal(rejoin.since, first);
      assert.equal(rejoin.recovered, false, "an embedded node keeps history in memory only");
      const second = (await alice.publish(ch, "after")).messageId;
      await waitFor("the new message", () => ra.ids(ch).includes(second));
      assert.deepEqual(ra.ids(ch), [first, second]);
    } finally {
      restartable.kill();
    }
  });
});

describe("tokens", { timeout: 120_000 }, () => {
  const secret = "sdk-test-secret-of-at-least-32-bytes!";
  let node;
  before(async () => {
    node = await ChatNode.start(["--jwt-secret", secret, "--jwt-leeway", "0s", ...FAST]);
  });
  after(() => node?.kill());

  it("refreshes an expired token (4001) and resumes exactly; a static token stops until setToken", async () => {
    const ch = "town-tokens";
    const asked = [];
    const refreshing = new ShardchatClient({
      url: node.wsUrl,
      reconnect: FAST_RECONNECT,
      getToken: (reason) => {
        asked.push(reason);
        // The first token runs out in 2 s; later ones last.
        return jwt(secret, "rita", asked.length === 1 ? 2 : 600);
      },
    });
    const fixed = new ShardchatClient({ url: node.wsUrl, reconnect: FAST_RECONNECT, token: jwt(secret, "sam", 2) });
    const speaker = new ShardchatClient({ url: node.wsUrl, token: jwt(secret, "sol", 600) });
    const rr = record(refreshing);
    const rf = record(fixed);
    try {
      for (const c of [refreshing, fixed, speaker]) {
        await c.connect();
        await c.join(ch);
      }
      const expected = [await publishSurely(speaker, ch, "one")];
      await waitFor("the 4001", () => rr.disconnects.some((d) => d.code === 4001) && rf.disconnects.some((d) => d.code === 4001), 15_000);
      expected.push(await publishSurely(speaker, ch, "two"));
      await waitFor("rita back", () => refreshing.state === "connected");
      expected.push(await publishSurely(speaker, ch, "three"));
      await waitFor("rita has all", () => rr.ids(ch).length >= 3);
      assert.deepEqual(rr.ids(ch), expected);
      assert.deepEqual(asked, ["connect", "expired"]);
      assert.ok(rr.rejoins.some((r) => r.recovered === true));

      assert.equal(fixed.state, "stopped", "no reconnect on 4001 without a new token");
      assert.equal(rf.disconnects.at(-1).willReconnect, false);
      assert.ok(rf.errors.some((e) => e.code === "unauthorized"));
      fixed.setToken(jwt(secret, "sam", 600));
      await waitFor("sam back after setToken", () => fixed.state === "connected");
      await waitFor("sam recovers", () => rf.ids(ch).length >= 3);
      assert.deepEqual(rf.ids(ch), expected);
    } finally {
      for (const c of [refreshing, fixed, speaker]) c.close();
    }
  });

  it("stops on a refused upgrade (HTTP 401) without a token callback", async () => {
    const c = new ShardchatClient({ url: node.wsUrl, reconnect: FAST_RECONNECT, token: "not.a.jwt" });
    const r = record(c);
    await assert.rejects(c.connect({ timeoutMs: 10_000 }), (e) => e.code === "unauthorized");
    assert.equal(c.state, "stopped");
    assert.equal(r.disconnects.at(-1).httpStatus, 401);
    c.close();
  });
});
