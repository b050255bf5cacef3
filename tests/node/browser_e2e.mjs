// Two users on the demo page (clients/web, served by the gateway at /demo/) in one Chromium,
// two browser contexts, driven by playwright-core. Called by tests/e2e/test_browser_e2e.py inside a
// network namespace; prints one JSON line with what the pages showed and exits 0, or prints
// {"error": ...} and exits 1. Every wait is a condition with a deadline.
//
// Env: DEMO_URL, TOKEN_A, TOKEN_B, WALLET_A, WALLET_B, WALLET_P (a Python SDK user the test
//      runs), ARTIFACTS (screenshot folder), CHROMIUM (default /usr/bin/chromium).
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = process.env;
const WAIT = 15000; // per condition; the relay fallback alone takes 2 x 3 s ACK windows

const result = { console: [], timings: {}, pages: {} };

function watch(page, name) {
  page.on("console", async (msg) => {
    let args;
    try {
      args = await Promise.all(msg.args().map((a) => a.jsonValue().catch(() => String(a))));
    } catch {
      args = [];
    }
    result.console.push({ page: name, type: msg.type(), text: msg.text(), args: JSON.stringify(args) });
  });
  page.on("pageerror", (err) => result.console.push({ page: name, type: "pageerror", text: String(err), args: "" }));
}

async function signIn(page, token) {
  await page.goto(env.DEMO_URL);
  await page.locator("#token").fill(token);
  await page.locator("#signin-button").click();
  await page.locator('#conn-status[data-state="online"]').waitFor({ timeout: WAIT });
}

const contact = (page, wallet, online) =>
  page.locator(`#contacts li[data-wallet="${wallet}"][data-online="${online}"]`);

/** The message rows as the page shows them. */
const rows = (page) =>
  page.locator("#messages .msg").evaluateAll((els) =>
    els.map((el) => ({
      direction: el.dataset.direction,
      transport: el.dataset.transport,
      forced: el.dataset.forced,
      text: el.querySelector(".text")?.textContent ?? "",
      badge: el.querySelector(".transport")?.textContent ?? "",
      detail: el.querySelector(".detail")?.textContent ?? "",
      state: el.dataset.state ?? "",
      attempts: el.dataset.attempts ?? "",
    })),
  );

async function facts(page) {
  const pair = page.locator("#pair-type");
  return {
    pairText: await pair.textContent(),
    pairLocal: await pair.getAttribute("data-local"),
    pairRemote: await pair.getAttribute("data-remote"),
    iceExpiry: await page.locator("#ice-expiry").textContent(),
    iceExpiresAt: await page.locator("#ice-expiry").getAttribute("data-expires-at"),
    iceProvider: await page.locator("#ice-provider").textContent(),
    connection: await page.locator("#conn-status").textContent(),
    contacts: await page.locator("#contacts li").evaluateAll((els) =>
      els.map((el) => ({ wallet: el.dataset.wallet, online: el.dataset.online, text: el.textContent })),
    ),
  };
}

async function send(page, text) {
  await page.locator("#compose-text").fill(text);
  await page.locator("#send").click();
}

/** Waits for the row with `text` in `direction` to show a transport; returns the seconds it took. */
async function settled(page, direction, text, transport) {
  const started = Date.now();
  await page
    .locator(`#messages .msg[data-direction="${direction}"][data-transport="${transport}"]`, { hasText: text })
    .waitFor({ timeout: WAIT });
  return (Date.now() - started) / 1000;
}

async function main() {
  const artifacts = env.ARTIFACTS;
  mkdirSync(artifacts, { recursive: true });
  const started = Date.now();
  const browser = await chromium.launch({
    executablePath: env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--disable-features=WebRtcHideLocalIpsWithMdns",
    ],
  });
  try {
    const [alice, bob] = await Promise.all(
      ["alice", "bob"].map(async (name) => {
        const context = await browser.newContext({ viewport: { width: 1180, height: 760 } });
        const page = await context.newPage();
        watch(page, name);
        return page;
      }),
    );
    const shot = async (phase) => {
      await alice.screenshot({ path: join(artifacts, `alice-${phase}.png`) });
      await bob.screenshot({ path: join(artifacts, `bob-${phase}.png`) });
    };

    try {
      if (env.SCENARIO === "ice-refresh") await iceRefresh(alice, bob, shot);
      else await steps(alice, bob, shot, started);
    } catch (err) {
      await shot("failure").catch(() => {});
      throw err;
    }
  } finally {
    await browser.close();
  }
  result.timings.total = (Date.now() - started) / 1000;
  console.log(JSON.stringify(result));
}

