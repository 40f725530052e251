/**
 * Node.js entry of `@shardchat/client`: the same API as the browser build,
 * with the `ws` library as the WebSocket implementation (Node.js 20 has no
 * global `WebSocket`).
 *
 * ```js
 * import { ShardchatClient } from "@shardchat/client";
 * const chat = new ShardchatClient({ url: "ws://127.0.0.1:8080", user: "bot-1" });
 * ```
 *
 * @packageDocumentation
 */
import { ShardchatClient as BaseClient, type ClientOptions } from "./shardchat.js";
export * from "./shardchat.js";
/** {@link BaseClient} that uses `ws` unless `options.WebSocket` says otherwise. */
export declare class ShardchatClient extends BaseClient {
    constructor(options: ClientOptions);
}
