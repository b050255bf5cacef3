// @ts-check
/**
 * rtc-sdk.js — the Web SDK of the RTC backplane (an ES module, no build step).
 *
 * The contract's client flow (shared spec, "Client flow"), mirroring the Python SDK
 * (`clients/python/rtc_client`) so that both talk to each other:
 *
 * - ICE from ice-service (`GET /api/v1/rtc/ice`) with `Authorization: Bearer`, or with the JWT
 *   cookie plus the CSRF double-submit header; re-fetched at `refreshRatio` (70 %) of `ttl`. Then
 *   every open peer connection moves to the fresh credentials: towards a peer that can follow an
 *   ICE restart (another web SDK: its SDP carries `a=x-rtc-ice-restart:1`), `setConfiguration` +
 *   an ICE-restart offer on the same connection, so the data channel stays open; towards one
 *   that cannot (the Python SDK: aiortc has no ICE restart), a new RTCPeerConnection, the old
 *   one closed once the new data channel is open.
 * - Signaling over Socket.IO (`rtc:offer`, `rtc:answer`, `rtc:candidate`, each with an ack);
 *   candidates are trickled. Glare: the offer of the lexicographically smaller wallet wins.
 * - A data channel labelled `rtc` (ordered) with the JSON frames
 *   `{"t":"msg","messageId","payload","sentAt"}` and `{"t":"ack","messageId"}`. Every outgoing
 *   message is first written to the outbox (rtc-outbox.js: IndexedDB, so it survives a reload),
 *   then sent per conversation in order: `rtcTries` tries (2), each waiting at most `ackWindowMs`
 *   (3 s) for the channel and the ACK, then relay-service with `force: true`, retried with
 *   backoff until accepted or refused for good. `send()` waits for that, `enqueue()` does not;
 *   `messageState` events and `messages()` show `queued` -> `sent` (rtc|relay) -> `failed`.
 * - Receiving: data-channel frames, `relay:message` pushes and `pull` on every (re)connect,
 *   deduplicated by sender + messageId across both transports, then acked.
 * - The transport of every message goes to the app (`delivery` / `message` events) and to
 *   `POST /api/v1/rtc/telemetry` with the selected pair's local candidate type (getStats).
 * - With a `tokenProvider`, a 401 anywhere and `session:end {reason: "token_expired"}` (or a
 *   refused token at a reconnect) ask it for a fresh token and carry on.
 * - Otherwise a session the server ends is not retried: on `session:end {reason}`
 *   (`token_expired`, `abuse`, `revoked`; the server may add others) or a handshake refusal while (re)connecting (the
 *   connect_error's `data.error`: `unauthorized`, `too_many_connections`, `csrf_failed`), the
 *   socket and the peer connections close, `state` becomes "ended", `sessionEndReason` holds the
 *   reason and a `sessionEnded` event ({reason}) goes out once (a refusal during `start()` also
 *   rejects it with `RtcError(code)`). Network failures are retried.
 *   The relay over HTTP keeps working with the token; sign in again with a new token (a new
 *   RtcClient) to get signaling back.
 *
 * Tokens and ICE credentials are never logged and are kept in private fields.
 *
 * @example
 *   import { RtcClient } from "./rtc-sdk.js";
 *   const me = new RtcClient({ baseUrl: location.origin, token });
 *   me.addEventListener("message", (e) => console.log(e.detail.payload, e.detail.transport));
 *   me.addEventListener("sessionEnded", (e) => console.log("signed out:", e.detail.reason));
 *   await me.start();
 *   const delivery = await me.send("0xbbb", "hello"); // {transport: "rtc"|"relay", forced, ...}
 */
import { io as defaultIo } from "./vendor/socket.io.esm.min.js";
import { Outbox, RETRY_STATUS as OUTBOX_RETRY_STATUS, openStore } from "./rtc-outbox.js";

export const CHANNEL_LABEL = "rtc";
const HEX_WALLET = /^0x[0-9a-fA-F]+$/;
const RETRYABLE_STATUS = new Set([0, 429, 502, 503, 504]);
const CANDIDATE_TYPES = new Set(["host", "srflx", "prflx", "relay"]);
// Announced in the SDP this SDK sends (a session-level attribute others ignore): "I follow an ICE
// restart on the same connection". Removed again before the SDP is applied.
const RESTART_CAP = "a=x-rtc-ice-restart:1";

/** @param {string} sdp */
function withRestartCap(sdp) {
  const at = sdp.indexOf("\r\nm=");
  return at < 0 ? sdp : `${sdp.slice(0, at)}\r\n${RESTART_CAP}${sdp.slice(at)}`;
}

/** @param {string} sdp */
function stripRestartCap(sdp) {
  return sdp.split("\r\n").filter((line) => line !== RESTART_CAP).join("\r\n");
}

/** The DTLS fingerprint an SDP names (the same connection keeps it across an ICE restart).
 * @param {string | undefined | null} sdp */
function fingerprint(sdp) {
  return sdp?.match(/a=fingerprint:(\S+ \S+)/)?.[1] ?? null;
}

/**
 * @typedef {"rtc" | "relay"} Transport
 * @typedef {{local: string | null, remote: string | null, protocol?: string | null,
 *            relayProtocol?: string | null}} CandidatePair
 * @typedef {{to: string, messageId: string, transport: Transport, forced: boolean,
 *            rtcTries: number, candidatePair: CandidatePair | null, relayId: string | null,
 *            duplicate: boolean}} Delivery  What happened to one sent message.
 * @typedef {{sender: string, convId: string, messageId: string, payload: string,
 *            transport: Transport, forced: boolean, sentAt: string | null,
 *            relayId: string | null}} IncomingMessage
 * @typedef {{ttl: number, provider: string, expiresAt: string, serverTime: string,
 *            fetchedAt: number, refreshAt: number, fetches: number}} IceInfo
 *            ICE without its credentials; `fetchedAt`/`refreshAt` are Date.now() milliseconds.
 * @typedef {{wallet: string, online: boolean, at: string | null}} Presence
 * @typedef {Pick<Console, "info" | "warn">} Logger
 *
 * @typedef {object} RtcClientOptions
 * @property {string} baseUrl  The gateway's origin, e.g. `http://127.0.0.1:8080`.
 * @property {string} [token]  A JWT for Bearer auth (omit it for cookie auth).
 * @property {string} [wallet]  Defaults to the token's `wallet` (or `sub`) claim.
 * @property {"bearer" | "cookie"} [auth]  Default: "bearer" when a token is given.
 * @property {string} [csrfCookieName]  Cookie auth: "csrf_token".
 * @property {string} [csrfHeaderName]  Cookie auth: "X-CSRF-Token".
 * @property {RTCIceTransportPolicy} [iceTransportPolicy]  "all" (default) or "relay".
 * @property {number} [ackWindowMs]  3000.
 * @property {number} [rtcTries]  2.
 * @property {number} [refreshRatio]  0.7 of `ttl`.
 * @property {boolean} [rtc]  true: this client does WebRTC (`auth.rtc` of the socket).
 * @property {boolean} [telemetry]  true: report each message's transport.
 * @property {number} [negotiationTimeoutMs]  10000.
 * @property {number} [signalTimeoutMs]  5000.
 * @property {string[]} [transports]  Socket.IO transports, ["websocket"].
 * @property {typeof defaultIo} [io]  The socket.io-client `io` function.
 * @property {Logger | null} [logger]  console by default; null for silence.
 * @property {"indexeddb" | "memory"} [storage]  The outbox: "indexeddb" (default; memory where
 *   there is none) keeps queued messages across reloads.
 * @property {() => Promise<string> | string} [tokenProvider]  Asked for a fresh token on a 401
 *   and at `session:end {reason: "token_expired"}` (cookie auth: refresh the cookie, return "").
 * @property {number} [retryDelayMs]  The outbox's first retry delay, 500.
 * @property {number} [retryDelayMaxMs]  Its cap, 10000.
 */