async function steps(alice, bob, shot, started) {
  const [wa, wb] = [env.WALLET_A, env.WALLET_B];
  await signIn(alice, env.TOKEN_A);
  await signIn(bob, env.TOKEN_B);
  // Presence: each sees the other online (snapshot for the first, update for the second).
  await contact(alice, wb, "true").waitFor({ timeout: WAIT });
  await contact(bob, wa, "true").waitFor({ timeout: WAIT });
  result.timings.signedIn = (Date.now() - started) / 1000;

  // 1. TURN forced on both sides: the message crosses the data channel through coturn.
  await alice.locator("#force-relay").check();
  await bob.locator("#force-relay").check();
  await alice.locator(`#contacts li[data-wallet="${wb}"]`).click();
  await send(alice, "hello over rtc");
  result.timings.rtcSend = await settled(alice, "out", "hello over rtc", "rtc");
  await settled(bob, "in", "hello over rtc", "rtc");
  await alice.locator('#pair-type[data-local="relay"]').waitFor({ timeout: WAIT });
  await bob.locator('#pair-type[data-local="relay"]').waitFor({ timeout: WAIT });
  await shot("rtc");
  result.pages.rtc = {
    alice: { ...(await facts(alice)), rows: await rows(alice) },
    bob: { ...(await facts(bob)), rows: await rows(bob) },
  };

  // 2. Alice's peer path fails: her message goes through the relay (forced), and so does Bob's
  //    reply (Alice answers no offer).
  await alice.locator("#block-path").check();
  await send(alice, "hello over relay");
  result.timings.relaySend = await settled(alice, "out", "hello over relay", "relay");
  await settled(bob, "in", "hello over relay", "relay");
  await send(bob, "reply over relay");
  result.timings.relayReply = await settled(bob, "out", "reply over relay", "relay");
  await settled(alice, "in", "reply over relay", "relay");
  await shot("relay");
  result.pages.relay = {
    alice: { ...(await facts(alice)), rows: await rows(alice) },
    bob: { ...(await facts(bob)), rows: await rows(bob) },
  };

  // 3. The outbox: Bob offline and Alice's relay calls failing (her page's network refuses them):
  //    her messages stay queued and are retried; her page is reloaded with them queued and shows
  //    them again; once the relay answers they go out, and Bob, back, gets each once, in order.
  const texts = ["outbox one", "outbox two", "outbox three"];
  const queuedRow = (page, text) =>
    page.locator('#messages .msg[data-direction="out"][data-state="queued"]', { hasText: text });
  await alice.locator("#block-path").uncheck();
  await bob.goto("about:blank");
  await contact(alice, wb, "false").waitFor({ timeout: WAIT });
  await alice.route("**/api/v1/relay/enqueue", (route) => route.abort("connectionfailed"));
  for (const text of texts) await send(alice, text);
  for (const text of texts) await queuedRow(alice, text).waitFor({ timeout: WAIT });
  await alice.locator('#messages .msg[data-state="queued"]:not([data-attempts="0"])').first().waitFor({ timeout: WAIT });
  await shot("outbox-queued");
  result.pages.outboxQueued = { outbox: await alice.locator("#outbox").textContent(), rows: await rows(alice) };
  await alice.reload();
  await signIn(alice, env.TOKEN_A);
  for (const text of texts) await queuedRow(alice, text).waitFor({ timeout: WAIT });
  result.pages.outboxReloaded = { outbox: await alice.locator("#outbox").textContent(), rows: await rows(alice) };
  await alice.unroute("**/api/v1/relay/enqueue");
  const drained = Date.now();
  for (const text of texts) await settled(alice, "out", text, "relay");
  result.timings.outboxDrain = (Date.now() - drained) / 1000;
  await signIn(bob, env.TOKEN_B);
  for (const text of texts) await settled(bob, "in", text, "relay");
  await shot("outbox-delivered");
  result.pages.outboxDelivered = {
    alice: { outbox: await alice.locator("#outbox").textContent(), rows: await rows(alice) },
    bob: { rows: await rows(bob) },
  };

  // 4. Bob signs in with the site's session: an HttpOnly JWT cookie and the CSRF cookie, no
  //    token in the page. ICE, the socket and the relay all authenticate with them.
  const origin = new URL(env.DEMO_URL).origin;
  await bob.goto("about:blank");
  await bob.context().addCookies([
    { name: "access_token", value: env.TOKEN_B, url: origin, httpOnly: true, sameSite: "Strict" },
    { name: "csrf_token", value: `csrf-${Date.now()}`, url: origin, sameSite: "Strict" },
  ]);
  await bob.goto(env.DEMO_URL);
  await bob.locator("#cookie-wallet").fill(wb);
  await bob.locator("#cookie-button").click();
  await bob.locator('#conn-status[data-state="online"]').waitFor({ timeout: WAIT });
  await contact(bob, wa, "true").waitFor({ timeout: WAIT });
  await bob.locator(`#contacts li[data-wallet="${wa}"]`).click();
  await send(bob, "hello with the session cookie");
  await bob
    .locator('#messages .msg[data-direction="out"][data-state="sent"]', { hasText: "hello with the session cookie" })
    .waitFor({ timeout: WAIT });
  await alice
    .locator('#messages .msg[data-direction="in"]', { hasText: "hello with the session cookie" })
    .waitFor({ timeout: WAIT });
  await shot("cookie");
  result.pages.cookie = {
    bob: { ...(await facts(bob)), rows: await rows(bob), token: await bob.locator("#token").inputValue() },
    alice: { rows: await rows(alice) },
  };

  // 5. A Python SDK user (aiortc, run by the test): Alice writes to it over RTC, then with her
  //    peer path blocked through the relay; it answers each message ("re: ..."), the same ways.
  const wp = env.WALLET_P;
  await alice.locator("#add-contact").fill(wp);
  await alice.locator("#add-contact-form button").click();
  await contact(alice, wp, "true").waitFor({ timeout: WAIT });
  await send(alice, "to python over rtc");
  await settled(alice, "out", "to python over rtc", "rtc");
  await settled(alice, "in", "re: to python over rtc", "rtc");
  await alice.locator("#block-path").check();
  await send(alice, "to python over relay");
  await settled(alice, "out", "to python over relay", "relay");
  await settled(alice, "in", "re: to python over relay", "relay");
  await shot("python");
  result.pages.python = { alice: { ...(await facts(alice)), rows: await rows(alice) } };
}

