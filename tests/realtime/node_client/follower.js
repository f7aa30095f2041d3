// A consumer that follows one or more tenants across server restarts, on the npm socket.io-client:
// automatic reconnection on, and every (re)connection sends `since` = the last seq it holds (auth as
// a function, evaluated at each attempt). Usage: node follower.js <url> '<auth json>'
// Prints one JSON line per happening: {kind: connect|connect_error|event|disconnect, ...}.
// Exits when its stdin closes.
"use strict";
const { io } = require("socket.io-client");

const [url, authJson] = process.argv.slice(2);
const base = JSON.parse(authJson);
let since = base.since ?? 0;
const socket = io(url, {
  auth: (cb) => cb({ ...base, since }),
  reconnection: true,
  reconnectionDelay: 200,
  reconnectionDelayMax: 1000,
  transports: ["websocket"],
});
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

socket.on("connect", () => out({ kind: "connect", id: socket.id, since }));
socket.on("connect_error", (err) => out({ kind: "connect_error", message: err.message }));
socket.on("disconnect", (reason) => out({ kind: "disconnect", reason }));
socket.onAny((event, envelope) => {
  if (envelope && typeof envelope.seq === "number" && envelope.seq > since) since = envelope.seq;
  out({ kind: "event", event, envelope });
});

process.stdin.on("end", () => {
  socket.close();
  process.exit(0);
});
process.stdin.resume();
