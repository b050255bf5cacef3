// @ts-check
/**
 * rtc-outbox.js — the web SDK's durable outbox (an ES module, no build step), the counterpart of
 * the Python SDK's `outbox.py` and `sender.py`.
 *
 * Every outgoing message is written to the store before its first attempt (IndexedDB: it
 * survives a page reload; memory where there is no IndexedDB, e.g. in Node) and stays there until
 * it was accepted (the peer's ACK or relay-service's 2xx) or refused for good. One worker per
 * conversation sends its queued messages in order; each is retried with capped exponential
 * backoff and jitter:
 *
 * | answer                                          | next                                   |
 * |-------------------------------------------------|----------------------------------------|
 * | 2xx from relay-service, or the peer's ACK       | `sent`                                 |
 * | 401                                             | a fresh token from `tokenProvider`, then again (`failed` `unauthorized` without one) |
 * | 429 (not before Retry-After), 5xx, 507, network | again, after the backoff               |
 * | 400, 403, 404, 413 and any other 4xx            | `failed` with the server's code        |
 */

/**
 * @typedef {"queued" | "sent" | "failed"} MessageState
 * @typedef {{seq?: number, messageId: string, to: string, convId: string, payload: string,
 *            state: MessageState, transport: "rtc" | "relay" | null, error: string | null,
 *            attempts: number, updatedAt: number}} OutgoingMessage
 * @typedef {{kind: "sent", delivery: any} | {kind: "failed", code: string, status?: number}
 *           | {kind: "retry", reason: string, retryAfterMs?: number}} Outcome
 */

/** relay-service answers retried after the backoff (0: no answer). */
export const RETRY_STATUS = new Set([0, 408, 425, 429, 500, 502, 503, 504, 507]);
/** Settled messages kept for `messages()`. */
const KEEP_SETTLED = 1000;

/**
 * Capped exponential backoff with jitter (half to full of the step), never before Retry-After.
 * @param {number} attempt @param {number} baseMs @param {number} capMs @param {number} [retryAfterMs]
 */
export function retryDelayMs(attempt, baseMs, capMs, retryAfterMs = 0) {
  const step = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.max(step / 2 + Math.random() * (step / 2), retryAfterMs);
}

/** @param {OutgoingMessage[]} list */
const bySeq = (list) => list.sort((a, b) => (a.seq ?? 0) - (b.seq ?? 0));

/** In memory: this page (or process) only. */
export class MemoryStore {
  /** @type {Map<string, OutgoingMessage>} */
  #items = new Map();
  #seq = 0;

  /** @param {string} messageId @returns {Promise<OutgoingMessage | undefined>} */
  async get(messageId) {
    const found = this.#items.get(messageId);
    return found && { ...found };
  }

