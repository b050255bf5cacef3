// Signaling load with socket.io-client (websocket transport). One JSON line on stdout.
// Env: MODE (latency | saturate | connections | fanout), PROTOCOL (rtc: the product's rtc:offer
// with tokens; bare: event `signal` to the baselines), SPEC (a JSON file, see bench/signaling.py).
import fs from "node:fs";
import readline from "node:readline";
import { performance } from "node:perf_hooks";
import { io } from "socket.io-client";

const spec = JSON.parse(fs.readFileSync(process.env.SPEC, "utf8"));
const rtc = process.env.PROTOCOL === "rtc";
const event = rtc ? "rtc:offer" : "signal";
const SDP = "v=0\r\n" + "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n".repeat(24);

function connect(url, user) {
  const auth = rtc ? { token: user.token } : { wallet: user.wallet };
  const socket = io(url, { auth, transports: ["websocket"], reconnection: false, timeout: 20000, forceNew: true });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => reject(new Error(`connect_error ${JSON.stringify(err.data ?? err.message)}`)));
  });
}

function percentiles(samples) {
  const s = Float64Array.from(samples).sort();
  const at = (q) => (s.length ? s[Math.min(s.length - 1, Math.floor(q * s.length))] : NaN);
  return { p50_ms: at(0.5), p90_ms: at(0.9), p99_ms: at(0.99), max_ms: s.length ? s[s.length - 1] : NaN };
}

function message(from, to, signalId) {
  return { convId: [from.wallet, to.wallet].sort().join(":"), to: to.wallet, sdp: { type: "offer", sdp: SDP }, signalId };
}

const run = `${process.pid}-${Date.now()}`;

async function pairs() {
  const out = [];
  for (const p of spec.pairs) {
    out.push({ a: p.a, b: p.b, sa: await connect(spec.urlA, p.a), sb: await connect(spec.urlB, p.b) });
  }
  return out;
}

async function latency() {
  const [pair] = await pairs();
  const due = new Map();
  const latencies = [];
  let received = 0;
  let errors = 0;
  pair.sb.on(event, (data) => {
    const t = due.get(data.signalId);
    if (t !== undefined) { latencies.push(performance.now() - t); due.delete(data.signalId); received++; }
  });
  pair.sa.on("rtc:error", () => errors++);
  // Warm-up outside the measurement.
  for (let i = 0; i < 50; i++) pair.sa.emit(event, message(pair.a, pair.b, `${run}-w${i}`));
  await new Promise((r) => setTimeout(r, 300));
  latencies.length = 0; received = 0;
  const total = Math.round(spec.rate * spec.duration);
  const cpu0 = process.cpuUsage();
  const start = performance.now();
  let i = 0;
  await new Promise((resolve) => {
    const tick = () => {
      const now = performance.now();
      while (i < total && start + (i * 1000) / spec.rate <= now) {
        const id = `${run}-${i}`;
        due.set(id, start + (i * 1000) / spec.rate); // latency from the scheduled time
        pair.sa.emit(event, message(pair.a, pair.b, id));
        i++;
      }
      if (i >= total) return resolve();
      setTimeout(tick, Math.max(0, start + (i * 1000) / spec.rate - performance.now()));
    };
    tick();
  });
  const sentIn = performance.now() - start;
  const deadline = performance.now() + 5000;
  while (received < total && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  const cpu = process.cpuUsage(cpu0);
  const elapsed = performance.now() - start;
  pair.sa.close(); pair.sb.close();
  return {
    target_rate: spec.rate, sent: total, received, errors, undelivered: total - received,
    achieved_rate: (total * 1000) / sentIn, generator_cpu_percent: ((cpu.user + cpu.system) / 1000 / elapsed) * 100,
    ...percentiles(latencies),
  };
}

async function saturate() {
  // Each pair keeps `window` signals in flight: the server, not the client, sets the pace.
  const all = await pairs();
  let delivered = 0; let measuring = false; let errors = 0;
  const win = spec.window;
  for (const [n, p] of all.entries()) {
    let seq = 0; let inFlight = 0;
    const send = () => { while (inFlight < win) { inFlight++; p.sa.emit(event, message(p.a, p.b, `${run}-${n}-${seq++}`)); } };
    p.sb.on(event, () => { inFlight--; if (measuring) delivered++; send(); });
    p.sa.on("rtc:error", () => { errors++; inFlight--; send(); });
    send();
  }
  await new Promise((r) => setTimeout(r, 1000)); // warm-up
  measuring = true;
  const cpu0 = process.cpuUsage(); const start = performance.now();
  await new Promise((r) => setTimeout(r, spec.duration * 1000));
  measuring = false;
  const elapsed = performance.now() - start; const cpu = process.cpuUsage(cpu0);
  for (const p of all) { p.sa.close(); p.sb.close(); }
  return { delivered, errors, per_second: (delivered * 1000) / elapsed, generator_cpu_percent: ((cpu.user + cpu.system) / 1000 / elapsed) * 100 };
}

async function connections() {
  // Open spec.users sockets with at most spec.parallel handshakes in flight, then wait for a line
  // on stdin (the orchestrator reads the server's memory meanwhile) and close them all.
  const sockets = []; let next = 0; let failed = 0;
  const start = performance.now();
  const worker = async () => {
    while (next < spec.users.length) {
      const user = spec.users[next++];
      try { sockets.push(await connect(spec.urlA, user)); } catch { failed++; }
    }
  };
  await Promise.all(Array.from({ length: spec.parallel }, worker));
  const seconds = (performance.now() - start) / 1000;
  process.stdout.write(JSON.stringify({ connected: sockets.length, failed, seconds, per_second: sockets.length / seconds }) + "\n");
  const rl = readline.createInterface({ input: process.stdin });
  await new Promise((r) => rl.once("line", r));
  for (const s of sockets) s.close();
  return { closed: sockets.length };
}

async function fanout() {
  // spec.users: the contacts (connected first), spec.subject: the wallet whose coming online is
  // announced to all of them. Time from the subject's connect to the last presence:update.
  const sockets = [];
  for (let i = 0; i < spec.users.length; i += 50) {
    sockets.push(...(await Promise.all(spec.users.slice(i, i + 50).map((u) => connect(spec.urlA, u)))));
  }
  let got = 0; let last = 0;
  const all = new Promise((resolve) => {
    for (const s of sockets) s.on("presence:update", (u) => {
      if (u.wallet === spec.subject.wallet && u.online) { got++; last = performance.now(); if (got === sockets.length) resolve(); }
    });
  });
  const start = performance.now();
  const subject = await connect(spec.urlB, spec.subject);
  const connectedAt = performance.now();
  await Promise.race([all, new Promise((r) => setTimeout(r, 30000))]);
  subject.close(); for (const s of sockets) s.close();
  return { contacts: sockets.length, notified: got, connect_ms: connectedAt - start, fanout_ms: last - start };
}

const modes = { latency, saturate, connections, fanout };
const result = await modes[process.env.MODE]();
process.stdout.write(JSON.stringify(result) + "\n");
process.exit(0);
