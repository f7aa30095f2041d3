// A CRM-style consumer on the npm socket.io-client, driven by the Python tests and the bench.
// Usage: node client.js <url> '<auth json>' [websocket]
// Prints one JSON line per happening: {kind: connect|connect_error|event|disconnect, ...}.
// Exits when its stdin closes.
"use strict";
const { io } = require("socket.io-client");

const [url, authJson, transport] = process.argv.slice(2);
const socket = io(url, {
  auth: JSON.parse(authJson),
  reconnection: false,
  transports: transport === "websocket" ? ["websocket"] : ["polling", "websocket"],
});
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

socket.on("connect", () => out({ kind: "connect", id: socket.id }));
socket.on("connect_error", (err) => out({ kind: "connect_error", message: err.message, data: err.data ?? null }));
socket.on("disconnect", (reason) => out({ kind: "disconnect", reason }));
socket.onAny((event, envelope) => out({ kind: "event", event, envelope }));

process.stdin.on("end", () => {
  socket.close();
  process.exit(0);
});
process.stdin.resume();
