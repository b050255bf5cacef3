// The signaling baseline a team would write in Node: socket.io + @socket.io/redis-adapter.
// Same protocol as bench/bare_sio.py: auth {wallet} joins room user:<wallet>; event `signal`
// {to, ...} is emitted to room user:<to> through Redis (crosses instances). Env: PORT, REDIS_URL,
// SHARDED=1: the sharded adapter (Redis 7 SPUBLISH/SSUBSCRIBE) in dynamic mode, where a node
// subscribes a room's channel only while it holds a member of the room.
import http from "node:http";
import { Server } from "socket.io";
import { createAdapter, createShardedAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

const pub = createClient({ url: process.env.REDIS_URL });
const sub = pub.duplicate();
await Promise.all([pub.connect(), sub.connect()]);

const server = http.createServer((req, res) => {
  if (req.url === "/healthz" || req.url === "/readyz") {
    res.writeHead(200, { "content-type": "application/json" }).end('{"status":"ok"}');
  }
});
const adapter = process.env.SHARDED === "1"
  ? createShardedAdapter(pub, sub, { channelPrefix: "bench-node-sharded", subscriptionMode: "dynamic" })
  : createAdapter(pub, sub, { key: "bench-node" });
const io = new Server(server, { adapter, cors: { origin: "*" } });
io.on("connection", (socket) => {
  socket.join(`user:${socket.handshake.auth?.wallet ?? socket.id}`);
  socket.on("signal", (data) => io.to(`user:${data.to}`).emit("signal", data));
});
server.listen(Number(process.env.PORT), "127.0.0.1");
