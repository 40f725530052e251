// The protocol conformance vectors (docs/protocol/conformance/) against real
// chat-node processes: every vector over raw WebSockets, then the vectors
// that only make requests once more through the SDK, which must hand back the
// same replies and reject with the same error codes.
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";

import { ShardchatClient, ShardchatError } from "../dist/node.js";
import { actionOf, loadVectors, match, runVector, substitute } from "./conformance.mjs";
import { ChatNode } from "./helpers.mjs";

const vectors = loadVectors();

/**
 * Nodes shared by vectors with the same flags (vectors use channels and users
 * of their own, so they do not see each other), separately for each pass
 * (the SDK pass replays vectors the raw pass played already); a vector that
 * shuts its node down gets one of its own.
 */
const shared = new Map();
const started = [];
async function nodeFor(vector, pass) {
  const own = vector.steps.some((s) => "shutdown_node" in s);
  const key = `${pass} ${JSON.stringify(vector.node_flags)}`;
  if (!own && shared.has(key)) return shared.get(key);
  const node = await ChatNode.start(vector.node_flags);
  started.push(node);
  if (!own) shared.set(key, node);
  return node;
}

after(() => {
  for (const n of started) n.kill();
});

describe("conformance vectors over raw WebSockets", { timeout: 300_000 }, () => {
  it("finds the vector files", () => {
    assert.ok(vectors.length >= 30, `only ${vectors.length} vectors`);
    const names = new Set();
    for (const v of vectors) {
      assert.ok(!names.has(v.name), `vector name ${v.name} is used twice`);
      names.add(v.name);
    }
  });

  for (const vector of vectors) {
    it(vector.name, async () => {
      const node = await nodeFor(vector, "raw");
      await runVector(vector, node.wsUrl, () => node.stop());
    });
  }
});

// ------------------------------------------------------------ through the SDK

const isReplyShape = (s) => typeof s === "object" && s !== null && s.op === "reply";

/**
 * Whether the SDK can play the vector: clients connect with a plain dev-mode
 * user and only send requests with an `op` and an `id` (which the SDK
 * replaces by its own); pushes are not checked here.
 */
function sdkPlayable(vector) {
  return vector.steps.every((step) => {
    const action = actionOf(step);
    if (action === "connect") return Object.keys(step.connect).every((k) => k === "user");
    if (action === "send") {
      const f = step.send;
      return typeof f === "object" && f !== null && !Array.isArray(f) && typeof f.op === "string" &&
        (typeof f.id === "number" || typeof f.id === "string");
    }
    return action === "expect" || action === "expect_unordered";
  });
}

const withoutId = ({ id: _id, ...rest }) => rest;

/** The reply the SDK resolved with, as a wire reply (id left out). */
async function sdkRequest(client, frame) {
  const { op, id: _id, ...fields } = frame;
  const typedPublish = op === "publish" && Object.keys(fields).every((k) => ["channel", "text", "meta", "nonce"].includes(k)) &&
    typeof fields.channel === "string" && typeof fields.text === "string";
  if (typedPublish) {
    const r = await client.publish(fields.channel, fields.text, {
      ...(fields.meta !== undefined ? { meta: fields.meta } : {}),
      ...(fields.nonce !== undefined ? { nonce: fields.nonce } : {}),
    });
    return { op: "reply", ok: true, message_id: r.messageId, ...(r.duplicate ? { duplicate: true } : {}) };
  }
  return withoutId(await client.request(op, fields));
}

async function runThroughSdk(vector, node) {
  const clients = new Map();
  const vars = new Map();
  const pending = new Map(); // "client/id" -> settled result
  const checkReply = async (name, shape) => {
    const key = `${name}/${JSON.stringify(shape.id)}`;
    const result = pending.get(key);
    if (!result) throw new Error(`no request with id ${JSON.stringify(shape.id)} was sent`);
    pending.delete(key);
    const r = await result;
    if (shape.ok === true) {
      if (!r.ok) throw new Error(`the SDK rejected it: ${r.error.code}: ${r.error.message}`);
      match(withoutId(shape), r.value, vars);
    } else {
      if (r.ok) throw new Error(`the SDK resolved it (${JSON.stringify(r.value)}), expected ${shape.error.code}`);
      assert.ok(r.error instanceof ShardchatError, `not a ShardchatError: ${r.error}`);
      assert.equal(r.error.code, shape.error.code, `the SDK's error code`);
    }
  };
  try {
    for (const [i, step] of vector.steps.entries()) {
      try {
        const action = actionOf(step);
        const name = step.client;
        if (action === "connect") {
          const c = new ShardchatClient({ url: node.wsUrl, user: step.connect.user, reconnect: false, heartbeatMs: 0, requestTimeoutMs: 5000 });
          clients.set(name, c);
          await c.connect({ timeoutMs: 5000 });
        } else if (action === "send") {
          const frame = substitute(step.send, vars);
          pending.set(
            `${name}/${JSON.stringify(frame.id)}`,
            sdkRequest(clients.get(name), frame).then((value) => ({ ok: true, value }), (error) => ({ ok: false, error })),
          );
        } else {
          const shapes = action === "expect" ? [step.expect] : step.expect_unordered;
          for (const s of shapes.filter(isReplyShape)) await checkReply(name, s);
        }
      } catch (e) {
        throw new Error(`${vector.name} (${vector.file}) through the SDK: step ${i + 1} ${JSON.stringify(step).slice(0, 300)}: ${e.message}`);
      }
    }
  } finally {
    for (const c of clients.values()) c.close();
  }
}

describe("conformance vectors through the SDK", { timeout: 300_000 }, () => {
  const playable = vectors.filter(sdkPlayable);
  it("has vectors the SDK can play, with error replies among them", () => {
    assert.ok(playable.length >= 15, `only ${playable.length} vectors`);
    const errors = playable.flatMap((v) => v.steps.flatMap((s) => [s.expect, ...(s.expect_unordered ?? [])]))
      .filter((s) => isReplyShape(s) && s.ok === false).map((s) => s.error.code);
    for (const code of ["bad_request", "not_joined", "too_large", "rate_limited", "not_found", "filtered"]) {
      assert.ok(errors.includes(code), `no SDK-playable vector expects ${code}`);
    }
  });
  for (const vector of playable) {
    it(vector.name, async () => {
      await runThroughSdk(vector, await nodeFor(vector, "sdk"));
    });
  }
});
