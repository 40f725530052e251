// The SDK against two chat-nodes sharding over a real redis-server.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { ShardchatClient } from "../dist/node.js";
import { ChatNode, FAST_RECONNECT, RedisServer, TcpProxy, publishSurely, record, sleep, waitFor } from "./helpers.mjs";

const FAST = ["--publish-rate", "1000", "--publish-burst", "1000", "--frame-rate", "10000"];
const PEERS = "chat-node-0,chat-node-1";

function client(url, user, extra = {}) {
  return new ShardchatClient({ url, user, reconnect: FAST_RECONNECT, requestTimeoutMs: 5000, ...extra });
}

describe("cluster: two nodes over Redis", { timeout: 240_000 }, () => {
  let redis;
  const nodes = [];
  const clients = [];
  const track = (c) => (clients.push(c), c);

  before(async () => {
    redis = await RedisServer.start();
    for (let i = 0; i < 2; i++) {
      nodes.push(
        await ChatNode.start([
          "--redis-url", redis.url,
          "--node-id", `chat-node-${i}`,
          "--peers", PEERS,
          "--node-ttl", "2s",
          "--request-timeout", "1s",
          ...FAST,
        ]),
      );
    }
  });
  after(() => {
    for (const c of clients) c.close();
    for (const n of nodes) n.kill();
    redis?.kill();
  });

  it("clients on different nodes exchange messages", async () => {
    const ch = "town-cluster";
    const alice = track(client(nodes[0].wsUrl, "alice"));
    const bob = track(client(nodes[1].wsUrl, "bob"));
    const ra = record(alice);
    const rb = record(bob);
    await alice.connect();
    await bob.connect();
    await alice.join(ch);
    await bob.join(ch);
    await waitFor("alice seeing bob", () => ra.presence.some((p) => p.user === "bob" && p.event === "join"));
    const sent = [];
    for (let i = 0; i < 4; i++) {
      sent.push(await publishSurely(alice, ch, `a${i}`));
      sent.push(await publishSurely(bob, ch, `b${i}`));
    }
    await waitFor("both have all", () => ra.ids(ch).length >= 8 && rb.ids(ch).length >= 8);
    assert.deepEqual(ra.ids(ch), sent);
    assert.deepEqual(rb.ids(ch), sent);
  });

  it("survives a forced disconnect and a node restart with exact recovery", async () => {
    const ch = "town-cluster-recovery";
    const proxy = await TcpProxy.start(nodes[0].port);
    try {
      // alice reaches node 0 through the proxy (first) or node 1 directly.
      const alice = track(client([proxy.wsUrl, nodes[1].wsUrl], "alice2"));
      const bob = track(client(nodes[1].wsUrl, "bob2"));
      const carol = track(client(nodes[0].wsUrl, "carol2", { offlineQueue: true }));
      const ra = record(alice);
      const rb = record(bob);
      const rc = record(carol);
      for (const c of [alice, bob, carol]) {
        await c.connect();
        await c.join(ch);
      }
      const expected = [];
      for (let i = 0; i < 3; i++) expected.push(await publishSurely(bob, ch, `start ${i}`));

      // 1. The network between alice and node 0 drops.
      proxy.blocked = true;
      proxy.cut();
      for (let i = 0; i < 3; i++) expected.push(await publishSurely(bob, ch, `cut ${i}`));
      await waitFor("alice reconnected (to node 1)", () => alice.stats.reconnects >= 1 && alice.state === "connected");
      proxy.blocked = false;
      for (let i = 0; i < 3; i++) expected.push(await publishSurely(bob, ch, `after cut ${i}`));

      // 2. Node 0 restarts while bob keeps publishing (retrying with the
      //    same nonce while node 0, maybe the channel's owner, is away).
      let talking = true;
      const talker = (async () => {
        for (let i = 0; talking || i < 5; i++) {
          expected.push(await publishSurely(bob, ch, `restart ${i}`, 60_000));
          await sleep(50);
        }
      })();
      // carol's publish goes into the offline queue when node 0 is gone.
      await nodes[0].stop();
      await waitFor("carol noticing", () => carol.state !== "connected");
      const queued = carol.publish(ch, "carol, queued across the restart", { timeoutMs: 60_000 });
      await sleep(500);
      await nodes[0].spawn();
      await waitFor("carol back on node 0", () => carol.state === "connected", 30_000);
      talking = false;
      await talker;
      const queuedId = (await queued).messageId;

      const all = new Set([...expected, queuedId]);
      assert.equal(all.size, expected.length + 1, "every publish stored once");
      for (const [name, r] of [["alice", ra], ["bob", rb], ["carol", rc]]) {
        await waitFor(`${name} has every message`, () => r.ids(ch).length >= all.size, 30_000);
      }
      // bob never disconnected: his stream is the channel's order.
      const truth = rb.ids(ch);
      assert.equal(truth.length, all.size);
      assert.deepEqual(new Set(truth), all);
      assert.deepEqual(ra.ids(ch), truth, "alice: no gap, no duplicate, same order");
      assert.deepEqual(rc.ids(ch), truth, "carol: no gap, no duplicate, same order");
      for (const [name, r] of [["alice", ra], ["carol", rc]]) {
        assert.ok(r.rejoins.length >= 1, `${name} re-joined`);
        assert.ok(r.rejoins.every((j) => j.recovered === true), `${name}: ${JSON.stringify(r.rejoins)}`);
      }
      assert.ok(rc.disconnects.some((d) => d.code === 1012), "carol got 1012 from the draining node");
      assert.equal(alice.stats.duplicatesDropped + bob.stats.duplicatesDropped + carol.stats.duplicatesDropped, 0);
      assert.equal(rb.gaps.length + ra.gaps.length + rc.gaps.length, 0);
    } finally {
      proxy.close();
    }
  });
});
