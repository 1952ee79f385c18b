import type net from "node:net";
import type pg from "pg";
import { PreparingClient } from "./prepared.js";

export interface WatchedClientConfig extends pg.ClientConfig {
  /**
   * A statement without an answer for `ms` gives its connection up; unset: never. Read at each
   * statement, so a pool can turn it on once its long statements (migrations) are done.
   */
  statementWatchdog?: { ms?: number };
}

/**
 * A pg client that gives up on a connection whose server stopped answering. A server that goes away
 * without a word (its host lost power, a failover moved its address, a firewall dropped the flow)
 * leaves the socket open: TCP retransmits for about 15 minutes before it fails a statement on it, and
 * through a proxy it never does. The watchdog destroys such a connection, failing its statement as
 * the database unavailable (ETIMEDOUT), and the pool opens a new one for the next.
 */
export class WatchedClient extends PreparingClient {
  private readonly watchdog: { ms?: number };

  constructor(config: WatchedClientConfig = {}) {
    super(config);
    this.watchdog = config.statementWatchdog ?? {};
  }

  override query(...args: unknown[]): never {
    const result = (super.query as (...a: unknown[]) => unknown).apply(this, args);
    const ms = this.watchdog.ms;
    if (!ms || !(result instanceof Promise)) return result as never;
    const timer = setTimeout(() => this.giveUp(ms), ms);
    return result.finally(() => clearTimeout(timer)) as never;
  }

  private giveUp(ms: number): void {
    const err = Object.assign(new Error(`Postgres did not answer within ${ms} ms; the connection was given up`), { code: "ETIMEDOUT" });
    (this as unknown as { connection: { stream: net.Socket } }).connection.stream.destroy(err);
  }
}