/** @param {string} wallet */
export function normalizeWallet(wallet) {
  const w = String(wallet).trim();
  return HEX_WALLET.test(w) ? w.toLowerCase() : w;
}

/** @param {string} a @param {string} b */
export function convId(a, b) {
  return [normalizeWallet(a), normalizeWallet(b)].sort().join(":");
}

/** The wallet claim of a JWT (read, not verified: the server verifies). @param {string} token */
export function walletFromToken(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    const wallet = typeof claims.wallet === "string" ? claims.wallet : claims.sub;
    return typeof wallet === "string" && wallet ? normalizeWallet(wallet) : null;
  } catch {
    return null;
  }
}

/** @param {string} prefix */
function newId(prefix) {
  return `${prefix}-${crypto.randomUUID().replace(/-/g, "")}`;
}

/** @param {string} messageId @param {string} payload @param {string} [sentAt] */
export function encodeMsg(messageId, payload, sentAt) {
  return JSON.stringify({ t: "msg", messageId, payload, sentAt: sentAt ?? new Date().toISOString() });
}

/** @param {string} messageId */
export function encodeAck(messageId) {
  return JSON.stringify({ t: "ack", messageId });
}

/**
 * One of the contract's frames, or null for anything else.
 * @param {unknown} data
 * @returns {{t: "msg", messageId: string, payload: string, sentAt: string | null}
 *          | {t: "ack", messageId: string} | null}
 */
export function decodeFrame(data) {
  if (typeof data !== "string") return null;
  let body;
  try {
    body = JSON.parse(data);
  } catch {
    return null;
  }
  if (!body || typeof body !== "object") return null;
  const id = body.messageId;
  if (typeof id !== "string" || id.length === 0 || id.length > 128) return null;
  if (body.t === "ack") return { t: "ack", messageId: id };
  if (body.t === "msg" && typeof body.payload === "string") {
    return { t: "msg", messageId: id, payload: body.payload, sentAt: typeof body.sentAt === "string" ? body.sentAt : null };
  }
  return null;
}

/** An error with a stable code (never a token or credential in its message). */
export class RtcError extends Error {
  /** @param {string} code @param {string} [message] @param {number | null} [status] */
  constructor(code, message, status = null) {
    super(message ? `${code}: ${message}` : code);
    this.code = code;
    this.status = status;
  }
}

/** @param {number} ms */
const delay = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

/**
 * The (local, remote) candidate types of the selected pair, from getStats.
 * @param {RTCPeerConnection} pc
 * @returns {Promise<CandidatePair | null>}
 */
export async function selectedCandidatePair(pc) {
  let stats;
  try {
    stats = await pc.getStats();
  } catch {
    return null;
  }
  /** @type {any} */
  let pair = null;
  stats.forEach((report) => {
    if (report.type === "transport" && report.selectedCandidatePairId) {
      pair = stats.get(report.selectedCandidatePairId) ?? pair;
    }
  });
  if (!pair) {
    stats.forEach((report) => {
      if (!pair && report.type === "candidate-pair" && report.nominated && report.state === "succeeded") pair = report;
    });
  }
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId);
  const remote = stats.get(pair.remoteCandidateId);
  return {
    local: local?.candidateType ?? null,
    remote: remote?.candidateType ?? null,
    protocol: local?.protocol ?? null,
    relayProtocol: local?.relayProtocol ?? null,
  };
}

class Session {
  /** @param {RTCPeerConnection} pc @param {boolean} initiator @param {number} iceGeneration */
  constructor(pc, initiator, iceGeneration) {
    this.pc = pc;
    this.initiator = initiator;
    this.iceGeneration = iceGeneration;
    /** @type {RTCDataChannel | null} */
    this.channel = null;
    this.remoteSet = false;
    /** @type {RTCIceCandidateInit[]} remote candidates that came before the description */
    this.early = [];
    /** @type {RTCIceCandidateInit[]} local candidates gathered before our SDP went out */
    this.pendingLocal = [];
    this.signalled = false;
    this.closed = false;
    this.restartable = false; // the peer announced it follows ICE restarts (RESTART_CAP)
    this.restarting = false; // our ICE-restart offer is out, its answer not yet applied
  }

  get open() {
    return !this.closed && this.channel !== null && this.channel.readyState === "open";
  }
}

class Link {
  /** @param {string} remote */
  constructor(remote) {
    this.remote = remote;
    /** @type {Session | null} */
    this.active = null;
    /** @type {Session | null} */
    this.negotiating = null;
    /** @type {string | null} */
    this.failure = null;
    this.negotiationRunning = false;
    this.sessionsMade = 0;
    /** @type {Set<() => void>} */
    this.waiters = new Set();
    /** @type {CandidatePair | null} */
    this.pair = null;
  }

  notify() {
    const waiters = [...this.waiters];
    this.waiters.clear();
    for (const wake of waiters) wake();
  }

  /** Resolves at the next notify() or after `ms`. @param {number} ms */
  changed(ms) {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        resolve(undefined);
      };
      const timer = setTimeout(() => {
        this.waiters.delete(wake);
        resolve(undefined);
      }, Math.max(0, ms));
      this.waiters.add(wake);
    });
  }
}

/**
 * One signed-in user. Events (CustomEvent, data in `detail`): `message` (IncomingMessage),
 * `delivery` (Delivery), `presence` (Presence), `ice` (IceInfo), `pair` ({peer, pair}),
 * `connection` ({connected, error?}), `policy` ({iceTransportPolicy, peerPathBlocked}),
 * `iceRestart` ({peer, generation}: an open connection moved to fresh ICE credentials in place),
 * `sessionEnded` ({reason}: the server ended or refused the session; final, see the top).
 */
export class RtcClient extends EventTarget {
  #token;
  /** @type {RTCIceServer[]} */
  #iceServers = [];
  /** @type {Map<string, {resolve: () => void, promise: Promise<void>}>} */
  #acks = new Map();
  /** @type {Map<string, true>} */
  #seen = new Map();
  /** @type {any} */
  #socket = null;
  /** @type {Promise<IceInfo> | null} */
  #iceFetch = null;
  /** @type {ReturnType<typeof setTimeout> | null} */
  #refreshTimer = null;
  /** @type {Set<ReturnType<typeof setTimeout>>} */
  #timers = new Set();
  #blocked = false;
  #closed = false;
  /** @type {string | null} */
  #endReason = null;
  /** @type {Promise<string> | null} the token provider's answer being awaited */
  #renewing = null;
  #renewed = false; // a fresh token was asked for since the last successful connect

