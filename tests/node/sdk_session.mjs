// The web SDK (clients/web/rtc-sdk.js) in Node, with socket.io-client v4 from node_modules in
// place of the vendored browser build: one signed-in client (rtc: false, so no RTCPeerConnection)
// whose session the server may end. Env: URL (the gateway), TOKEN, FRESH_TOKEN (optional: the
// token provider's answer; without it the client has no provider).
// Prints one JSON line per SDK event; stdin commands, one per line: "state" (prints the client's
// state), "send <to> <messageId>" (a message, through the relay), "enqueue <to> <messageId>
// <payload>" (into the outbox, answered at once), "messages" (the outbox), "exit" (closes and
// exits). The tokens are never printed.
import readline from "node:readline";
import { io } from "socket.io-client";
import { RtcClient } from "../../clients/web/rtc-sdk.js";

const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");
const fresh = process.env.FRESH_TOKEN;
const tokenProvider = fresh
  ? async () => {
      print({ event: "tokenAsked" });
      return fresh;
    }
  : undefined;
const client = new RtcClient({
  baseUrl: process.env.URL, token: process.env.TOKEN, rtc: false, telemetry: false, io, logger: null,
  tokenProvider, retryDelayMs: 200, retryDelayMaxMs: 2000,
});
client.addEventListener("messageState", (e) =>
  print({ event: "messageState", messageId: e.detail.messageId, state: e.detail.state, error: e.detail.error }),
);
let connections = 0;
client.addEventListener("connection", (e) => {
  if (e.detail.connected) connections += 1;
  print({ event: "connection", ...e.detail, state: client.state });
});
client.addEventListener("sessionEnded", (e) => print({ event: "sessionEnded", ...e.detail, state: client.state }));

const commands = readline.createInterface({ input: process.stdin });
commands.on("line", async (line) => {
  const [command, ...args] = line.trim().split(" ");
  if (command === "state") {
    print({ event: "state", state: client.state, reason: client.sessionEndReason, connected: client.connected, connections });
  } else if (command === "send") {
    try {
      const delivery = await client.send(args[0], "hello", { messageId: args[1] });
      print({ event: "sent", transport: delivery.transport, duplicate: delivery.duplicate });
    } catch (err) {
      print({ event: "sendFailed", code: err.code ?? "error", status: err.status ?? null });
    }
  } else if (command === "enqueue") {
    const message = await client.enqueue(args[0], args.slice(2).join(" "), { messageId: args[1] });
    print({ event: "queued", messageId: message.messageId, state: message.state });
  } else if (command === "messages") {
    const messages = (await client.messages()).map(({ messageId, state, transport, error, attempts }) => ({
      messageId, state, transport, error, attempts,
    }));
    print({ event: "messages", messages });
  } else if (command === "exit") {
    await client.close();
    commands.close();
    process.exit(0);
  }
});

try {
  await client.start();
  print({ event: "started", state: client.state });
} catch (err) {
  print({ event: "startFailed", code: err.code ?? "error", state: client.state });
}
