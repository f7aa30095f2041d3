// Bench consumer process: holds one websocket Socket.IO connection per token (npm socket.io-client,
// installed in tests/realtime/node_client), measures publish->receipt latency per phase and checks
// that every tenant's seqs arrive in order without duplicates.
// argv: <url> <json list of tokens>. stdout: {"ready": n} once connected, then one report per
// {"cmd": "report", "phase": k} line read on stdin.
"use strict";
const path = require("path");
const { io } = require(path.join(__dirname, "../tests/realtime/node_client/node_modules/socket.io-client"));
const { performance } = require("perf_hooks");
const readline = require("readline");

const [url, tokensJson] = process.argv.slice(2);
const tokens = JSON.parse(tokensJson);
const phases = new Map(); // phase -> {count, lat: []}
const lastSeq = new Map(); // tenant -> last seq
let outOfOrder = 0, connected = 0, failed = 0;
const now = () => performance.timeOrigin + performance.now();
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

for (const token of tokens) {
  const socket = io(url, { auth: { token }, transports: ["websocket"], reconnection: false });
  socket.on("connect", () => { if (++connected + failed === tokens.length) out({ ready: connected, failed }); });
  socket.on("connect_error", (err) => { failed++; out({ error: err.message }); });
  socket.onAny((event, env) => {
    const t = now();
    const prev = lastSeq.get(env.tenant_id);
    if (prev !== undefined && env.seq !== prev + 1) outOfOrder++;
    lastSeq.set(env.tenant_id, env.seq);
    let p = phases.get(env.data.p);
    if (!p) { p = { count: 0, lat: [] }; phases.set(env.data.p, p); }
    p.count++;
    p.lat.push(Math.round((t - env.data.t) * 100) / 100);
  });
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const cmd = JSON.parse(line);
  const p = phases.get(cmd.phase) || { count: 0, lat: [] };
  out({ phase: cmd.phase, count: p.count, lat: cmd.full ? p.lat : [], out_of_order: outOfOrder });
}).on("close", () => process.exit(0));