  /** @param {RtcClientOptions} options */
  constructor(options) {
    super();
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.#token = options.token ?? null;
    this.authMode = options.auth ?? (options.token ? "bearer" : "cookie");
    const wallet = options.wallet ?? (options.token ? walletFromToken(options.token) : null);
    if (!wallet) throw new RtcError("invalid_options", "no wallet (give `wallet` or a token with a wallet claim)");
    this.wallet = normalizeWallet(wallet);
    this.csrfCookieName = options.csrfCookieName ?? "csrf_token";
    this.csrfHeaderName = options.csrfHeaderName ?? "X-CSRF-Token";
    /** @type {RTCIceTransportPolicy} */
    this.iceTransportPolicy = options.iceTransportPolicy ?? "all";
    this.ackWindowMs = options.ackWindowMs ?? 3000;
    this.rtcTries = options.rtcTries ?? 2;
    this.refreshRatio = options.refreshRatio ?? 0.7;
    this.rtc = options.rtc ?? true;
    this.telemetry = options.telemetry ?? true;
    this.negotiationTimeoutMs = options.negotiationTimeoutMs ?? 10000;
    this.signalTimeoutMs = options.signalTimeoutMs ?? 5000;
    this.transports = options.transports ?? ["websocket"];
    this.io = options.io ?? defaultIo;
    /** @type {Logger | null} */
    this.logger = options.logger === undefined ? console : options.logger;
    if (!(this.rtcTries >= 0 && this.ackWindowMs > 0 && this.refreshRatio > 0 && this.refreshRatio < 1)) {
      throw new RtcError("invalid_options", "rtcTries >= 0, ackWindowMs > 0 and 0 < refreshRatio < 1");
    }
    /** @type {IceInfo | null} */
    this.ice = null;
    this.iceFetches = 0;
    /** @type {Map<string, Presence>} contacts seen through presence events */
    this.presence = new Map();
    /** @type {Map<string, Link>} */
    this.links = new Map();
    /** @type {{transport: Transport, candidateType?: string, forced: boolean}[]} */
    this.telemetrySent = [];
    this.tokenProvider = options.tokenProvider ?? null;
    this.outbox = new Outbox({
      store: openStore(options.storage ?? "indexeddb", this.wallet),
      attempt: (m) => this.#attempt(m),
      onState: (m) => this.#emit("messageState", m),
      retryDelayMs: options.retryDelayMs ?? 500,
      retryDelayMaxMs: options.retryDelayMaxMs ?? 10000,
      logger: this.logger,
    });
  }

  // -- lifecycle ---------------------------------------------------------------------------------

  /** Send what the outbox kept from earlier pages, fetch ICE, connect the signaling socket
   * (resolves once connected), pull the relay queue. */
  async start() {
    await this.outbox.start();
    if (this.rtc) await this.refreshIce();
    await this.#connectSocket();
  }

