// The peer under test: a Socket.IO 4 server with the Redis adapter. Run two of these on one Redis (ports per the
// workload file). It keeps nothing: a message is emitted to the recipient's room and acknowledged at once, with no
// storage, so the comparison with our server (which commits every message to Postgres before its ack) is an upper
// bound for the peer's kind of design, not a like-for-like durability comparison.
//
//   PORT=3101 REDIS_URL=redis://127.0.0.1:16380 node server.js
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const port = Number(process.env.PORT || 3101);
const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:16380";

async function main() {
  const httpServer = http.createServer((req, res) => {
    if (req.url === "/healthz") {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("ok\n");
      return;
    }
    res.writeHead(404);
    res.end();
  });
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  pub.on("error", (e) => console.error("redis pub:", e.message));
  sub.on("error", (e) => console.error("redis sub:", e.message));
  await Promise.all([pub.connect(), sub.connect()]);

  const io = new Server(httpServer, {
    transports: ["websocket"],
    adapter: createAdapter(pub, sub),
    // The same keep-alive role as our server's pings.
    pingInterval: 20000,
    pingTimeout: 20000,
  });

  io.use((socket, next) => {
    const user = Number(socket.handshake.auth && socket.handshake.auth.user);
    if (!Number.isInteger(user) || user < 0) return next(new Error("bad user"));
    socket.data.user = user;
    next();
  });

  io.on("connection", (socket) => {
    const user = socket.data.user;
    socket.join(`u:${user}`);
    const groups = socket.handshake.auth.groups;
    if (Array.isArray(groups)) for (const g of groups) socket.join(`g:${g}`);

    // dm {to, id, ts, body} -> {from, to, id, ts, body} to every connection of `to`; ack {id}.
    socket.on("dm", (m, ack) => {
      if (!m || typeof m !== "object") return;
      io.to(`u:${m.to}`).emit("dm", { from: user, to: m.to, id: m.id, ts: m.ts, body: m.body });
      if (typeof ack === "function") ack({ id: m.id });
    });
    // gm {group, id, ts, body} -> every member connection except the sender; ack {id}.
    socket.on("gm", (m, ack) => {
      if (!m || typeof m !== "object") return;
      socket.to(`g:${m.group}`).emit("gm", { from: user, group: m.group, id: m.id, ts: m.ts, body: m.body });
      if (typeof ack === "function") ack({ id: m.id });
    });
  });

  httpServer.listen(port, "127.0.0.1", () => console.log(`peer listening on 127.0.0.1:${port}`));
  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).finally(() => process.exit(0));
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
