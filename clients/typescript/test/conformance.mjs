// A runner for the protocol conformance vectors (docs/protocol/conformance/,
// format in its README.md): plays each vector's steps over raw WebSockets
// (the `ws` package) against a chat-node. The same shape matcher also checks
// replies the SDK hands back (see conformance.test.mjs).
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import WebSocket from "ws";

const here = dirname(fileURLToPath(import.meta.url));
export const vectorsDir = join(here, "..", "..", "..", "docs", "protocol", "conformance");

/** How long one expectation waits for its frame or close. */
export const WAIT_MS = 5000;

const ACTIONS = ["connect", "send", "send_text", "send_raw", "expect", "expect_unordered", "expect_close", "close", "shutdown_node"];

/** Every vector of every file, with the file it came from. */
export function loadVectors() {
  const files = readdirSync(vectorsDir)
    .filter((f) => f.endsWith(".json") && !f.endsWith(".schema.json"))
    .sort();
  const out = [];
  for (const file of files) {
    const doc = JSON.parse(readFileSync(join(vectorsDir, file), "utf8"));
    for (const v of doc.vectors) out.push({ ...v, file });
  }
  return out;
}

/** The action key of a step (exactly one is allowed). */
export function actionOf(step) {
  const actions = Object.keys(step).filter((k) => ACTIONS.includes(k));
  for (const k of Object.keys(step)) {
    if (!ACTIONS.includes(k) && k !== "client" && k !== "comment") throw new Error(`bad vector: unknown step key ${k}`);
  }
  if (actions.length !== 1) throw new Error("bad vector: a step needs exactly one action");
  return actions[0];
}

const isObject = (v) => typeof v === "object" && v !== null && !Array.isArray(v);
const isOperator = (v) => isObject(v) && Object.keys(v).some((k) => k.startsWith("$"));
const show = (v, max = 300) => {
  const s = JSON.stringify(v);
  return s.length > max ? `${s.slice(0, max)}…` : s;
};

/** A frame to send with `$var` and `$repeat` replaced. */
export function substitute(v, vars) {
  if (isOperator(v)) {
    if (typeof v.$var === "string") {
      if (!vars.has(v.$var)) throw new Error(`bad vector: $${v.$var} is not captured`);
      return vars.get(v.$var);
    }
    if (typeof v.$repeat === "string" && Number.isInteger(v.times)) return v.$repeat.repeat(v.times);
    throw new Error(`bad vector: unknown substitution ${show(v)}`);
  }
  if (Array.isArray(v)) return v.map((x) => substitute(x, vars));
  if (isObject(v)) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, substitute(x, vars)]));
  return v;
}

function typeName(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  if (typeof v === "number") return Number.isInteger(v) ? "integer" : "number";
  return typeof v;
}

/** JSON equality (numbers by value). */
export function same(a, b) {
  if (Array.isArray(a) || Array.isArray(b)) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((x, i) => same(x, b[i]));
  }
  if (isObject(a) || isObject(b)) {
    if (!isObject(a) || !isObject(b)) return false;
    const ka = Object.keys(a);
    return ka.length === Object.keys(b).length && ka.every((k) => k in b && same(a[k], b[k]));
  }
  return a === b;
}