  /** Queued messages stay in the outbox (IndexedDB) for the next page. */
  async close() {
    this.#closed = true;
    this.outbox.close();
    if (this.#refreshTimer !== null) clearTimeout(this.#refreshTimer);
    for (const timer of this.#timers) clearTimeout(timer);
    for (const link of this.links.values()) this.#closeLink(link, "closed");
    if (this.#socket) this.#socket.disconnect();
  }

  /** A new token for the next HTTP calls and socket (re)connections. @param {string} token */
  setToken(token) {
    this.#token = token;
  }

  get connected() {
    return Boolean(this.#socket && this.#socket.connected);
  }

  /** The reason the server ended (or refused) the session; null while it lives. */
  get sessionEndReason() {
    return this.#endReason;
  }

  /**
   * The signaling session; "connecting" also covers the reconnect loop after a drop, "ended" is
   * final.
   * @returns {"new" | "connecting" | "connected" | "disconnected" | "ended" | "closed"}
   */
  get state() {
    if (this.#closed) return "closed";
    if (this.#endReason !== null) return "ended";
    if (!this.#socket) return "new";
    if (this.#socket.connected) return "connected";
    return this.#socket.active ? "connecting" : "disconnected";
  }

  get peerPathBlocked() {
    return this.#blocked;
  }

  /**
   * Simulate a failed peer path: close every peer connection, answer no offer, send and accept
   * no ICE candidate, drop every data-channel frame. Messages then go through the relay.
   * @param {boolean} blocked
   */
  setPeerPathBlocked(blocked) {
    this.#blocked = Boolean(blocked);
    for (const link of this.links.values()) this.#closeLink(link, blocked ? "blocked" : "unblocked");
    this.#emit("policy", { iceTransportPolicy: this.iceTransportPolicy, peerPathBlocked: this.#blocked });
  }

  /** "relay" forces TURN; open connections are closed so the next one uses the policy.
   * @param {RTCIceTransportPolicy} policy */
  setIceTransportPolicy(policy) {
    this.iceTransportPolicy = policy === "relay" ? "relay" : "all";
    for (const link of this.links.values()) this.#closeLink(link, "policy_changed");
    this.#emit("policy", { iceTransportPolicy: this.iceTransportPolicy, peerPathBlocked: this.#blocked });
  }

  /** The selected candidate pair towards `peer` (null without an open connection).
   * @param {string} peer */
  async selectedPair(peer) {
    const link = this.links.get(normalizeWallet(peer));
    if (!link || !link.active || !link.active.open) return null;
    return selectedCandidatePair(link.active.pc);
  }

  /** How many peer connections were built towards `peer` (rebuilds included). @param {string} peer */
  sessionsMade(peer) {
    return this.links.get(normalizeWallet(peer))?.sessionsMade ?? 0;
  }

  /** Open the data channel towards `peer` now; resolves with the selected pair.
   * @param {string} peer @param {number} [withinMs] */
  async connectPeer(peer, withinMs = 10000) {
    const remote = normalizeWallet(peer);
    const session = await this.#openSession(remote, Date.now() + withinMs);
    if (!session) throw new RtcError(this.links.get(remote)?.failure ?? "timeout", "no data channel");
    return selectedCandidatePair(session.pc);
  }

  // -- HTTP --------------------------------------------------------------------------------------

  #headers() {
    /** @type {Record<string, string>} */
    const headers = {};
    if (this.authMode === "bearer" && this.#token) {
      headers.Authorization = `Bearer ${this.#token}`;
    } else {
      const name = this.csrfCookieName + "=";
      const cookie = (globalThis.document?.cookie ?? "").split("; ").find((c) => c.startsWith(name));
      if (cookie) headers[this.csrfHeaderName] = decodeURIComponent(cookie.slice(name.length));
    }
    return headers;
  }

  /** One call; a 401 asks the token provider (if any) for a fresh token and is tried once more.
   * @param {string} method @param {string} path @param {unknown} [body] */
  async #request(method, path, body) {
    const token = this.#token;
    const answer = await this.#requestOnce(method, path, body);
    if (answer.status !== 401 || !this.tokenProvider) return answer;
    if (this.#token === token) await this.#renewToken(); // not renewed meanwhile by another call
    return this.#requestOnce(method, path, body);
  }

  /** The provider's fresh token, asked once for concurrent callers. */
  async #renewToken() {
    if (!this.tokenProvider) throw new RtcError("unauthorized", "no token provider");
    if (!this.#renewing) {
      const provider = this.tokenProvider;
      this.#renewing = Promise.resolve()
        .then(() => provider())
        .finally(() => {
          this.#renewing = null;
        });
    }
    const token = await this.#renewing;
    if (token) this.#token = token;
    return token;
  }

  /** @param {string} method @param {string} path @param {unknown} [body] */
  async #requestOnce(method, path, body) {
    const headers = this.#headers();
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(this.baseUrl + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: this.authMode === "cookie" ? "include" : "same-origin",
      signal: AbortSignal.timeout(10000),
    });
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    const retryAfter = Number(response.headers.get("Retry-After"));
    return { status: response.status, data, retryAfterMs: Number.isFinite(retryAfter) ? retryAfter * 1000 : 0 };
  }

  /** @param {number} status @param {any} data @param {string} what */
  static #error(status, data, what) {
    const code = data && typeof data.error === "string" ? data.error : `http_${status}`;
    return new RtcError(code, `${what} answered ${status}`, status);
  }

  /** Fetch ICE now (also what the refresh timer calls). @returns {Promise<IceInfo>} */
  refreshIce() {
    if (!this.#iceFetch) {
      this.#iceFetch = this.#fetchIce().finally(() => {
        this.#iceFetch = null;
      });
    }
    return this.#iceFetch;
  }

  async #fetchIce() {
    const { status, data } = await this.#request("GET", "/api/v1/rtc/ice");
    if (status !== 200 || !data || !Array.isArray(data.iceServers) || !(Number(data.ttl) > 0)) {
      throw RtcClient.#error(status, data, "ICE");
    }
    this.#iceServers = data.iceServers.map((/** @type {any} */ s) => ({
      urls: s.urls,
      ...(s.username ? { username: s.username } : {}),
      ...(s.credential ? { credential: s.credential } : {}),
    }));
    const fetchedAt = Date.now();
    const ttl = Number(data.ttl);
    this.iceFetches += 1;
    this.ice = {
      ttl,
      provider: String(data.provider ?? ""),
      expiresAt: String(data.expiresAt ?? ""),
      serverTime: String(data.serverTime ?? ""),
      fetchedAt,
      refreshAt: fetchedAt + ttl * this.refreshRatio * 1000,
      fetches: this.iceFetches,
    };
    this.logger?.info("rtc-sdk: ICE fetched", { provider: this.ice.provider, ttl, expiresAt: this.ice.expiresAt });
    this.#emit("ice", { ...this.ice });
    this.#scheduleRefresh(this.ice.refreshAt - fetchedAt);
    return this.ice;
  }

  /** @param {number} ms */
  #scheduleRefresh(ms) {
    if (this.#refreshTimer !== null) clearTimeout(this.#refreshTimer);
    if (this.#closed || this.#endReason !== null) return;
    this.#refreshTimer = setTimeout(() => this.#refreshDue(5000), ms);
  }

  /** @param {number} retryMs */
  async #refreshDue(retryMs) {
    try {
      await this.refreshIce();
    } catch (err) {
      this.logger?.warn("rtc-sdk: ICE refresh failed; retrying", { error: errorCode(err) });
      if (this.#closed || this.#endReason !== null) return;
      this.#refreshTimer = setTimeout(() => this.#refreshDue(Math.min(retryMs * 2, 60000)), retryMs);
      return;
    }
    this.#rebuildLinks();
  }

  /** Long sessions: open connections made with older credentials move to the fresh ones: an ICE
   * restart where the peer follows one, else a new connection. */
  #rebuildLinks() {
    for (const link of this.links.values()) {
      const session = link.active;
      if (!session || !session.open || session.iceGeneration === this.iceFetches) continue;
      if (session.restartable && !link.negotiationRunning && !link.negotiating) {
        this.#restartIce(link, session).catch((err) => {
          this.logger?.info("rtc-sdk: ICE restart failed; rebuilding", { peer: link.remote, error: errorCode(err) });
          session.restarting = false;
          this.#startNegotiation(link);
        });
      } else {
        this.#startNegotiation(link);
      }
    }
  }

  /** The fresh credentials on the same connection: setConfiguration, then an ICE-restart offer.
   * @param {Link} link @param {Session} session */
  async #restartIce(link, session) {
    const pc = session.pc;
    session.restarting = true;
    session.remoteSet = false; // the peer's new candidates wait for its answer
    pc.setConfiguration({ ...pc.getConfiguration(), iceServers: this.#iceServers });
    await pc.setLocalDescription(await pc.createOffer({ iceRestart: true }));
    const local = /** @type {RTCSessionDescription} */ (pc.localDescription);
    const ack = await this.#signal("rtc:offer", {
      convId: convId(this.wallet, link.remote),
      to: link.remote,
      sdp: { type: "offer", sdp: withRestartCap(local.sdp) },
      signalId: newId("restart"),
    });
    if (!ack.ok) throw new RtcError(String(ack.error ?? "refused"), "restart offer refused");
    const deadline = Date.now() + this.negotiationTimeoutMs;
    while (session.restarting && !session.closed) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        // No answer: back to the stable state, then a new connection (the caller's fallback).
        await pc.setLocalDescription({ type: "rollback" }).catch(() => {});
        session.remoteSet = true;
        throw new RtcError("negotiation_timeout", "no answer to the ICE restart");
      }
      await link.changed(remaining);
    }
    session.iceGeneration = this.iceFetches;
    this.#emit("iceRestart", { peer: link.remote, generation: session.iceGeneration });
  }

  /** The peer's ICE-restart offer for the open connection: answered on it.
   * @param {Link} link @param {Session} session @param {string} sdp */
  async #answerRestart(link, session, sdp) {
    const pc = session.pc;
    if (pc.signalingState === "have-local-offer") {
      // Both restarted at once: the smaller wallet's offer wins, as for a first offer.
      if (this.wallet < link.remote) return;
      await pc.setLocalDescription({ type: "rollback" });
      session.restarting = false;
    }
    session.remoteSet = false; // its new candidates wait for the offer to be applied
    const iceServers = await this.#currentIce();
    pc.setConfiguration({ ...pc.getConfiguration(), iceServers });
    await pc.setRemoteDescription({ type: "offer", sdp: stripRestartCap(sdp) });
    await this.#flushRemoteCandidates(session);
    await pc.setLocalDescription(await pc.createAnswer());
    const local = /** @type {RTCSessionDescription} */ (pc.localDescription);
    await this.#signal("rtc:answer", {
      convId: convId(this.wallet, link.remote),
      to: link.remote,
      sdp: { type: "answer", sdp: withRestartCap(local.sdp) },
      signalId: newId("answer"),
    });
    session.iceGeneration = this.iceFetches;
    this.#emit("iceRestart", { peer: link.remote, generation: session.iceGeneration });
  }

  /** ICE for a new peer connection: fetched again when the refresh is due. */
  async #currentIce() {
    if (this.ice && Date.now() < this.ice.refreshAt) return this.#iceServers;
    try {
      await this.refreshIce();
    } catch (err) {
      // Due but not expired: the current credentials still allocate.
      if (!this.ice || Date.now() >= this.ice.fetchedAt + this.ice.ttl * 1000) throw err;
      this.logger?.warn("rtc-sdk: ICE fetch failed; using the current one", { error: errorCode(err) });
    }
    return this.#iceServers;
  }

  /** @param {Transport} transport @param {string | null} candidateType @param {boolean} forced */
  async postTelemetry(transport, candidateType, forced) {
    /** @type {{transport: Transport, candidateType?: string, forced: boolean}} */
    const body = { transport, forced };
    if (candidateType && CANDIDATE_TYPES.has(candidateType)) body.candidateType = candidateType;
    try {
      const { status } = await this.#request("POST", "/api/v1/rtc/telemetry", body);
      if (status === 204) this.telemetrySent.push(body);
      else this.logger?.warn("rtc-sdk: telemetry refused", { status });
    } catch (err) {
      this.logger?.warn("rtc-sdk: telemetry not sent", { error: errorCode(err) });
    }
  }

  /** One enqueue attempt: {status (0: no answer), data, retryAfterMs}.
   * @param {string} to @param {string} messageId @param {string} payload @param {boolean} force */
  async relayEnqueueOnce(to, messageId, payload, force) {
    to = normalizeWallet(to);
    const body = { to, convId: convId(this.wallet, to), messageId, payload, force };
    try {
      return await this.#request("POST", "/api/v1/relay/enqueue", body);
    } catch {
      return { status: 0, data: null, retryAfterMs: 0 };
    }
  }

  /** POST /api/v1/relay/enqueue (idempotent by messageId), retried on 429/5xx/network.
   * @param {string} to @param {string} messageId @param {string} payload @param {boolean} force */
  async relayEnqueue(to, messageId, payload, force) {
    to = normalizeWallet(to);
    const body = { to, convId: convId(this.wallet, to), messageId, payload, force };
    let wait = 250;
    for (let attempt = 0; ; attempt++) {
      let status = 0;
      let data = null;
      try {
        ({ status, data } = await this.#request("POST", "/api/v1/relay/enqueue", body));
      } catch {
        status = 0;
      }
      if ((status === 200 || status === 202) && data) return data;
      if (!RETRYABLE_STATUS.has(status) || attempt === 3) throw RtcClient.#error(status, data, "relay enqueue");
      await delay(wait);
      wait *= 2;
    }
  }

  /** Pull the relay queue until it is empty; resolves with how many new messages arrived. */
  async pull() {
    let delivered = 0;
    for (;;) {
      const { status, data } = await this.#request("GET", "/api/v1/relay/pull?limit=100");
      if (status !== 200 || !data) throw RtcClient.#error(status, data, "relay pull");
      const messages = Array.isArray(data.messages) ? data.messages : [];
      const ids = [];
      for (const message of messages) {
        if (this.#acceptRelay(message)) delivered += 1;
        if (typeof message?.id === "string") ids.push(message.id);
      }
      if (ids.length) await this.#relayAck(ids);
      if (!data.more || messages.length === 0) return delivered;
    }
  }

  /** @param {string[]} ids */
  async #relayAck(ids) {
    const { status, data } = await this.#request("POST", "/api/v1/relay/ack", { ids });
    if (status !== 200) throw RtcClient.#error(status, data, "relay ack");
  }

  // -- Socket.IO ---------------------------------------------------------------------------------

  #connectSocket() {
    const socket = this.io(this.baseUrl, {
      path: "/socket.io/",
      transports: this.transports,
      withCredentials: this.authMode === "cookie",
      reconnectionDelayMax: 5000,
      auth: (/** @type {(a: object) => void} */ cb) =>
        cb(this.authMode === "bearer" ? { token: this.#token, rtc: this.rtc } : { rtc: this.rtc }),
    });
    this.#socket = socket;
    /** @param {string} event @param {(data: any) => unknown} handler */
    const on = (event, handler) =>
      socket.on(event, async (/** @type {any} */ data) => {
        if (this.#closed) return;
        try {
          await handler(data);
        } catch (err) {
          this.logger?.warn("rtc-sdk: handler failed", { event, error: errorCode(err) });
        }
      });
    on("rtc:offer", (d) => this.#onOffer(d));
    on("rtc:answer", (d) => this.#onAnswer(d));
    on("rtc:candidate", (d) => this.#onCandidate(d));
    on("relay:message", (d) => this.#onRelayMessage(d));
    on("presence:snapshot", (d) => this.#onSnapshot(d));
    on("presence:update", (d) => this.#onPresence(d));
    on("rtc:error", (d) => this.logger?.warn("rtc-sdk: rtc:error", { error: d?.error, event: d?.event }));
    on("session:end", (d) => {
      const reason = typeof d?.reason === "string" && d.reason ? d.reason : "ended";
      if (this.#canRenew(reason)) {
        // The server closes this socket: connect again once the fresh token is here.
        this.#renewThen(() => {
          socket.disconnect();
          socket.connect();
        }, reason);
      } else {
        this.#endSession(reason);
      }
    });
    socket.on("disconnect", (/** @type {string} */ reason) => this.#emit("connection", { connected: false, error: reason }));
    return new Promise((resolve, reject) => {
      let first = true;
      socket.on("connect", () => {
        this.#renewed = false;
        this.#emit("connection", { connected: true });
        this.outbox.kick(); // what could not be sent while we were away
        // Every (re)connect: what the relay kept while we were away.
        this.pull().catch((err) => this.logger?.warn("rtc-sdk: relay pull failed", { error: errorCode(err) }));
        if (first) {
          first = false;
          resolve(undefined);
        }
      });
      socket.on("connect_error", (/** @type {any} */ err) => {
        const refused = typeof err?.data?.error === "string" ? err.data.error : null;
        const code = refused ?? "signal_connect_failed";
        this.#emit("connection", { connected: false, error: code });
        if (refused && this.#canRenew(refused)) {
          // A fresh token, then the same socket connects again with it (auth is read each time).
          this.#renewThen(() => socket.connect(), refused);
          return;
        }
        if (first && (refused || !socket.active)) {
          first = false;
          socket.disconnect();
          reject(new RtcError(code, "signaling refused the connection"));
        }
        // The server's refusal (unauthorized, too_many_connections, ...) would come again at every
        // retry with this token; a network error has no `data` and the manager retries it.
        if (refused) this.#endSession(refused);
      });
    });
  }

  /** Whether a fresh token may cure this refusal (once in a row). @param {string} reason */
  #canRenew(reason) {
    return Boolean(this.tokenProvider) && !this.#renewed && !this.#closed &&
      (reason === "token_expired" || reason === "unauthorized");
  }

  /** @param {() => void} then @param {string} reason */
  #renewThen(then, reason) {
    this.#renewed = true;
    this.#renewToken().then(then, (err) => {
      this.logger?.warn("rtc-sdk: token provider failed", { error: errorCode(err) });
      this.#endSession(reason);
    });
  }

  /** Final until a new client signs in: the socket and peer connections close, the app is told
   * once. @param {string} reason */
  #endSession(reason) {
    if (this.#endReason !== null || this.#closed) return;
    this.#endReason = reason;
    if (this.#refreshTimer !== null) clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    for (const link of this.links.values()) this.#closeLink(link, "session_ended");
    // Also stops a manager that is between reconnection attempts.
    this.#socket?.disconnect();
    this.logger?.warn("rtc-sdk: session ended", { reason });
    this.#emit("sessionEnded", { reason });
  }

  /** @param {string} event @param {object} body @returns {Promise<any>} */
  async #signal(event, body) {
    try {
      const ack = await this.#socket.timeout(this.signalTimeoutMs).emitWithAck(event, body);
      return ack && typeof ack === "object" ? ack : { ok: false, error: "bad_ack" };
    } catch {
      return { ok: false, error: "signal_timeout" };
    }
  }

  /** @param {any} data */
  #onSnapshot(data) {
    for (const wallet of Array.isArray(data?.online) ? data.online : []) {
      if (typeof wallet === "string") this.#setPresence(normalizeWallet(wallet), true, null);
    }
  }

  /** @param {any} data */
  #onPresence(data) {
    if (typeof data?.wallet !== "string" || typeof data.online !== "boolean") return;
    const wallet = normalizeWallet(data.wallet);
    this.#setPresence(wallet, data.online, typeof data.at === "string" ? data.at : null);
    const link = this.links.get(wallet);
    if (!data.online && link) this.#closeLink(link, "peer_offline");
  }

  /** @param {string} wallet @param {boolean} online @param {string | null} at */
  #setPresence(wallet, online, at) {
    const entry = { wallet, online, at };
    this.presence.set(wallet, entry);
    this.#emit("presence", entry);
  }

  // -- peer connections --------------------------------------------------------------------------

  /** @param {string} remote */
  #link(remote) {
    let link = this.links.get(remote);
    if (!link) {
      link = new Link(remote);
      this.links.set(remote, link);
    }
    return link;
  }

  /** @param {Link} link @param {RTCIceServer[]} iceServers @param {boolean} initiator */
  #newSession(link, iceServers, initiator) {
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: this.iceTransportPolicy });
    const session = new Session(pc, initiator, this.iceFetches);
    link.sessionsMade += 1;
    pc.onicecandidate = (event) => {
      if (!event.candidate || !event.candidate.candidate) return; // end of candidates
      const init = event.candidate.toJSON();
      if (session.signalled) this.#sendCandidate(link, session, init);
      else session.pendingLocal.push(init);
    };
    pc.ondatachannel = (event) => {
      if (event.channel.label === CHANNEL_LABEL) this.#wireChannel(link, session, event.channel);
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed" || pc.connectionState === "closed") {
        this.#sessionDown(link, session, `connection_${pc.connectionState}`);
      }
    };
    return session;
  }

  /** @param {Link} link @param {Session} session @param {RTCIceCandidateInit} init */
  #sendCandidate(link, session, init) {
    if (this.#blocked || session.closed) return;
    const candidate = {
      candidate: init.candidate,
      sdpMid: init.sdpMid ?? null,
      sdpMLineIndex: init.sdpMLineIndex ?? null,
      ...(init.usernameFragment ? { usernameFragment: init.usernameFragment } : {}),
    };
    this.#signal("rtc:candidate", {
      convId: convId(this.wallet, link.remote),
      to: link.remote,
      candidate,
      signalId: newId("cand"),
    }).then((ack) => {
      if (!ack.ok) this.logger?.info("rtc-sdk: candidate refused", { error: ack.error });
    });
  }

  /** Our SDP went out: the candidates gathered meanwhile follow it. @param {Link} link @param {Session} session */
  #signalled(link, session) {
    session.signalled = true;
    const pending = session.pendingLocal;
    session.pendingLocal = [];
    for (const init of pending) this.#sendCandidate(link, session, init);
  }

  /** @param {Link} link @param {Session} session @param {RTCDataChannel} channel */
  #wireChannel(link, session, channel) {
    session.channel = channel;
    channel.onmessage = (event) => {
      if (!this.#blocked && !session.closed) this.#onFrame(link, session, event.data);
    };
    channel.onclose = () => this.#sessionDown(link, session, "channel_closed");
    const onOpen = () => {
      if (session.closed) return;
      if (link.negotiating === session || !link.active) {
        const old = link.active;
        link.active = session;
        if (link.negotiating === session) link.negotiating = null;
        link.failure = null;
        if (old && old !== session) this.#closeSession(old);
        link.notify();
        selectedCandidatePair(session.pc).then((pair) => {
          link.pair = pair;
          this.logger?.info("rtc-sdk: data channel open", { peer: link.remote, local: pair?.local, remote: pair?.remote });
          this.#emit("pair", { peer: link.remote, pair });
        });
      }
    };
    if (channel.readyState === "open") onOpen();
    else channel.onopen = onOpen;
  }

  /** @param {Link} link @param {Session} session @param {string} reason */
  #sessionDown(link, session, reason) {
    let changed = false;
    if (link.active === session) {
      link.active = null;
      link.pair = null;
      changed = true;
      this.#emit("pair", { peer: link.remote, pair: null });
    }
    if (link.negotiating === session) {
      link.negotiating = null;
      link.failure = reason;
      changed = true;
    }
    if (changed) link.notify();
    this.#closeSession(session);
  }

  /** @param {Session} session */
  #closeSession(session) {
    if (session.closed) return;
    session.closed = true;
    try {
      session.pc.close();
    } catch {
      /* already closed */
    }
  }

  /** @param {Link} link @param {string} reason */
  #closeLink(link, reason) {
    const sessions = [link.active, link.negotiating].filter((s) => s !== null);
    const hadActive = link.active !== null;
    link.active = link.negotiating = null;
    link.failure = reason;
    link.pair = null;
    link.notify();
    for (const session of sessions) this.#closeSession(/** @type {Session} */ (session));
    if (hadActive) this.#emit("pair", { peer: link.remote, pair: null });
  }

  /** @param {Link} link */
  #startNegotiation(link) {
    if (link.negotiationRunning) return;
    link.failure = null;
    link.negotiationRunning = true;
    this.#negotiate(link).finally(() => {
      link.negotiationRunning = false;
      link.notify();
    });
  }

  /** Offer a new peer connection to `link.remote` and wait for its channel. @param {Link} link */
  async #negotiate(link) {
    /** @type {Session | null} */
    let session = null;
    try {
      const iceServers = await this.#currentIce();
      session = this.#newSession(link, iceServers, true);
      const previous = link.negotiating;
      link.negotiating = session;
      if (previous) this.#closeSession(previous);
      this.#wireChannel(link, session, session.pc.createDataChannel(CHANNEL_LABEL, { ordered: true }));
      await session.pc.setLocalDescription(await session.pc.createOffer());
      const local = /** @type {RTCSessionDescription} */ (session.pc.localDescription);
      const acked = this.#signal("rtc:offer", {
        convId: convId(this.wallet, link.remote),
        to: link.remote,
        sdp: { type: "offer", sdp: withRestartCap(local.sdp) },
        signalId: newId("offer"),
      });
      this.#signalled(link, session);
      const ack = await acked;
      if (!ack.ok) throw new RtcError(String(ack.error ?? "refused"), "offer refused");
      const deadline = Date.now() + this.negotiationTimeoutMs;
      while (!session.open && !session.closed) {
        const remaining = deadline - Date.now();
        if (remaining <= 0) throw new RtcError("negotiation_timeout", "no data channel in time");
        await link.changed(remaining);
      }
    } catch (err) {
      const code = errorCode(err);
      this.logger?.info("rtc-sdk: negotiation failed", { peer: link.remote, error: code });
      if (session) this.#failNegotiation(link, session, code);
      else {
        link.failure = code;
        link.notify();
      }
    }
  }

  /** @param {Link} link @param {Session} session @param {string} code */
  #failNegotiation(link, session, code) {
    if (link.negotiating === session) link.negotiating = null;
    if (link.active !== session) {
      link.failure = code;
      link.notify();
      this.#closeSession(session);
    }
  }

  /** @param {any} data */
  async #onOffer(data) {
    if (this.#blocked || !this.rtc || !data || typeof data !== "object") return;
    const remote = normalizeWallet(String(data.from ?? ""));
    const sdp = data.sdp;
    if (!remote || !sdp || typeof sdp.sdp !== "string") return;
    const link = this.#link(remote);
    const active = link.active;
    if (active && active.open && fingerprint(active.pc.remoteDescription?.sdp) === fingerprint(sdp.sdp)) {
      // The same peer connection (same DTLS fingerprint): an ICE restart, answered on it.
      await this.#answerRestart(link, active, sdp.sdp);
      return;
    }
    const pending = link.negotiating;
    if (pending && pending.initiator && !pending.remoteSet) {
      if (this.wallet < remote) return; // glare: our offer wins, they answer it
      this.#closeSession(pending);
      link.negotiating = null;
      link.notify();
    }
    const iceServers = await this.#currentIce();
    const session = this.#newSession(link, iceServers, false);
    const previous = link.negotiating;
    link.negotiating = session;
    if (previous && previous !== session) this.#closeSession(previous);
    session.restartable = sdp.sdp.includes(RESTART_CAP);
    await session.pc.setRemoteDescription({ type: "offer", sdp: stripRestartCap(sdp.sdp) });
    await this.#flushRemoteCandidates(session);
    await session.pc.setLocalDescription(await session.pc.createAnswer());
    const local = /** @type {RTCSessionDescription} */ (session.pc.localDescription);
    const acked = this.#signal("rtc:answer", {
      convId: convId(this.wallet, remote),
      to: remote,
      sdp: { type: "answer", sdp: withRestartCap(local.sdp) },
      signalId: newId("answer"),
    });
    this.#signalled(link, session);
    const ack = await acked;
    if (!ack.ok) {
      this.#failNegotiation(link, session, String(ack.error ?? "refused"));
      return;
    }
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      if (link.negotiating === session && !session.open) this.#failNegotiation(link, session, "negotiation_timeout");
    }, this.negotiationTimeoutMs);
    this.#timers.add(timer);
  }

  /** @param {any} data */
  async #onAnswer(data) {
    const link = this.links.get(normalizeWallet(String(data?.from ?? "")));
    const sdp = data?.sdp;
    if (!link || !sdp || typeof sdp.sdp !== "string") return;
    const restarted = link.active && link.active.restarting ? link.active : null;
    const session = restarted ?? link.negotiating;
    if (!session || (!session.initiator && !restarted) || session.remoteSet) return;
    if (session.pc.signalingState !== "have-local-offer") return;
    session.remoteSet = true;
    session.restartable = sdp.sdp.includes(RESTART_CAP);
    await session.pc.setRemoteDescription({ type: "answer", sdp: stripRestartCap(sdp.sdp) });
    await this.#flushRemoteCandidates(session);
    if (restarted) {
      session.restarting = false;
      link.notify();
    }
  }

  /** @param {any} data */
  async #onCandidate(data) {
    if (this.#blocked) return;
    const link = this.links.get(normalizeWallet(String(data?.from ?? "")));
    const body = data?.candidate;
    if (!link || !body || typeof body.candidate !== "string" || !body.candidate.trim()) return;
    /** @type {RTCIceCandidateInit} */
    const init = {
      candidate: body.candidate,
      sdpMid: typeof body.sdpMid === "string" ? body.sdpMid : null,
      sdpMLineIndex: typeof body.sdpMLineIndex === "number" ? body.sdpMLineIndex : null,
    };
    if (init.sdpMid === null && init.sdpMLineIndex === null) init.sdpMLineIndex = 0;
    if (typeof body.usernameFragment === "string") init.usernameFragment = body.usernameFragment;
    const session = link.negotiating ?? link.active;
    if (!session) return;
    if (!session.remoteSet) session.early.push(init);
    else await addCandidate(session, init, this.logger);
  }

  /** @param {Session} session */
  async #flushRemoteCandidates(session) {
    session.remoteSet = true;
    const queued = session.early;
    session.early = [];
    for (const init of queued) await addCandidate(session, init, this.logger);
  }

  /** An open session towards `remote` by `deadline` (Date.now() ms), negotiating if needed.
   * @param {string} remote @param {number} deadline @returns {Promise<Session | null>} */
  async #openSession(remote, deadline) {
    const link = this.#link(remote);
    if (link.active && link.active.open) return link.active;
    if (!link.negotiationRunning && !link.negotiating) this.#startNegotiation(link);
    for (;;) {
      if (link.active && link.active.open) return link.active;
      if (link.failure !== null && !link.negotiating && !link.negotiationRunning) return null;
      const remaining = deadline - Date.now();
      if (remaining <= 0) return null;
      await link.changed(remaining);
    }
  }

  // -- messages ----------------------------------------------------------------------------------

  /**
   * Store the message in the outbox and resolve at once with it (state `queued`); it is sent in
   * order after this conversation's earlier messages (`messageState` events follow it). A
   * messageId already in the outbox is not queued twice.
   * @param {string} to @param {string} payload @param {{messageId?: string}} [options]
   * @returns {Promise<import("./rtc-outbox.js").OutgoingMessage>}
   */
  enqueue(to, payload, options = {}) {
    to = normalizeWallet(to);
    return this.outbox.add({
      messageId: options.messageId ?? newId("m"), to, convId: convId(this.wallet, to), payload,
      state: "queued", transport: null, error: null, attempts: 0, updatedAt: Date.now(),
    });
  }

  /**
   * `enqueue()`, then wait until the message is accepted: over the data channel (ACK window x
   * tries), else by relay-service with `force: true`, retried through outages. Rejects with
   * RtcError(code) when it is refused for good (400, 403, 413, ...).
   * @param {string} to @param {string} payload @param {{messageId?: string}} [options]
   * @returns {Promise<Delivery>}
   */
  async send(to, payload, options = {}) {
    if (this.#closed) throw new RtcError("closed", "the client was closed");
    const messageId = options.messageId ?? newId("m");
    // Registered before the message is stored: it cannot settle unseen.
    const settled = this.outbox.settled(messageId);
    const message = await this.enqueue(to, payload, { messageId });
    const now = (await this.outbox.store.get(messageId)) ?? message;
    if (now.state !== "queued") this.outbox.resolveSettled(now);
    const outcome = await settled;
    if (outcome.kind === "sent") return outcome.delivery;
    if (outcome.kind === "failed") throw new RtcError(outcome.code, "relay enqueue refused", outcome.status ?? null);
    throw new RtcError("failed", "not sent");
  }

  /** The outbox: queued messages and the last settled ones, in send order. */
  messages() {
    return this.outbox.store.all();
  }

  /**
   * One try of one message: the data channel, then the relay (rtc-outbox.js's table).
   * @param {import("./rtc-outbox.js").OutgoingMessage} message
   * @returns {Promise<import("./rtc-outbox.js").Outcome>}
   */
  async #attempt(message) {
    const { to, messageId, payload } = message;
    let tries = 0;
    if (this.rtc && this.connected && !this.#closed && this.#endReason === null) {
      const rtc = await this.#sendRtc(to, messageId, payload);
      tries = rtc.tries;
      if (rtc.delivery) {
        this.#report(rtc.delivery);
        return { kind: "sent", delivery: rtc.delivery };
      }
    }
    const forced = tries > 0;
    const { status, data, retryAfterMs } = await this.relayEnqueueOnce(to, messageId, payload, forced);
    if ((status === 200 || status === 202) && data) {
      /** @type {Delivery} */
      const delivery = {
        to, messageId, transport: "relay", forced: Boolean(data.forced ?? forced), rtcTries: tries,
        candidatePair: null, relayId: data.id == null ? null : String(data.id),
        duplicate: Boolean(data.duplicate),
      };
      this.#report(delivery);
      return { kind: "sent", delivery };
    }
    const code = data && typeof data.error === "string" ? data.error : status ? `http_${status}` : "network";
    if (status === 401 && this.tokenProvider) return { kind: "retry", reason: code };
    if (OUTBOX_RETRY_STATUS.has(status)) return { kind: "retry", reason: code, retryAfterMs };
    return { kind: "failed", code, status };
  }

  /**
   * The data channel tries of one message.
   * @param {string} to @param {string} messageId @param {string} payload
   * @returns {Promise<{tries: number, delivery: Delivery | null}>}
   */
  async #sendRtc(to, messageId, payload) {
    /** @type {() => void} */
    let resolveAck = () => {};
    const promise = new Promise((resolve) => {
      resolveAck = () => resolve(undefined);
    });
    this.#acks.set(messageId, { resolve: resolveAck, promise });
    let tries = 0;
    try {
      const frame = encodeMsg(messageId, payload);
      for (let i = 0; i < this.rtcTries; i++) {
        tries += 1;
        const deadline = Date.now() + this.ackWindowMs;
        const session = await this.#openSession(to, deadline);
        if (!session || !session.channel) continue;
        if (!this.#blocked) {
          try {
            session.channel.send(frame);
          } catch (err) {
            this.logger?.info("rtc-sdk: data channel send failed", { error: errorCode(err) });
            continue;
          }
        }
        let timer;
        const acked = await Promise.race([
          promise.then(() => true),
          new Promise((resolve) => {
            timer = setTimeout(() => resolve(false), Math.max(0, deadline - Date.now()));
          }),
        ]);
        clearTimeout(timer);
        if (!acked) continue;
        const pair = await selectedCandidatePair(session.pc);
        return {
          tries,
          delivery: {
            to, messageId, transport: "rtc", forced: false, rtcTries: tries,
            candidatePair: pair, relayId: null, duplicate: false,
          },
        };
      }
    } finally {
      this.#acks.delete(messageId);
    }
    return { tries, delivery: null };
  }

  /** @param {Delivery} delivery */
  #report(delivery) {
    if (this.telemetry) {
      this.postTelemetry(delivery.transport, delivery.candidatePair?.local ?? null, delivery.forced);
    }
    this.#emit("delivery", delivery);
  }

  /** @param {Link} link @param {Session} session @param {unknown} data */
  #onFrame(link, session, data) {
    const frame = decodeFrame(data);
    if (!frame) return;
    if (frame.t === "ack") {
      this.#acks.get(frame.messageId)?.resolve();
      return;
    }
    this.#deliver({
      sender: link.remote,
      convId: convId(this.wallet, link.remote),
      messageId: frame.messageId,
      payload: frame.payload,
      transport: "rtc",
      forced: false,
      sentAt: frame.sentAt,
      relayId: null,
    });
    const ack = encodeAck(frame.messageId);
    for (const candidate of [session, link.active]) {
      if (candidate && candidate.open && candidate.channel) {
        try {
          candidate.channel.send(ack);
          return;
        } catch {
          /* try the other one */
        }
      }
    }
  }

  /** @param {any} data */
  async #onRelayMessage(data) {
    if (!data || typeof data !== "object") return;
    this.#acceptRelay(data);
    if (typeof data.id === "string") {
      await this.#relayAck([data.id]).catch((err) =>
        this.logger?.warn("rtc-sdk: relay ack failed", { error: errorCode(err) }),
      );
    }
  }

  /** @param {any} data */
  #acceptRelay(data) {
    const { from, messageId, payload } = data ?? {};
    if (typeof from !== "string" || typeof messageId !== "string" || typeof payload !== "string") return false;
    return this.#deliver({
      sender: normalizeWallet(from),
      convId: typeof data.convId === "string" ? data.convId : convId(this.wallet, from),
      messageId,
      payload,
      transport: "relay",
      forced: Boolean(data.forced),
      sentAt: typeof data.queuedAt === "string" ? data.queuedAt : null,
      relayId: typeof data.id === "string" ? data.id : null,
    });
  }

  /** To the app once per sender + messageId, whichever transport brought it first.
   * @param {IncomingMessage} message */
  #deliver(message) {
    const key = `${message.sender}\n${message.messageId}`;
    if (this.#seen.has(key)) return false;
    this.#seen.set(key, true);
    if (this.#seen.size > 10000) this.#seen.delete(/** @type {string} */ (this.#seen.keys().next().value));
    this.#emit("message", message);
    return true;
  }

  /** @param {string} type @param {unknown} detail */
  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** @param {Session} session @param {RTCIceCandidateInit} init @param {Logger | null} logger */
async function addCandidate(session, init, logger) {
  try {
    await session.pc.addIceCandidate(init);
  } catch (err) {
    logger?.info("rtc-sdk: candidate not added", { error: errorCode(err) });
  }
}

/** A short, secret-free description of an error. @param {unknown} err */
function errorCode(err) {
  if (err instanceof RtcError) return err.code;
  if (err instanceof Error) return err.name;
  return "error";
}
