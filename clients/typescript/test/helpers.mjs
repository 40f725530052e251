// Real processes for the SDK tests: a chat-node binary (CHAT_NODE_BIN, else
// the workspace's debug build), a redis-server (REDIS_SERVER, else the one on
// the PATH), each on a free loopback port, and a TCP proxy that can cut
// connections like a network drop.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, openSync, readFileSync, closeSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const workspace = join(here, "..", "..", "..");

export function chatNodeBin() {
  const bin = process.env.CHAT_NODE_BIN || join(workspace, "target", "debug", "chat-node");
  if (!existsSync(bin)) {
    throw new Error(`no chat-node binary at ${bin}: run \`cargo build -p chat-node\` or set CHAT_NODE_BIN`);
  }
  return bin;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` (sync or async) until it returns a truthy value. */
export async function waitFor(what, check, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
    }
    await sleep(50);
  }
}

function exited(child) {
  return child.exitCode !== null || child.signalCode !== null;
}

function waitExit(child, timeoutMs) {
  if (exited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), timeoutMs);
    child.once("exit", () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

/** A chat-node process (dev mode unless the args configure tokens). */
export class ChatNode {
  static async start(args = [], { port } = {}) {
    const node = new ChatNode(args, port ?? (await freePort()));
    await node.spawn();
    return node;
  }

  constructor(args, port) {
    this.args = args;
    this.port = port;
    this.dir = mkdtempSync(join(tmpdir(), "shardchat-sdk-node-"));
    this.starts = 0;
    this.child = null;
  }

  get httpUrl() {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/v1/ws`;
  }

  get logPath() {
    return join(this.dir, `node-${this.starts}.log`);
  }

  log() {
    try {
      return readFileSync(this.logPath, "utf8");
    } catch {
      return "";
    }
  }

  async spawn() {
    this.starts++;
    const auth = this.args.some((a) => a.startsWith("--jwt-") || a === "--dev-mode");
    const args = ["--listen", `127.0.0.1:${this.port}`, ...(auth ? [] : ["--dev-mode"]), ...this.args];
    const fd = openSync(this.logPath, "a");
    this.child = spawn(chatNodeBin(), args, { stdio: ["ignore", fd, fd], env: { ...process.env, RUST_LOG: "info" } });
    closeSync(fd);
    try {
      await waitFor(`chat-node on port ${this.port} to be ready`, async () => {
        if (exited(this.child)) throw new Error(`chat-node exited early:\n${this.log().slice(-3000)}`);
        const r = await fetch(`${this.httpUrl}/readyz`);
        return r.status === 200;
      }, 30_000);
    } catch (e) {
      this.kill();
      throw new Error(`${e.message}\n--- node log ---\n${this.log().slice(-3000)}`);
    }
  }

  /** SIGTERM (clients get close 1012) and wait for the exit. */
  async stop() {
    if (!this.child || exited(this.child)) return;
    this.child.kill("SIGTERM");
    if (!(await waitExit(this.child, 30_000))) throw new Error("chat-node did not exit on SIGTERM");
  }

  async restart() {
    await this.stop();
    await this.spawn();
  }

  kill() {
    if (this.child && !exited(this.child)) this.child.kill("SIGKILL");
  }
}

/** A private redis-server without persistence. */
export class RedisServer {
  static async start() {
    const port = await freePort();
    const bin = process.env.REDIS_SERVER || "redis-server";
    const child = spawn(bin, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    const spawned = await new Promise((resolve) => {
      child.once("spawn", () => resolve(null));
      child.once("error", (e) => resolve(e));
    });
    if (spawned) throw new Error(`cannot run ${bin} (apt-get install -y redis-server, or set REDIS_SERVER): ${spawned.message}`);
    const server = new RedisServer(child, port);
    await waitFor(`redis-server on port ${port}`, async () => {
      if (exited(child)) throw new Error(`redis-server exited: ${out}`);
      return (await server.ping()) === "+PONG";
    });
    return server;
  }

  constructor(child, port) {
    this.child = child;
    this.port = port;
  }

  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  ping() {
    return new Promise((resolve) => {
      const s = net.connect(this.port, "127.0.0.1");
      let got = "";
      s.on("error", () => resolve(""));
      s.on("data", (d) => {
        got += d;
        if (got.includes("\r\n")) {
          s.destroy();
          resolve(got.trim());
        }
      });
      s.write("PING\r\n");
    });
  }

  kill() {
    if (!exited(this.child)) this.child.kill("SIGKILL");
  }
}

/**
 * A TCP proxy in front of a port. `cut()` destroys every open connection (the
 * client sees an abnormal close, as after a network drop) and, while
 * `blocked`, refuses new ones the same way.
 */
export class TcpProxy {
  static async start(targetPort) {
    const proxy = new TcpProxy(targetPort);
    await new Promise((resolve) => proxy.server.listen(0, "127.0.0.1", resolve));
    proxy.port = proxy.server.address().port;
    return proxy;
  }

  constructor(targetPort) {
    this.targetPort = targetPort;
    this.blocked = false;
    this.sockets = new Set();
    this.accepted = 0;
    this.server = net.createServer((client) => {
      if (this.blocked) {
        client.destroy();
        return;
      }
      this.accepted++;
      const upstream = net.connect(this.targetPort, "127.0.0.1");
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on("close", () => this.sockets.delete(s));
        s.on("error", () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/v1/ws`;
  }

  cut() {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  close() {
    this.cut();
    this.server.close();
  }
}

/** An HS256 JWT for `sub`, valid for `ttlSeconds`. */
export function jwt(secret, sub, ttlSeconds) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + ttlSeconds })}`;
  const sig = createHmac("sha256", secret).update(body).digest("base64url");
  return `${body}.${sig}`;
}

/** Records every event of a client. */
export function record(client) {
  const r = { messages: [], presence: [], rejoins: [], disconnects: [], errors: [], states: [], gaps: [], closed: [] };
  client.on("message", (m) => r.messages.push(m));
  client.on("presence", (p) => r.presence.push(p));
  client.on("rejoin", (e) => r.rejoins.push(e));
  client.on("disconnect", (e) => r.disconnects.push(e));
  client.on("error", (e) => r.errors.push(e));
  client.on("state", (s) => r.states.push(s.state));
  client.on("gap", (g) => r.gaps.push(g));
  client.on("closed", (c) => r.closed.push(c));
  r.ids = (channel) => r.messages.filter((m) => m.channel === channel).map((m) => m.id);
  return r;
}

/** Test-speed reconnects. */
export const FAST_RECONNECT = { minDelayMs: 50, maxDelayMs: 500 };

/**
 * Publishes `text`, retrying retryable failures with the same nonce until it
 * is stored (what a game would do); returns the message id.
 */
export async function publishSurely(client, channel, text, deadlineMs = 30_000) {
  const deadline = Date.now() + deadlineMs;
  let nonce;
  for (;;) {
    try {
      const r = await client.publish(channel, text, nonce ? { nonce, timeoutMs: 3000 } : { timeoutMs: 3000 });
      return r.messageId;
    } catch (e) {
      if (!e.retryable || Date.now() > deadline) throw e;
      nonce = e.nonce;
      await sleep(100);
    }
  }
}
