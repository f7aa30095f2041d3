#!/usr/bin/env node
'use strict';
// The bridge: one WhatsApp session per process. main.js owns the protocol (stdin commands,
// stdout responses/events), heartbeats, command dispatch, signals and every exit path; a driver
// (drivers/wwebjs.js or drivers/scripted.js) plays WhatsApp's side behind a small interface.
// stdout carries protocol lines only: anything else a library prints is diverted to stderr.

const util = require('util');
const fs = require('fs');
const path = require('path');
const readline = require('readline');

const protocol = require('./protocol');

const { EVENTS, COMMANDS, STATES, ERROR_CODES: E, EXIT_CODES, CommandError } = protocol;

// --- stdout is reserved for protocol lines ----------------------------------------------------
const rawStdoutWrite = process.stdout.write.bind(process.stdout);
let logTenant = '-';
// When the control plane dies, stderr breaks too (EPIPE). Logging must then go quiet: an unhandled
// stderr 'error' would become an uncaught exception whose own log line fails again, in a loop that
// keeps an orphaned bridge spinning instead of exiting.
let stderrBroken = false;
let onStderrBroken = () => {};
process.stderr.on('error', () => {
    if (stderrBroken) return;
    stderrBroken = true;
    onStderrBroken();
});
function log(level, ...args) {
    if (stderrBroken) return;
    const text = util.format(...args).replace(/\n/g, '\n    ');
    try {
        process.stderr.write(`${new Date().toISOString()} tenant=${logTenant} level=${level} ${text}\n`);
    } catch {
        stderrBroken = true;
    }
}
console.log = (...a) => log('info', ...a);
console.info = (...a) => log('info', ...a);
console.debug = (...a) => log('debug', ...a);
console.warn = (...a) => log('warn', ...a);
console.error = (...a) => log('error', ...a);
process.stdout.write = (chunk, encoding, cb) => process.stderr.write(chunk, encoding, cb);

const BRIDGE_VERSION = require('../package.json').version;

function readWwebjsVersion() {
    try {
        const pkg = require.resolve('whatsapp-web.js/package.json');
        return JSON.parse(fs.readFileSync(pkg, 'utf8')).version;
    } catch {
        return null;
    }
}

function describeError(err) {
    if (err instanceof Error) return err.message || err.name;
    if (typeof err === 'string') return err;
    try {
        return JSON.stringify(err);
    } catch {
        return String(err);
    }
}

// --- command line ------------------------------------------------------------------------------
function usage(message) {
    process.stderr.write(
        `error: ${message}\nusage: node bridge/src/main.js --tenant <id> --session-dir <abs dir> ` +
            '--driver wwebjs|scripted [--heartbeat-ms 5000] [--qr-interval-ms 20000] ' +
            '[--stop-timeout-ms 5000] [--max-inline-media-bytes 5242880]\n',
    );
    process.exit(EXIT_CODES.USAGE);
}

function parseCli(argv) {
    let values;
    try {
        ({ values } = util.parseArgs({
            args: argv,
            options: {
                tenant: { type: 'string' },
                'session-dir': { type: 'string' },
                driver: { type: 'string' },
                'heartbeat-ms': { type: 'string', default: '5000' },
                'qr-interval-ms': { type: 'string', default: '20000' },
                'stop-timeout-ms': { type: 'string', default: '5000' },
                'max-inline-media-bytes': { type: 'string', default: String(5 * 1024 * 1024) },
            },
            strict: true,
        }));
    } catch (e) {
        usage(e.message);
    }
    const int = (name, min) => {
        const n = Number(values[name]);
        if (!Number.isInteger(n) || n < min) usage(`--${name} must be an integer >= ${min}`);
        return n;
    };
    if (!values.tenant || !/^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/.test(values.tenant)) {
        usage('--tenant is required ([A-Za-z0-9][A-Za-z0-9_.:-]*, at most 128 chars)');
    }
    if (!values['session-dir'] || !path.isAbsolute(values['session-dir'])) {
        usage('--session-dir is required and must be absolute');
    }
    if (!['wwebjs', 'scripted'].includes(values.driver)) usage('--driver must be wwebjs or scripted');
    return {
        tenant: values.tenant,
        sessionDir: path.resolve(values['session-dir']),
        driver: values.driver,
        heartbeatMs: int('heartbeat-ms', 10),
        qrIntervalMs: int('qr-interval-ms', 10),
        stopTimeoutMs: int('stop-timeout-ms', 1),
        maxInlineMediaBytes: int('max-inline-media-bytes', 0),
        chromePath: process.env.CHROME_PATH || '/usr/bin/chromium',
    };
}