/** What a page's SDK holds for its connection to `peer` (no credential, only the username). */
const probe = (page, peer) =>
  page.evaluate((peer) => {
    const client = window.rtcClient;
    const session = client.links.get(peer)?.active;
    const pc = session?.pc;
    const turn = pc?.getConfiguration().iceServers.find((s) => s.username);
    const sameChannel = Boolean(session) && window.rtcChannel === session.channel;
    window.rtcChannel = session?.channel;
    return {
      fetches: client.iceFetches,
      generation: session?.iceGeneration ?? null,
      sessionsMade: client.sessionsMade(peer),
      open: Boolean(session?.open),
      sameChannel,
      signalingState: pc?.signalingState ?? null,
      turnUsername: turn?.username ?? null,
      ufrag: pc?.localDescription?.sdp.match(/a=ice-ufrag:(\S+)/)?.[1] ?? null,
    };
  }, peer);

/** ICE refresh at 70 % of a short ttl: both pages fetch again and restart ICE on the open
 * connection; the data channel stays open and carries the next message. */
async function iceRefresh(alice, bob, shot) {
  const [wa, wb] = [env.WALLET_A, env.WALLET_B];
  const ttl = Number(env.ICE_TTL);
  await signIn(alice, env.TOKEN_A);
  await signIn(bob, env.TOKEN_B);
  await contact(alice, wb, "true").waitFor({ timeout: WAIT });
  await alice.locator("#force-relay").check();
  await bob.locator("#force-relay").check();
  await alice.locator(`#contacts li[data-wallet="${wb}"]`).click();
  await send(alice, "before the refresh");
  await settled(alice, "out", "before the refresh", "rtc");
  await settled(bob, "in", "before the refresh", "rtc");
  const before = { alice: await probe(alice, wb), bob: await probe(bob, wa) };
  const refreshed = Date.now();
  const restartedOn = (page, peer) =>
    page.waitForFunction(
      (peer) => {
        const client = window.rtcClient;
        const session = client.links.get(peer)?.active;
        return client.iceFetches >= 2 && session?.iceGeneration === client.iceFetches &&
          session.pc.signalingState === "stable" && session.open;
      },
      peer,
      { timeout: ttl * 1000 + WAIT, polling: 100 },
    );
  await restartedOn(alice, wb);
  await restartedOn(bob, wa);
  result.timings.iceRefresh = (Date.now() - refreshed) / 1000;
  const after = { alice: await probe(alice, wb), bob: await probe(bob, wa) };
  await send(alice, "after the refresh");
  await settled(alice, "out", "after the refresh", "rtc");
  await settled(bob, "in", "after the refresh", "rtc");
  await send(bob, "reply after the refresh");
  await settled(bob, "out", "reply after the refresh", "rtc");
  await settled(alice, "in", "reply after the refresh", "rtc");
  await shot("ice-refresh");
  result.pages.iceRefresh = {
    before,
    after,
    alice: { ...(await facts(alice)), rows: await rows(alice), log: await alice.locator("#log li").allTextContents() },
    bob: { ...(await facts(bob)), rows: await rows(bob), log: await bob.locator("#log li").allTextContents() },
  };
}

main().catch((err) => {
  console.log(JSON.stringify({ ...result, error: String(err && err.stack ? err.stack : err) }));
  process.exit(1);
});