/** Throws unless `actual` has the shape `shape`; may bind `$capture`s in `vars`. */
export function match(shape, actual, vars, path = "$") {
  if (isOperator(shape)) {
    for (const k of Object.keys(shape)) {
      if (!["$type", "$pattern", "$capture", "$var"].includes(k)) throw new Error(`bad vector: unknown operator ${k} at ${path}`);
    }
    if (shape.$type !== undefined) {
      const got = typeName(actual);
      if (!(got === shape.$type || (shape.$type === "number" && got === "integer"))) {
        throw new Error(`${path}: expected a ${shape.$type}, got ${show(actual, 100)}`);
      }
    }
    if (shape.$pattern !== undefined) {
      if (typeof actual !== "string" || !new RegExp(shape.$pattern, "u").test(actual)) {
        throw new Error(`${path}: ${show(actual, 100)} does not match /${shape.$pattern}/`);
      }
    }
    if (shape.$var !== undefined) {
      if (!vars.has(shape.$var)) throw new Error(`bad vector: $${shape.$var} is not captured`);
      if (!same(vars.get(shape.$var), actual)) {
        throw new Error(`${path}: expected $${shape.$var} = ${show(vars.get(shape.$var))}, got ${show(actual, 100)}`);
      }
    }
    if (shape.$capture !== undefined) {
      if (vars.has(shape.$capture)) {
        if (!same(vars.get(shape.$capture), actual)) {
          throw new Error(`${path}: expected $${shape.$capture} = ${show(vars.get(shape.$capture))}, got ${show(actual, 100)}`);
        }
      } else {
        vars.set(shape.$capture, actual);
      }
    }
    return;
  }
  if (Array.isArray(shape)) {
    if (!Array.isArray(actual)) throw new Error(`${path}: expected an array, got ${show(actual, 100)}`);
    if (actual.length !== shape.length) throw new Error(`${path}: expected ${shape.length} items, got ${actual.length}`);
    shape.forEach((s, i) => match(s, actual[i], vars, `${path}[${i}]`));
    return;
  }
  if (isObject(shape)) {
    if (!isObject(actual)) throw new Error(`${path}: expected an object, got ${show(actual, 100)}`);
    for (const k of Object.keys(actual)) if (!(k in shape)) throw new Error(`${path}: unexpected key ${JSON.stringify(k)}`);
    for (const [k, s] of Object.entries(shape)) {
      const optional = isObject(s) && "$optional" in s;
      if (!(k in actual)) {
        if (optional) continue;
        throw new Error(`${path}: missing key ${JSON.stringify(k)}`);
      }
      match(optional ? s.$optional : s, actual[k], vars, `${path}.${k}`);
    }
    return;
  }
  if (!same(shape, actual)) throw new Error(`${path}: expected ${show(shape)}, got ${show(actual, 100)}`);
}

/** Variables after assigning `frames` (arrival order) to distinct matching `shapes`, or null. */
export function assign(shapes, frames, vars) {
  const used = shapes.map(() => false);
  const go = (i, vs) => {
    if (i === frames.length) return vs;
    for (let s = 0; s < shapes.length; s++) {
      if (used[s]) continue;
      const attempt = new Map(vs);
      try {
        match(shapes[s], frames[i], attempt);
      } catch {
        continue;
      }
      used[s] = true;
      const done = go(i + 1, attempt);
      if (done) return done;
      used[s] = false;
    }
    return null;
  };
  return go(0, vars);
}

/** One raw connection: frames and the close, in arrival order. */
class Conn {
  constructor(ws) {
    this.ws = ws;
    this.events = [];
    this.waiter = null;
    ws.on("message", (data, isBinary) => this.push({ kind: "frame", data, isBinary }));
    ws.on("close", (code) => this.push({ kind: "close", code }));
    ws.on("error", () => {});
  }

  push(e) {
    this.events.push(e);
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w();
    }
  }

  async next(deadline) {
    while (this.events.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0) return null;
      await new Promise((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    const e = this.events[0];
    if (e.kind !== "close") this.events.shift();
    return e;
  }

  /** The next data frame as JSON. */
  async frame() {
    const e = await this.next(Date.now() + WAIT_MS);
    if (!e) throw new Error(`no frame within ${WAIT_MS} ms`);
    if (e.kind === "close") throw new Error(`the server closed the connection (${e.code})`);
    if (e.isBinary) throw new Error("unexpected binary frame");
    const text = e.data.toString("utf8");
    try {
      return JSON.parse(text);
    } catch (err) {
      throw new Error(`not JSON (${err.message}): ${text}`);
    }
  }

  /** Skips data frames until the close; its code (1006: no close frame). */
  async closeCode() {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const e = await this.next(deadline);
      if (!e) throw new Error(`no close within ${WAIT_MS} ms`);
      if (e.kind === "close") return e.code;
    }
  }
}

function connectUrl(base, spec) {
  const query = [];
  if (spec.user !== undefined) query.push(`user=${spec.user}`);
  if (spec.roles !== undefined) query.push(`roles=${spec.roles}`);
  if (spec.query !== undefined) query.push(spec.query);
  return query.length ? `${base}?${query.join("&")}` : base;
}

/**
 * Opens a connection as a `connect` step says. Resolves with the Conn, or
 * null when the upgrade was refused as `expect_refused` asked.
 */