// --- argument validation shared by both drivers ------------------------------------------------
function badRequest(message) {
    return new CommandError(E.BAD_REQUEST, message);
}

function normalizeChatId(to, field) {
    if (typeof to === 'number' && Number.isInteger(to) && to > 0) to = String(to);
    if (typeof to !== 'string' || !to.trim()) throw badRequest(`"${field}" must be digits or a chat id`);
    to = to.trim();
    if (to.includes('@')) {
        if (!/^[\w.+-]+@(c\.us|g\.us|s\.whatsapp\.net|lid|broadcast|newsletter)$/.test(to)) {
            throw badRequest(`"${field}" is not a valid chat id: ${to}`);
        }
        const user = to.split('@')[0];
        return { chatId: to, digits: /^\d+$/.test(user) ? user : null };
    }
    const digits = to.replace(/[\s()+-]/g, '');
    if (!/^\d{5,20}$/.test(digits)) throw badRequest(`"${field}" must be a phone number in digits`);
    return { chatId: `${digits}@c.us`, digits };
}

function normalizeMedia(media) {
    if (!media || typeof media !== 'object' || Array.isArray(media)) {
        throw badRequest('"media" must be an object with one of path, url, base64');
    }
    const sources = ['path', 'url', 'base64'].filter((k) => media[k] !== undefined && media[k] !== null);
    if (sources.length !== 1) throw badRequest('"media" needs exactly one of path, url, base64');
    const out = { mimetype: media.mimetype || null, filename: media.filename || null };
    for (const k of ['mimetype', 'filename']) {
        if (out[k] !== null && typeof out[k] !== 'string') throw badRequest(`"media.${k}" must be a string`);
    }
    if (media.path !== undefined && media.path !== null) {
        if (typeof media.path !== 'string' || !path.isAbsolute(media.path)) {
            throw badRequest('"media.path" must be an absolute path');
        }
        if (!fs.existsSync(media.path)) throw badRequest(`media file not found: ${media.path}`);
        out.path = media.path;
    } else if (media.url !== undefined && media.url !== null) {
        if (typeof media.url !== 'string' || !/^https?:\/\//.test(media.url)) {
            throw badRequest('"media.url" must be an http(s) URL');
        }
        out.url = media.url;
    } else {
        if (typeof media.base64 !== 'string' || !/^[A-Za-z0-9+/=\s]*$/.test(media.base64)) {
            throw badRequest('"media.base64" must be a base64 string');
        }
        if (!out.mimetype) throw badRequest('"media.mimetype" is required with base64');
        out.base64 = media.base64.replace(/\s/g, '');
    }
    return out;
}

function normalizeLocation(loc) {
    if (!loc || typeof loc !== 'object') throw badRequest('"location" must be an object');
    const { latitude, longitude, description } = loc;
    if (typeof latitude !== 'number' || latitude < -90 || latitude > 90) {
        throw badRequest('"location.latitude" must be a number in [-90, 90]');
    }
    if (typeof longitude !== 'number' || longitude < -180 || longitude > 180) {
        throw badRequest('"location.longitude" must be a number in [-180, 180]');
    }
    if (description !== undefined && description !== null && typeof description !== 'string') {
        throw badRequest('"location.description" must be a string');
    }
    return { latitude, longitude, description: description || null };
}

