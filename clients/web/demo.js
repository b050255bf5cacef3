// @ts-check
// The demo page: sign in with a token, contacts and presence, chat over RTC with the relay as
// fallback. Every message shows its transport, or that it is queued in the outbox and how many
// attempts it took (messages queued before a reload show up again and are sent); the sidebar shows
// the selected candidate pair, the ICE expiry and the outbox, and toggles force TURN relay or
// simulate a failed peer path.
import { RtcClient, normalizeWallet, walletFromToken } from "./rtc-sdk.js";

/** @param {string} id */
const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
const input = (/** @type {string} */ id) => /** @type {HTMLInputElement} */ ($(id));

/** @type {RtcClient | null} */
let client = null;
/** @type {string | null} */
let selected = null;
/** @type {Map<string, {online: boolean | null}>} */
const contacts = new Map();
/** @type {Map<string, HTMLElement[]>} conversation rows per peer */
const conversations = new Map();
/** @type {Map<string, import("./rtc-sdk.js").CandidatePair | null>} */
const pairs = new Map();
/** @type {Map<string, HTMLElement>} outgoing rows by messageId */
const outgoing = new Map();
/** @type {Set<string>} messageIds queued in the outbox */
const queued = new Set();

/** @param {string} text */
function log(text) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("log").prepend(li);
  while ($("log").children.length > 60) $("log").lastElementChild?.remove();
}

/** @param {import("./rtc-sdk.js").CandidatePair | null | undefined} pair */
function pairText(pair) {
  return pair && pair.local ? `${pair.local} ↔ ${pair.remote ?? "?"}` : "—";
}

function renderPair() {
  const pair = selected ? pairs.get(selected) ?? null : null;
  const el = $("pair-type");
  el.textContent = pair ? pairText(pair) : client?.peerPathBlocked ? "— (peer path blocked)" : "— (no peer connection)";
  el.dataset.local = pair?.local ?? "";
  el.dataset.remote = pair?.remote ?? "";
}

function renderContacts() {
  const list = $("contacts");
  list.replaceChildren();
  for (const [wallet, { online }] of [...contacts].sort()) {
    const li = document.createElement("li");
    li.dataset.wallet = wallet;
    li.dataset.online = String(online === true);
    li.classList.toggle("selected", wallet === selected);
    const name = document.createElement("span");
    name.textContent = wallet;
    const state = document.createElement("span");
    state.className = "presence";
    state.textContent = online === null ? "unknown" : online ? "online" : "offline";
    li.append(name, state);
    li.addEventListener("click", () => select(wallet));
    list.append(li);
  }
}

/** @param {string} wallet */
function select(wallet) {
  selected = wallet;
  if (!contacts.has(wallet)) contacts.set(wallet, { online: null });
  $("chat-title").textContent = `Chat with ${wallet}`;
  input("compose-text").disabled = false;
  /** @type {HTMLButtonElement} */ ($("send")).disabled = false;
  $("messages").replaceChildren(...(conversations.get(wallet) ?? []));
  renderContacts();
  renderPair();
}

/**
 * @param {string} peer @param {"in" | "out"} direction @param {string} text @param {string} messageId
 * @returns {HTMLElement}
 */
function addRow(peer, direction, text, messageId) {
  const row = document.createElement("li");
  row.className = "msg";
  row.dataset.direction = direction;
  row.dataset.messageId = messageId;
  row.dataset.transport = "pending";
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  const meta = document.createElement("div");
  meta.className = "meta";
  const transport = document.createElement("span");
  transport.className = "transport";
  transport.textContent = "sending…";
  const detail = document.createElement("span");
  detail.className = "detail";
  const time = document.createElement("span");
  time.textContent = new Date().toLocaleTimeString();
  meta.append(transport, detail, time);
  row.append(body, meta);
  const rows = conversations.get(peer) ?? [];
  rows.push(row);
  conversations.set(peer, rows);
  if (!selected) select(peer);
  if (peer === selected) {
    $("messages").append(row);
    row.scrollIntoView({ block: "end" });
  }
  return row;
}

/**
 * @param {HTMLElement} row @param {"rtc" | "relay" | "failed"} transport @param {boolean} forced
 * @param {import("./rtc-sdk.js").CandidatePair | null} pair
 */