async function connect(wsUrl, spec, vars) {
  for (const k of Object.keys(spec)) {
    if (!["user", "roles", "query", "headers", "protocols", "expect_refused", "expect_protocol"].includes(k)) {
      throw new Error(`bad vector: unknown connect key ${k}`);
    }
  }
  const url = connectUrl(wsUrl, spec);
  const ws = new WebSocket(url, spec.protocols ?? [], { headers: spec.headers ?? {} });
  const outcome = await new Promise((resolve) => {
    const t = setTimeout(() => resolve({ error: new Error("connecting timed out") }), WAIT_MS);
    const done = (v) => {
      clearTimeout(t);
      resolve(v);
    };
    ws.once("open", () => done({ open: true }));
    ws.once("unexpected-response", (_req, res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (body += d));
      res.on("end", () => done({ status: res.statusCode, body }));
      res.on("error", (e) => done({ error: e }));
    });
    ws.once("error", (e) => done({ error: e }));
  });
  if (outcome.error) throw new Error(`connecting failed: ${outcome.error.message}`);
  if (outcome.open) {
    if (spec.expect_refused) {
      ws.terminate();
      throw new Error("the upgrade succeeded, expected a refusal");
    }
    if (spec.expect_protocol !== undefined) {
      const got = ws.protocol === "" ? null : ws.protocol;
      match(spec.expect_protocol, got, vars, "protocol");
    }
    return new Conn(ws);
  }
  ws.terminate();
  if (!spec.expect_refused) throw new Error(`the upgrade was refused with HTTP ${outcome.status}: ${outcome.body}`);
  if (outcome.status !== spec.expect_refused.status) {
    throw new Error(`refused with HTTP ${outcome.status}, expected ${spec.expect_refused.status}`);
  }
  if (spec.expect_refused.body !== undefined) {
    let body;
    try {
      body = JSON.parse(outcome.body);
    } catch {
      throw new Error(`refusal body is not JSON: ${outcome.body}`);
    }
    try {
      match(spec.expect_refused.body, body, vars, "body");
    } catch (e) {
      throw new Error(`refusal body ${show(body)}: ${e.message}`);
    }
  }
  return null;
}

/**
 * Plays `vector` against the node at `wsUrl`; `shutdownNode` is called for a
 * `shutdown_node` step. Throws an Error naming the failed step.
 */
export async function runVector(vector, wsUrl, shutdownNode) {
  const clients = new Map();
  const vars = new Map();
  try {
    for (const [i, step] of vector.steps.entries()) {
      try {
        await runStep(step, clients, vars, wsUrl, shutdownNode);
      } catch (e) {
        throw new Error(`${vector.name} (${vector.file}): step ${i + 1} ${show(step)}: ${e.message}`);
      }
    }
  } finally {
    for (const c of clients.values()) c.ws.terminate();
  }
}

async function runStep(step, clients, vars, wsUrl, shutdownNode) {
  const action = actionOf(step);
  const arg = step[action];
  if (action === "shutdown_node") {
    // Not awaited: the node drains while the clients read their close.
    shutdownNode().catch(() => {});
    return;
  }
  const name = step.client;
  if (typeof name !== "string") throw new Error("bad vector: the step names no client");
  if (action === "connect") {
    if (clients.has(name)) throw new Error(`bad vector: client ${name} is already connected`);
    const conn = await connect(wsUrl, arg, vars);
    if (conn) clients.set(name, conn);
    return;
  }
  const c = clients.get(name);
  if (!c) throw new Error(`bad vector: client ${name} is not connected`);
  switch (action) {
    case "send":
      c.ws.send(JSON.stringify(substitute(arg, vars)));
      return;
    case "send_text":
      c.ws.send(arg);
      return;
    case "send_raw": {
      if (!["text", "binary"].includes(arg.opcode)) throw new Error("bad vector: send_raw needs opcode text or binary");
      // `ws` does not validate outgoing text, so invalid UTF-8 goes out as is.
      c.ws.send(Buffer.from(arg.hex, "hex"), { binary: arg.opcode === "binary" });
      return;
    }
    case "expect": {
      const got = await c.frame();
      try {
        match(arg, got, vars);
      } catch (e) {
        throw new Error(`received ${show(got, 600)}: ${e.message}`);
      }
      return;
    }
    case "expect_unordered": {
      const got = [];
      for (let i = 0; i < arg.length; i++) {
        try {
          got.push(await c.frame());
        } catch (e) {
          throw new Error(`${e.message} (after ${got.length} of ${arg.length} frames: ${show(got, 600)})`);
        }
      }
      const bound = assign(arg, got, vars);
      if (!bound) throw new Error(`the frames ${show(got, 900)} do not match the shapes in any order`);
      for (const [k, v] of bound) vars.set(k, v);
      return;
    }
    case "expect_close": {
      const code = await c.closeCode();
      if (code !== arg.code) throw new Error(`closed with ${code}, expected ${arg.code}`);
      return;
    }
    case "close": {
      c.ws.close(arg.code ?? 1000);
      await c.closeCode().catch(() => {});
      clients.delete(name);
      return;
    }
    default:
      throw new Error(`bad vector: unknown action ${action}`);
  }
}