function normalizeSend(args) {
    const { chatId, digits } = normalizeChatId(args.to, 'to');
    const type = args.type || (args.media ? 'media' : args.location ? 'location' : 'text');
    const out = { chatId, digits, type, text: null, media: null, location: null, caption: null };
    if (type === 'text') {
        if (typeof args.text !== 'string' || !args.text) throw badRequest('"text" is required for type text');
        out.text = args.text;
    } else if (type === 'media') {
        out.media = normalizeMedia(args.media);
    } else if (type === 'location') {
        out.location = normalizeLocation(args.location);
    } else {
        throw badRequest('"type" must be text, media or location');
    }
    if (args.caption !== undefined && args.caption !== null) {
        if (typeof args.caption !== 'string') throw badRequest('"caption" must be a string');
        out.caption = args.caption;
    }
    if (args.reply_to !== undefined && args.reply_to !== null) {
        if (typeof args.reply_to !== 'string' || !args.reply_to) throw badRequest('"reply_to" must be a message id');
        out.replyTo = args.reply_to;
    }
    out.asDocument = Boolean(args.as_document);
    return out;
}

// --- the bridge --------------------------------------------------------------------------------
class Bridge {
    constructor(opts) {
        this.opts = opts;
        this.startedAt = Date.now();
        this.state = null;
        this.stateReason = null;
        this.wid = null;
        this.number = null;
        this.pushname = null;
        this.browserPid = null;
        this.userDataDir = null;
        this.qrAttempt = 0;
        this.heartbeatSeq = 0;
        this.hung = false;
        this.exiting = false;
        this.stdoutBroken = false;
        this.driver = null;
        this.heartbeatTimer = null;
        // Messages sent from this account (typed on the phone, or our own sends echoed back by
        // message_create): see ownMessage().
        this.sending = new Set(); // send commands in flight (promises)
        this.sentIds = new Map(); // ids of messages this bridge sent (most recent SENT_IDS_MAX)
        this.heldAcks = new Map(); // own message id -> acks held until its message event is out
        this.ownChain = Promise.resolve(); // keeps own-message events in the order they were created
    }

    // -- output --
    write(obj) {
        if (this.stdoutBroken) return;
        try {
            rawStdoutWrite(protocol.encode(obj));
        } catch (e) {
            this.onStdoutError(e);
        }
    }

    onStdoutError(err) {
        if (this.stdoutBroken) return;
        this.stdoutBroken = true;
        log('error', 'stdout failed (%s): control plane went away', describeError(err));
        this.fatal('stdout_closed', 'stdout closed: control plane went away', EXIT_CODES.STDIN_CLOSED);
    }

    sendEvent(name, data) {
        this.write(protocol.event(name, data));
    }

    setState(state, reason) {
        if (this.state === state && this.stateReason === (reason || null)) return;
        this.state = state;
        this.stateReason = reason || null;
        log('info', 'state=%s%s', state, reason ? ` reason=${reason}` : '');
        this.sendEvent(EVENTS.STATE, reason ? { state, reason } : { state });
    }