function markTransport(row, transport, forced, pair) {
  row.dataset.transport = transport;
  row.dataset.state = transport === "failed" ? "failed" : "sent";
  row.dataset.forced = String(forced);
  /** @type {HTMLElement} */ (row.querySelector(".transport")).textContent =
    transport === "rtc" ? "RTC" : transport === "relay" ? "Relay" : "failed";
  /** @type {HTMLElement} */ (row.querySelector(".detail")).textContent =
    transport === "rtc" ? `pair ${pairText(pair)}` : transport === "relay" && forced ? "forced (RTC failed)" : "";
}

/** @param {import("./rtc-outbox.js").OutgoingMessage} m */
function markState(m) {
  let row = outgoing.get(m.messageId);
  if (!row) {
    // Queued by an earlier page (a reload): shown again in its conversation.
    if (!contacts.has(m.to)) contacts.set(m.to, { online: null });
    row = addRow(m.to, "out", m.payload, m.messageId);
    outgoing.set(m.messageId, row);
    renderContacts();
  }
  if (m.state === "queued") {
    queued.add(m.messageId);
    row.dataset.state = "queued";
    row.dataset.attempts = String(m.attempts);
    /** @type {HTMLElement} */ (row.querySelector(".transport")).textContent = "queued";
    /** @type {HTMLElement} */ (row.querySelector(".detail")).textContent =
      m.attempts > 0 ? `retry ${m.attempts}${m.error ? ` (${m.error})` : ""}` : "in the outbox";
  } else {
    queued.delete(m.messageId);
    if (m.state === "failed") {
      markTransport(row, "failed", false, null);
      /** @type {HTMLElement} */ (row.querySelector(".detail")).textContent = m.error ?? "";
    }
  }
  $("outbox").textContent = queued.size ? `${queued.size} queued` : "empty";
  $("outbox").dataset.queued = String(queued.size);
}

function renderIce() {
  const ice = client?.ice;
  if (!ice) return;
  const left = (/** @type {number} */ ms) => {
    const s = Math.max(0, Math.round(ms / 1000));
    return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  };
  const expires = Date.parse(ice.expiresAt);
  $("ice-provider").textContent = `${ice.provider} (ttl ${ice.ttl} s)`;
  $("ice-expiry").textContent = Number.isNaN(expires)
    ? ice.expiresAt
    : `${new Date(expires).toLocaleTimeString()} (in ${left(expires - Date.now())})`;
  $("ice-expiry").dataset.expiresAt = ice.expiresAt;
  $("ice-refresh").textContent = `in ${left(ice.refreshAt - Date.now())} (fetch #${ice.fetches})`;
}

/**
 * A token (Bearer), or null: the site's JWT cookie with the CSRF double-submit header.
 * @param {string | null} token @param {string | null} [cookieWallet]
 */