  /** @param {OutgoingMessage} message */
  async add(message) {
    const known = this.#items.get(message.messageId);
    if (known) return known;
    const stored = { ...message, seq: ++this.#seq };
    this.#items.set(message.messageId, stored);
    return stored;
  }

  /** @param {OutgoingMessage} message */
  async put(message) {
    this.#items.set(message.messageId, { ...message });
  }

  async all() {
    return bySeq([...this.#items.values()].map((m) => ({ ...m })));
  }

  close() {}
}

/** IndexedDB: one database per wallet, so queued messages survive a reload. */
export class IndexedDbStore {
  /** @type {IDBDatabase | null} */
  #db = null;

  /** @param {string} name */
  constructor(name) {
    this.name = name;
  }

  /** @returns {Promise<IDBDatabase>} */
  #open() {
    if (this.#db) return Promise.resolve(this.#db);
    return new Promise((resolve, reject) => {
      const request = indexedDB.open(this.name, 1);
      request.onupgradeneeded = () => {
        const store = request.result.createObjectStore("outbox", { keyPath: "seq", autoIncrement: true });
        store.createIndex("messageId", "messageId", { unique: true });
      };
      request.onsuccess = () => {
        this.#db = request.result;
        resolve(request.result);
      };
      request.onerror = () => reject(request.error);
    });
  }

  /**
   * @template T
   * @param {IDBTransactionMode} mode @param {(store: IDBObjectStore) => IDBRequest<T>} work
   * @returns {Promise<T>} once the transaction is committed
   */
  async #run(mode, work) {
    const db = await this.#open();
    return new Promise((resolve, reject) => {
      const tx = db.transaction("outbox", mode, { durability: "strict" });
      const request = work(tx.objectStore("outbox"));
      tx.oncomplete = () => resolve(request.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  /** @param {string} messageId @returns {Promise<OutgoingMessage | undefined>} */
  get(messageId) {
    return this.#run("readonly", (store) => store.index("messageId").get(messageId));
  }

  /** @param {OutgoingMessage} message */
  async add(message) {
    const known = await this.get(message.messageId);
    if (known) return known;
    const { seq: _ignored, ...record } = message;
    const seq = /** @type {number} */ (await this.#run("readwrite", (store) => store.add(record)));
    return { ...record, seq };
  }

  /** @param {OutgoingMessage} message */
  async put(message) {
    await this.#run("readwrite", (store) => store.put(message));
  }

  async all() {
    const items = /** @type {OutgoingMessage[]} */ (await this.#run("readonly", (store) => store.getAll()));
    const settled = items.filter((m) => m.state !== "queued");
    if (settled.length > KEEP_SETTLED) {
      const drop = settled.slice(0, settled.length - KEEP_SETTLED);
      await this.#run("readwrite", (store) => {
        for (const m of drop.slice(0, -1)) store.delete(/** @type {number} */ (m.seq));
        return store.delete(/** @type {number} */ (drop[drop.length - 1].seq));
      });
      const dropped = new Set(drop.map((m) => m.seq));
      return bySeq(items.filter((m) => !dropped.has(m.seq)));
    }
    return bySeq(items);
  }

  close() {
    this.#db?.close();
    this.#db = null;
  }
}

/** @param {"indexeddb" | "memory"} kind @param {string} wallet */
export function openStore(kind, wallet) {
  if (kind === "indexeddb" && typeof globalThis.indexedDB !== "undefined") {
    return new IndexedDbStore(`rtc-outbox-${wallet}`);
  }
  return new MemoryStore();
}

export class Outbox {
  /** @type {Map<string, Promise<void>>} */
  #workers = new Map();
  /** @type {Map<string, () => void>} wake a worker sleeping in its backoff */
  #kicks = new Map();
  /** @type {Set<string>} conversations kicked while an attempt was under way */
  #kicked = new Set();
  /** @type {Map<string, {resolve: (o: Outcome) => void, reject: (e: Error) => void}[]>} */
  #waiters = new Map();
  #running = false;

  /**
   * @param {{store: MemoryStore | IndexedDbStore, attempt: (m: OutgoingMessage) => Promise<Outcome>,
   *          onState: (m: OutgoingMessage) => void, retryDelayMs: number, retryDelayMaxMs: number,
   *          logger: Pick<Console, "warn"> | null}} options
   */
  constructor(options) {
    this.store = options.store;
    this.attempt = options.attempt;
    this.onState = options.onState;
    this.retryDelayMs = options.retryDelayMs;
    this.retryDelayMaxMs = options.retryDelayMaxMs;
    this.logger = options.logger;
  }

  /** Send what earlier pages left queued, and from now on what is added. */
  async start() {
    this.#running = true;
    for (const m of await this.store.all()) if (m.state === "queued") this.wake(m.convId);
  }

  /** @param {OutgoingMessage} message */
  async add(message) {
    const stored = await this.store.add(message);
    if (stored.state === "queued") {
      this.onState(stored);
      this.wake(stored.convId);
    }
    return stored;
  }

  /** @param {string} convId */
  wake(convId) {
    if (!this.#running || this.#workers.has(convId)) return;
    this.#workers.set(convId, this.#drain(convId));
  }

  /** Retry now instead of at the end of the backoff (the connection came back); an attempt
   * under way is followed by the next one at once. */
  kick() {
    for (const convId of this.#workers.keys()) this.#kicked.add(convId);
    for (const kick of this.#kicks.values()) kick();
  }

  /** Resolved when `messageId` settles (register it before the message can settle).
   * @param {string} messageId @returns {Promise<Outcome>} */
  settled(messageId) {
    return new Promise((resolve, reject) => {
      const list = this.#waiters.get(messageId) ?? [];
      list.push({ resolve, reject });
      this.#waiters.set(messageId, list);
    });
  }

  /** A settled message's outcome to its waiters (a message found settled already).
   * @param {OutgoingMessage} message */
  resolveSettled(message) {
    /** @type {Outcome} */
    const outcome = message.state === "failed"
      ? { kind: "failed", code: message.error ?? "failed" }
      : { kind: "sent", delivery: { to: message.to, messageId: message.messageId,
          transport: message.transport ?? "relay", forced: false, rtcTries: 0,
          candidatePair: null, relayId: null, duplicate: true } };
    for (const waiter of this.#waiters.get(message.messageId) ?? []) waiter.resolve(outcome);
    this.#waiters.delete(message.messageId);
  }

  close() {
    this.#running = false;
    this.kick();
    for (const list of this.#waiters.values()) {
      for (const waiter of list) waiter.reject(Object.assign(new Error("closed"), { code: "closed" }));
    }
    this.#waiters.clear();
    this.store.close();
  }

  /** @param {string} convId */
  async #drain(convId) {
    /** @type {Map<string, number>} */
    const attempts = new Map();
    let failed = false;
    try {
      while (this.#running) {
        const queued = (await this.store.all()).filter((m) => m.state === "queued" && m.convId === convId);
        if (queued.length === 0) return;
        const message = queued[0];
        const done = (attempts.get(message.messageId) ?? message.attempts) + 1;
        attempts.set(message.messageId, done);
        this.#kicked.delete(convId); // a kick during this attempt skips the backoff after it
        /** @type {Outcome} */
        let outcome;
        try {
          outcome = await this.attempt(message);
        } catch (err) {
          this.logger?.warn("rtc-sdk: send attempt failed", { error: String(/** @type {any} */ (err)?.code ?? err) });
          outcome = { kind: "retry", reason: "error" };
        }
        if (!this.#running) return;
        if (outcome.kind === "retry") {
          // Still queued; the app may show the retries (the count is kept in memory only).
          this.onState({ ...message, attempts: done, error: outcome.reason, updatedAt: Date.now() });
          const wait = retryDelayMs(done - 1, this.retryDelayMs, this.retryDelayMaxMs, outcome.retryAfterMs);
          if (this.#kicked.delete(convId)) continue;
          await new Promise((resolve) => {
            const timer = setTimeout(resolve, wait);
            this.#kicks.set(convId, () => {
              clearTimeout(timer);
              resolve(undefined);
            });
          });
          this.#kicks.delete(convId);
          continue;
        }
        /** @type {OutgoingMessage} */
        const settled = {
          ...message,
          state: outcome.kind,
          transport: outcome.kind === "sent" ? outcome.delivery.transport : null,
          error: outcome.kind === "failed" ? outcome.code : null,
          attempts: done,
          updatedAt: Date.now(),
        };
        await this.store.put(settled);
        this.onState(settled);
        for (const waiter of this.#waiters.get(message.messageId) ?? []) waiter.resolve(outcome);
        this.#waiters.delete(message.messageId);
      }
    } catch (err) {
      // The store failed (quota, a closed database): the worker starts again after a while.
      this.logger?.warn("rtc-sdk: outbox worker failed", { error: String(/** @type {any} */ (err)?.name ?? err) });
      failed = true;
    } finally {
      this.#kicked.delete(convId);
      this.#workers.delete(convId);
    }
    if (!this.#running) return;
    if (failed) {
      setTimeout(() => this.wake(convId), this.retryDelayMaxMs);
      return;
    }
    // An add that came while this worker was finishing found it still registered: look again.
    try {
      const left = (await this.store.all()).some((m) => m.state === "queued" && m.convId === convId);
      if (left) this.wake(convId);
    } catch {
      setTimeout(() => this.wake(convId), this.retryDelayMaxMs);
    }
  }
}