    // Drivers report WhatsApp's side through this one function; the state follows the events.
    driverEvent(name, data = {}) {
        if (this.exiting) {
            log('debug', 'dropping %s event while exiting', name);
            return;
        }
        switch (name) {
            case EVENTS.QR:
                this.qrAttempt += 1;
                data = {
                    qr: data.qr,
                    attempt: this.qrAttempt,
                    expires_at: Date.now() + this.opts.qrIntervalMs,
                };
                this.sendEvent(name, data);
                this.setState(STATES.QR);
                return;
            case EVENTS.AUTHENTICATED:
                this.sendEvent(name, {});
                this.setState(STATES.AUTHENTICATED);
                return;
            case EVENTS.READY:
                this.wid = data.wid;
                this.number = data.number;
                this.pushname = data.pushname || null;
                this.sendEvent(name, data);
                this.setState(STATES.READY);
                return;
            case EVENTS.DISCONNECTED: {
                const reason = String(data.reason || 'unknown');
                this.sendEvent(name, { reason });
                if (reason === 'LOGOUT') {
                    this.fatal('logged_out', 'the phone unlinked this device (LOGOUT)', EXIT_CODES.LOGGED_OUT, {
                        reason,
                        wipe: true,
                    });
                } else {
                    this.fatal('disconnected', `WhatsApp disconnected: ${reason}`, EXIT_CODES.DISCONNECTED, {
                        reason,
                    });
                }
                return;
            }
            case EVENTS.MESSAGE_ACK: {
                const held = data && this.heldAcks.get(data.id);
                if (held) held.push(data);
                else this.sendEvent(name, data);
                return;
            }
            default:
                this.sendEvent(name, data);
        }
    }

    // A message created by this account (wwebjs `message_create` with fromMe): typed on the phone,
    // or one of our own sends coming back. `dataPromise` resolves to the `message` event's data (or
    // null to drop it). The event waits until every send in flight when it appeared has been
    // answered (whatsapp-web.js fires message_create before sendMessage resolves), then is dropped
    // if its id is one we sent: the control plane already has that message under that id. Only
    // phone-typed messages are reported, after the send responses, and always before their acks.
    ownMessage(id, dataPromise) {
        if (typeof id !== 'string' || !id || this.heldAcks.has(id)) return;
        if (this.sentIds.has(id)) return; // our own send, already answered
        this.heldAcks.set(id, []);
        const inFlight = [...this.sending];
        const ready = Promise.all([
            Promise.resolve(dataPromise).catch((err) => {
                log('error', 'own message %s: %s', id, describeError(err));
                return null;
            }),
            inFlight.length ? settledWithin(inFlight, OWN_MESSAGE_HOLD_MS) : null,
        ]);
        this.ownChain = this.ownChain
            .then(() => ready)
            .then(([data]) => new Promise((resolve) => setImmediate(() => resolve(data)))) // responses first
            .then((data) => {
                if (data && !this.sentIds.has(id) && !this.exiting && !this.hung) {
                    this.sendEvent(EVENTS.MESSAGE, { ...data, from_me: true });
                }
                this.releaseAcks(id);
            })
            .catch((err) => log('error', 'own message %s: %s', id, describeError(err)));
    }

    releaseAcks(id) {
        const acks = this.heldAcks.get(id);
        if (!acks) return;
        this.heldAcks.delete(id);
        if (this.exiting || this.hung) return;
        for (const ack of acks) this.sendEvent(EVENTS.MESSAGE_ACK, ack);
    }

    // The driver's send, tracked so that its message_create echo can be recognised (ownMessage).
    async trackedSend(msg) {
        const p = Promise.resolve().then(() => this.driver.send(msg));
        this.sending.add(p);
        try {
            const result = await p;
            if (result && typeof result.id === 'string') {
                this.sentIds.set(result.id, true);
                if (this.sentIds.size > SENT_IDS_MAX) this.sentIds.delete(this.sentIds.keys().next().value);
                // Its echo is waiting (for other sends too): its acks need not, once the response is out.
                if (this.heldAcks.has(result.id)) setImmediate(() => this.releaseAcks(result.id));
            }
            return result;
        } finally {
            this.sending.delete(p);
        }
    }

    setBrowser(pid, userDataDir) {
        this.browserPid = pid || null;
        this.userDataDir = userDataDir || null;
        log('info', 'browser pid=%s user_data_dir=%s', pid, userDataDir);
        this.sendEvent(EVENTS.BROWSER, { browser_pid: this.browserPid, user_data_dir: this.userDataDir });
    }

