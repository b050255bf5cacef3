// The signaling baseline a team would write in Node: socket.io + @socket.io/redis-adapter.
// Same protocol as bench/bare_sio.py: auth {wallet} joins room user:<wallet>; event `signal`
// {to, ...} is emitted to room user:<to> through Redis (crosses instances). Env: PORT, REDIS_URL.
import http from "node:http";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

const pub = createClient({ url: process.env.REDIS_URL });
const sub = pub.duplicate();
await Promise.all([pub.connect(), sub.connect()]);

const server = http.createServer((req, res) => {
  if (req.url === "/healthz" || req.url === "/readyz") {
    res.writeHead(200, { "content-type": "application/json" }).end('{"status":"ok"}');
  }
});
const io = new Server(server, { adapter: createAdapter(pub, sub, { key: "bench-node" }), cors: { origin: "*" } });
io.on("connection", (socket) => {
  socket.join(`user:${socket.handshake.auth?.wallet ?? socket.id}`);
  socket.on("signal", (data) => io.to(`user:${data.to}`).emit("signal", data));
});
server.listen(Number(process.env.PORT), "127.0.0.1");
