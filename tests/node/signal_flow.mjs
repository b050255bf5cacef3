// Two users complete offer -> answer -> candidates through signal-service with socket.io-client v4.
// Env: URL, TOKEN_A, TOKEN_B, WALLET_A, WALLET_B, TRANSPORTS ("websocket" or "default"),
//      ADDR_A, ADDR_B (local source addresses, so the gateway's ip_hash spreads the clients).
// Prints one JSON line with what happened; exits non-zero on any failure.
import http from "node:http";
import { io } from "socket.io-client";

const env = process.env;
const deadline = (ms, what) =>
  new Promise((_, reject) => setTimeout(() => reject(new Error(`timeout: ${what}`)), ms));

function connect(token, localAddress) {
  const opts = { auth: { token }, reconnection: false, timeout: 5000 };
  if (env.TRANSPORTS === "websocket") opts.transports = ["websocket"];
  if (localAddress) {
    opts.localAddress = localAddress; // websocket transport (ws)
    opts.agent = new http.Agent({ localAddress, keepAlive: true }); // polling transport
  }
  const socket = io(env.URL, opts);
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => reject(Object.assign(new Error("connect_error"), { data: err.data })));
  });
}

function next(socket, event) {
  return Promise.race([new Promise((resolve) => socket.once(event, resolve)), deadline(5000, event)]);
}

async function main() {
  if (env.MODE === "refused") {
    try {
      await connect(env.TOKEN_A);
      console.log(JSON.stringify({ connected: true }));
    } catch (err) {
      console.log(JSON.stringify({ connected: false, data: err.data ?? null }));
    }
    return;
  }
  const a = await connect(env.TOKEN_A, env.ADDR_A);
  const b = await connect(env.TOKEN_B, env.ADDR_B);
  const [wa, wb] = [env.WALLET_A, env.WALLET_B];
  const convId = [wa, wb].sort().join(":");
  const run = `${process.pid}-${Date.now()}`; // signalIds are deduplicated for 60 s
  const result = { transports: [a.io.engine.transport.name, b.io.engine.transport.name] };

  let got = next(b, "rtc:offer");
  result.offerAck = await a.timeout(5000).emitWithAck("rtc:offer", {
    convId, to: wb, sdp: { type: "offer", sdp: "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n" }, signalId: `offer-${run}`,
  });
  result.offer = await got;

  got = next(a, "rtc:answer");
  result.answerAck = await b.timeout(5000).emitWithAck("rtc:answer", {
    convId, to: wa, sdp: { type: "answer", sdp: "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\n" }, signalId: `answer-${run}`,
  });
  result.answer = await got;

  got = next(b, "rtc:candidate");
  result.candidateAck = await a.timeout(5000).emitWithAck("rtc:candidate", {
    convId, to: wb, signalId: `cand-${run}`,
    candidate: { candidate: "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", sdpMid: "0", sdpMLineIndex: 0 },
  });
  result.candidate = await got;

  // An error without an ack callback arrives as rtc:error.
  got = next(a, "rtc:error");
  a.emit("rtc:offer", { convId: "wrong", to: wb, sdp: { type: "offer", sdp: "v=0" }, signalId: `bad-${run}` });
  result.rtcError = await got;

  result.transportsAfter = [a.io.engine.transport.name, b.io.engine.transport.name];
  a.disconnect();
  b.disconnect();
  console.log(JSON.stringify(result));
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err.stack || String(err));
    process.exit(1);
  },
);