    heartbeat() {
        if (this.hung || this.exiting) return;
        this.heartbeatSeq += 1;
        this.sendEvent(EVENTS.HEARTBEAT, {
            uptime_ms: Date.now() - this.startedAt,
            rss_bytes: process.memoryUsage.rss(),
            seq: this.heartbeatSeq,
            state: this.state,
        });
    }

    // -- lifecycle --
    async start() {
        const o = this.opts;
        this.sendEvent(EVENTS.HELLO, {
            protocol: protocol.PROTOCOL_VERSION,
            bridge_version: BRIDGE_VERSION,
            node_version: process.versions.node,
            wwebjs_version: readWwebjsVersion(),
            driver: o.driver,
            pid: process.pid,
            browser_pid: null,
            tenant: o.tenant,
            session_dir: o.sessionDir,
            tmpdir: process.env.TMPDIR,
            heartbeat_ms: o.heartbeatMs,
        });
        this.setState(STATES.STARTING);
        this.heartbeatTimer = setInterval(() => this.heartbeat(), o.heartbeatMs);
        this.heartbeat();

        const Driver = o.driver === 'wwebjs' ? require('./drivers/wwebjs') : require('./drivers/scripted');
        this.driver = new Driver({
            tenant: o.tenant,
            sessionDir: o.sessionDir,
            opts: o,
            log,
            emit: (name, data) => this.driverEvent(name, data),
            ownMessage: (id, dataPromise) => this.ownMessage(id, dataPromise),
            setBrowser: (pid, dir) => this.setBrowser(pid, dir),
            fatal: (code, message, exitCode) => this.fatal(code, message, exitCode),
            hang: () => this.hang(),
        });
        try {
            await this.driver.start();
        } catch (err) {
            this.fatal('init_failed', `initialize failed: ${describeError(err)}`, EXIT_CODES.FATAL);
        }
    }

    hang() {
        log('warn', 'sandbox hang: heartbeats and command answers stop now');
        this.hung = true;
    }

    exit(code) {
        log('info', 'exit code=%d', code);
        if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
        process.exit(code);
    }

    // Runs fn (the driver's teardown) within --stop-timeout-ms; resolves true if it finished.
    async bounded(fn) {
        let timer;
        const timeout = new Promise((resolve) => {
            timer = setTimeout(() => resolve(false), this.opts.stopTimeoutMs);
        });
        const work = Promise.resolve()
            .then(fn)
            .then(
                () => true,
                (err) => {
                    log('error', 'teardown failed: %s', describeError(err));
                    return true;
                },
            );
        const done = await Promise.race([work, timeout]);
        clearTimeout(timer);
        if (!done) log('error', 'teardown did not finish within %d ms', this.opts.stopTimeoutMs);
        return done;
    }

    // Orderly end: stop command, logout command, or a signal.
    async shutdown(kind) {
        if (this.exiting) return;
        this.exiting = true;
        log('info', 'shutting down (%s)', kind);
        let finished;
        if (kind === 'logout') {
            finished = await this.bounded(() => this.driver && this.driver.logout());
        } else {
            finished = await this.bounded(() => this.driver && this.driver.stop({ reason: kind }));
        }
        this.exit(finished ? EXIT_CODES.CLEAN : EXIT_CODES.STOP_TIMEOUT);
    }

    // Every fatal path: report, tear down within a bound, exit non-zero.
    async fatal(code, message, exitCode = EXIT_CODES.FATAL, { reason = null, wipe = false } = {}) {
        if (this.exiting) {
            log('warn', 'fatal %s while exiting: %s', code, message);
            return;
        }
        this.exiting = true;
        log('error', 'fatal code=%s: %s', code, message);
        this.sendEvent(EVENTS.ERROR, { code, message, fatal: true });
        this.state = null; // force the state event even if already disconnected
        this.setState(STATES.DISCONNECTED, reason || code);
        await this.bounded(() => this.driver && this.driver.stop({ reason: code, wipe }));
        this.exit(exitCode);
    }