async function signIn(token, cookieWallet = null) {
  const wallet = token ? walletFromToken(token) : cookieWallet;
  if (!wallet) throw new Error(token ? "this token has no wallet claim" : "give your wallet");
  const policy = input("force-relay").checked ? "relay" : "all";
  const me = token
    ? new RtcClient({ baseUrl: location.origin, token, iceTransportPolicy: policy })
    : new RtcClient({ baseUrl: location.origin, auth: "cookie", wallet, iceTransportPolicy: policy });
  me.addEventListener("connection", (e) => {
    const { connected, error } = /** @type {CustomEvent} */ (e).detail;
    if (me.sessionEndReason !== null) return; // the "session ended" status stays
    $("conn-status").textContent = connected ? "online" : `offline${error ? ` (${error})` : ""}`;
    $("conn-status").dataset.state = connected ? "online" : "offline";
    log(connected ? "signaling connected" : `signaling disconnected${error ? `: ${error}` : ""}`);
  });
  me.addEventListener("sessionEnded", (e) => {
    const { reason } = /** @type {CustomEvent} */ (e).detail;
    $("conn-status").textContent = `session ended (${reason}): sign in again with a new token`;
    $("conn-status").dataset.state = "ended";
    log(`session ended by the server: ${reason}`);
  });
  me.addEventListener("presence", (e) => {
    const { wallet: who, online } = /** @type {CustomEvent} */ (e).detail;
    contacts.set(who, { online });
    log(`${who} is ${online ? "online" : "offline"}`);
    renderContacts();
  });
  me.addEventListener("ice", (e) => {
    const { provider, ttl, fetches } = /** @type {CustomEvent} */ (e).detail;
    log(`ICE #${fetches} from ${provider}, ttl ${ttl} s`);
    renderIce();
  });
  me.addEventListener("iceRestart", (e) => {
    const { peer, generation } = /** @type {CustomEvent} */ (e).detail;
    log(`ICE restarted with ${peer} on ICE #${generation} (same connection)`);
  });
  me.addEventListener("pair", (e) => {
    const { peer, pair } = /** @type {CustomEvent} */ (e).detail;
    pairs.set(peer, pair);
    if (pair) log(`peer connection with ${peer}: ${pairText(pair)}`);
    renderPair();
  });
  me.addEventListener("messageState", (e) => {
    const m = /** @type {CustomEvent<import("./rtc-outbox.js").OutgoingMessage>} */ (e).detail;
    markState(m);
    if (m.state === "failed") log(`send failed: ${m.error}`);
  });
  me.addEventListener("delivery", (e) => {
    const delivery = /** @type {CustomEvent<import("./rtc-sdk.js").Delivery>} */ (e).detail;
    const row = outgoing.get(delivery.messageId);
    if (!row) return;
    if (delivery.candidatePair) pairs.set(delivery.to, delivery.candidatePair);
    markTransport(row, delivery.transport, delivery.forced, delivery.candidatePair);
    log(`sent ${delivery.messageId.slice(0, 10)}… over ${delivery.transport.toUpperCase()}` +
      (delivery.forced ? " (forced)" : "") + ` after ${delivery.rtcTries} RTC tries`);
    renderPair();
  });
  me.addEventListener("message", (e) => {
    const m = /** @type {CustomEvent<import("./rtc-sdk.js").IncomingMessage>} */ (e).detail;
    if (!contacts.has(m.sender)) contacts.set(m.sender, { online: null });
    const row = addRow(m.sender, "in", m.payload, m.messageId);
    markTransport(row, m.transport, m.forced, m.transport === "rtc" ? pairs.get(m.sender) ?? null : null);
    if (m.transport === "rtc") {
      // The pair event may come after the first frame: read the selected pair now.
      me.selectedPair(m.sender).then((pair) => {
        if (pair) markTransport(row, "rtc", false, pair);
      });
    }
    renderContacts();
  });
  $("signin-error").textContent = "";
  $("me").textContent = wallet;
  // What an earlier page left in the outbox: shown now, sent once started.
  for (const m of await me.messages()) if (m.state === "queued") markState(m);
  await me.start();
  return me;
}

/** @param {string | null} token @param {string | null} cookieWallet */
async function start(token, cookieWallet) {
  /** @type {HTMLButtonElement} */ ($("signin-button")).disabled = true;
  try {
    client = await signIn(token, cookieWallet);
    // For the console and the browser test: the signed-in client (its state, its connections).
    /** @type {any} */ (window).rtcClient = client;
    input("token").value = "";
    $("signin").hidden = true;
    $("app").hidden = false;
    renderIce();
    setInterval(renderIce, 1000);
  } catch (err) {
    const code = /** @type {any} */ (err)?.code ?? /** @type {Error} */ (err).message;
    $("signin-error").textContent = `sign-in failed: ${code}`;
    $("me").textContent = "not signed in";
  } finally {
    /** @type {HTMLButtonElement} */ ($("signin-button")).disabled = false;
  }
}

$("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = input("token").value.trim();
  if (token) start(token, null);
});

$("cookie-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const wallet = input("cookie-wallet").value.trim();
  if (wallet) start(null, normalizeWallet(wallet));
});

$("add-contact-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const wallet = input("add-contact").value.trim();
  if (wallet) select(normalizeWallet(wallet));
  input("add-contact").value = "";
});

$("compose").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = input("compose-text").value;
  if (!client || !selected || !text) return;
  input("compose-text").value = "";
  const messageId = `m-${crypto.randomUUID()}`;
  outgoing.set(messageId, addRow(selected, "out", text, messageId));
  // Stored in the outbox first; the messageState and delivery events update the row.
  await client.enqueue(selected, text, { messageId });
});

input("force-relay").addEventListener("change", () => {
  const policy = input("force-relay").checked ? "relay" : "all";
  client?.setIceTransportPolicy(policy);
  log(`iceTransportPolicy: ${policy}`);
});

input("block-path").addEventListener("change", () => {
  client?.setPeerPathBlocked(input("block-path").checked);
  log(input("block-path").checked ? "peer path blocked (simulated)" : "peer path restored");
  renderPair();
});