    // -- commands --
    async handleLine(line) {
        if (this.hung) return; // a hung bridge answers nothing
        if (!line.trim()) return;
        let id = null;
        try {
            const cmd = protocol.parseCommand(line);
            id = cmd.id;
            const result = await this.dispatch(cmd.cmd, cmd.args);
            if (this.hung && cmd.cmd !== COMMANDS.SANDBOX_HANG) return;
            if (result !== undefined) this.write(protocol.okResponse(id, result));
        } catch (err) {
            if (this.hung) return;
            if (err instanceof CommandError) {
                if (err.id !== undefined && id === null) id = err.id;
                this.write(protocol.errorResponse(id, err.code, err.message));
            } else {
                log('error', 'command failed: %s', (err && err.stack) || describeError(err));
                const code = err && err.bridgeCode ? err.bridgeCode : E.INTERNAL;
                this.write(protocol.errorResponse(id, code, describeError(err)));
            }
        }
    }

    requireReady() {
        if (this.state !== STATES.READY) {
            throw new CommandError(E.NOT_READY, `session is not ready (state ${this.state})`);
        }
    }

    async dispatch(cmd, args) {
        if (this.exiting) throw new CommandError(E.STOPPING, 'the bridge is shutting down');
        switch (cmd) {
            case COMMANDS.GET_STATE:
                return this.stateSnapshot();
            case COMMANDS.SEND: {
                const msg = normalizeSend(args);
                this.requireReady();
                return this.trackedSend(msg);
            }
            case COMMANDS.MARK_READ: {
                const { chatId } = normalizeChatId(args.chat_id, 'chat_id');
                this.requireReady();
                await this.driver.markRead(chatId);
                return {};
            }
            case COMMANDS.REQUEST_PAIRING_CODE: {
                const phone = String(args.phone || '').replace(/[\s()+-]/g, '');
                if (!/^\d{5,20}$/.test(phone)) throw badRequest('"phone" must be a phone number in digits');
                if (this.state === STATES.STARTING) {
                    throw new CommandError(E.NOT_READY, 'the login page is not up yet');
                }
                if (this.state !== STATES.QR) {
                    throw new CommandError(E.INVALID_STATE, `pairing needs state qr (state ${this.state})`);
                }
                return { code: await this.driver.requestPairingCode(phone) };
            }
            case COMMANDS.STOP:
            case COMMANDS.LOGOUT:
                // Answer first, then tear down; the exit code tells how it went.
                setImmediate(() => this.shutdown(cmd));
                return {};
            default:
                if (cmd.startsWith('sandbox.')) return this.dispatchSandbox(cmd, args);
                throw new CommandError(E.UNKNOWN_COMMAND, `unknown command: ${cmd}`);
        }
    }

    async dispatchSandbox(cmd, args) {
        if (!Object.values(COMMANDS).includes(cmd)) {
            throw new CommandError(E.UNKNOWN_COMMAND, `unknown command: ${cmd}`);
        }
        const fn = this.driver.sandbox && this.driver.sandbox[cmd];
        if (!fn) throw new CommandError(E.NOT_SUPPORTED, `${cmd} needs the scripted driver`);
        return fn.call(this.driver, args, { normalizeChatId, normalizeMedia, normalizeLocation });
    }

    stateSnapshot() {
        const s = {
            state: this.state,
            browser_pid: this.browserPid,
            qr_attempt: this.qrAttempt,
            uptime_ms: Date.now() - this.startedAt,
        };
        if (this.stateReason) s.reason = this.stateReason;
        if (this.wid) {
            s.wid = this.wid;
            s.number = this.number;
            if (this.pushname) s.pushname = this.pushname;
        }
        return s;
    }
}

// Own messages wait at most this long for the sends in flight when they appeared (longer than the
// control plane's send timeout, 60 s: a send still unanswered then is no longer awaited there).
const OWN_MESSAGE_HOLD_MS = 90000;
const SENT_IDS_MAX = 10000;

function settledWithin(promises, ms) {
    let timer;
    const timeout = new Promise((resolve) => {
        timer = setTimeout(resolve, ms);
    });
    return Promise.race([Promise.allSettled(promises), timeout]).finally(() => clearTimeout(timer));
}

// Chromium binds $TMPDIR/.org.chromium.Chromium.XXXXXX/SingletonSocket, a unix socket whose path
// must fit in 107 bytes; a deep session folder makes the browser die at launch ("Target closed").
// Then TMPDIR becomes a short symlink, /tmp/wabridge-<hash>, to the same <session-dir>/tmp, so the
// files still live in the session folder. One symlink per session folder, reused across restarts.
const CHROMIUM_SOCKET_SUFFIX = '/.org.chromium.Chromium.XXXXXX/SingletonSocket'.length;
const MAX_SOCKET_PATH = 107;

function shortTmpDir(tmp) {
    if (tmp.length + CHROMIUM_SOCKET_SUFFIX <= MAX_SOCKET_PATH) return tmp;
    const hash = require('crypto').createHash('sha256').update(tmp).digest('hex').slice(0, 16);
    const link = path.join('/tmp', `wabridge-${hash}`);
    try {
        if (fs.readlinkSync(link) === tmp) return link;
        fs.unlinkSync(link);
    } catch (e) {
        if (e.code !== 'ENOENT') log('warn', 'replacing %s: %s', link, e.message);
    }
    try {
        fs.symlinkSync(tmp, link);
    } catch (e) {
        if (e.code !== 'EEXIST') throw e;
    }
    log('info', 'TMPDIR %s is too long for Chromium sockets, using %s -> it', tmp, link);
    return link;
}

// --- process wiring ----------------------------------------------------------------------------
function main() {
    const opts = parseCli(process.argv.slice(2));
    logTenant = opts.tenant;

    // Every temporary file of this session (Chromium's included) lives in the session folder.
    fs.mkdirSync(opts.sessionDir, { recursive: true, mode: 0o700 });
    const tmp = path.join(opts.sessionDir, 'tmp');
    fs.mkdirSync(tmp, { recursive: true, mode: 0o700 });
    // Only this process uses this folder: whatever is in it was left by a predecessor killed hard.
    for (const name of fs.readdirSync(tmp)) fs.rmSync(path.join(tmp, name), { recursive: true, force: true });
    process.env.TMPDIR = shortTmpDir(tmp);

    const bridge = new Bridge(opts);

    process.stdout.on('error', (err) => bridge.onStdoutError(err));
    onStderrBroken = () =>
        bridge.fatal('stderr_closed', 'stderr closed: control plane went away', EXIT_CODES.STDIN_CLOSED);
    process.on('uncaughtException', (err) => {
        log('error', 'uncaught exception: %s', (err && err.stack) || describeError(err));
        bridge.fatal('uncaught_exception', describeError(err), EXIT_CODES.FATAL);
    });
    process.on('unhandledRejection', (err) => {
        log('error', 'unhandled rejection: %s', (err && err.stack) || describeError(err));
        bridge.fatal('unhandled_rejection', describeError(err), EXIT_CODES.FATAL);
    });
    let signals = 0;
    for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
        process.on(sig, () => {
            signals += 1;
            log('info', 'received %s', sig);
            if (signals > 1 && bridge.exiting) bridge.exit(EXIT_CODES.STOP_TIMEOUT);
            bridge.shutdown('signal');
        });
    }

    const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
    rl.on('line', (line) => {
        bridge.handleLine(line);
    });
    rl.on('close', () => {
        bridge.fatal('stdin_closed', 'stdin closed: control plane went away', EXIT_CODES.STDIN_CLOSED);
    });

    bridge.start();
}

main();
