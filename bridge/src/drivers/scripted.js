'use strict';
// Scripted driver: plays WhatsApp's part for sandbox tenants and tests, through the same bridge
// code as the real driver. QR codes rotate until `sandbox.scan`; the scan is remembered in
// <session-dir>/scripted-auth.json so the next start restores the session like LocalAuth does.

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const { CommandError, ERROR_CODES: E, EVENTS, STATES, ackStatus } = require('../protocol');

const AUTH_FILE = 'scripted-auth.json';
const MESSAGE_TYPES = new Set(['chat', 'text', 'image', 'document', 'audio', 'ptt', 'video', 'sticker', 'location']);

function randomHex(bytes) {
    return crypto.randomBytes(bytes).toString('hex').toUpperCase();
}

// Deterministic fictional number per tenant: 1555 + 7 digits from the tenant id's hash.
function ownNumber(tenant) {
    const h = crypto.createHash('sha256').update(String(tenant)).digest();
    return `1555${String(h.readUInt32BE(0) % 10000000).padStart(7, '0')}`;
}

function fakeQr() {
    const b64 = (n) => crypto.randomBytes(n).toString('base64');
    return `2@${b64(48)},${b64(32)},${b64(32)},${b64(32)},1`;
}

class ScriptedDriver {
    constructor(ctx) {
        this.ctx = ctx;
        this.authPath = path.join(ctx.sessionDir, AUTH_FILE);
        this.number = ownNumber(ctx.tenant);
        this.wid = `${this.number}@c.us`;
        this.state = STATES.STARTING;
        this.timers = new Set();
        this.sent = new Map(); // message id -> chat id, for sandbox.ack
        this.hung = false;
        this.leaks = [];
        this.sandbox = {
            'sandbox.scan': this.scan,
            'sandbox.incoming': this.incoming,
            'sandbox.ack': this.ack,
            'sandbox.disconnect': this.disconnect,
            'sandbox.crash': this.crash,
            'sandbox.hang': this.hang,
            'sandbox.leak': this.leak,
            'sandbox.logout': this.phoneLogout,
            'sandbox.outgoing': this.outgoing,
        };
    }

    later(ms, fn) {
        const t = setTimeout(() => {
            this.timers.delete(t);
            if (!this.hung) fn();
        }, ms);
        this.timers.add(t);
    }

    clearTimers() {
        for (const t of this.timers) clearTimeout(t);
        this.timers.clear();
    }

    emit(name, data) {
        if (!this.hung) this.ctx.emit(name, data);
    }

    async start() {
        if (fs.existsSync(this.authPath)) {
            this.ctx.log('info', 'scripted: restoring saved session');
            this.later(20, () => this.authenticate());
        } else {
            this.later(20, () => this.showQr());
        }
    }

    showQr() {
        if (this.state !== STATES.STARTING && this.state !== STATES.QR) return;
        this.state = STATES.QR;
        this.emit(EVENTS.QR, { qr: fakeQr() });
        this.later(this.ctx.opts.qrIntervalMs, () => this.showQr());
    }

    authenticate() {
        this.clearTimers();
        this.state = STATES.AUTHENTICATED;
        this.emit(EVENTS.AUTHENTICATED, {});
        this.later(30, () => {
            this.state = STATES.READY;
            this.emit(EVENTS.READY, { wid: this.wid, number: this.number, pushname: `Sandbox ${this.ctx.tenant}` });
        });
    }

    requireReady() {
        if (this.state !== STATES.READY) throw new CommandError(E.NOT_READY, `session is not ready (state ${this.state})`);
    }

    // --- driver interface ---
    async stop() {
        if (this.hung) return new Promise(() => {}); // a wedged session never finishes tearing down
        this.clearTimers();
    }

    async logout() {
        await this.stop();
        fs.rmSync(this.authPath, { force: true });
    }

    async wipe() {
        fs.rmSync(this.authPath, { force: true });
    }

    async send(msg) {
        this.requireReady();
        if (msg.media && msg.media.base64 !== undefined && Buffer.from(msg.media.base64, 'base64').length === 0) {
            throw new CommandError(E.BAD_REQUEST, 'media.base64 decodes to nothing');
        }
        const id = `true_${msg.chatId}_${randomHex(10)}`;
        this.sent.set(id, msg.chatId);
        // whatsapp-web.js fires message_create for our own sends too, before sendMessage resolves:
        // the bridge must recognise the echo and drop it (Bridge.ownMessage).
        const echoType = msg.type === 'text' ? 'chat' : msg.type;
        const echo = this.ownMessageData(id, msg.chatId, echoType, msg.text || '');
        this.ctx.ownMessage(id, Promise.resolve(echo));
        this.later(30, () => this.emit(EVENTS.MESSAGE_ACK, { id, to: msg.chatId, ack: 1, status: ackStatus(1) }));
        return { id, timestamp: Math.floor(Date.now() / 1000) };
    }

    async markRead(chatId) {
        this.requireReady();
        return chatId;
    }

    async requestPairingCode(phone) {
        const alphabet = 'ABCDEFGHJKLMNPQRSTVWXYZ0123456789';
        const code = Array.from(crypto.randomBytes(8), (b) => alphabet[b % alphabet.length]).join('');
        this.emit(EVENTS.CODE, { code, phone });
        return code;
    }

    // --- sandbox hooks (this = driver) ---
    async scan() {
        if (this.state !== STATES.QR) {
            throw new CommandError(E.INVALID_STATE, `nothing to scan (state ${this.state})`);
        }
        fs.writeFileSync(this.authPath, JSON.stringify({ wid: this.wid, saved_at: Date.now() }), { mode: 0o600 });
        this.later(10, () => this.authenticate());
        return {};
    }

    // Builds a `message` event's data from sandbox arguments (sandbox.incoming / sandbox.outgoing).
    buildMessage(args, { normalizeChatId, normalizeMedia, normalizeLocation }, { field, fromMe }) {
        this.requireReady();
        const { chatId } = normalizeChatId(args[field], field);
        const media = args.media ? normalizeMedia(args.media) : null;
        const location = args.location ? normalizeLocation(args.location) : null;
        let type = args.type || (location ? 'location' : media ? 'image' : 'chat');
        if (!MESSAGE_TYPES.has(type)) throw new CommandError(E.BAD_REQUEST, `unknown message type ${type}`);
        if (type === 'text') type = 'chat';
        if (type === 'chat' && (typeof args.text !== 'string' || !args.text)) {
            throw new CommandError(E.BAD_REQUEST, '"text" is required for a chat message');
        }
        const body = args.text || (location && location.description) || '';
        const id = `${fromMe ? 'true' : 'false'}_${chatId}_${randomHex(10)}`;
        const msg = fromMe ? this.ownMessageData(id, chatId, type, body) : {
            id,
            chat_id: chatId,
            from: chatId,
            to: this.wid,
            from_me: false,
            type,
            body,
            timestamp: Date.now() / 1000, // milliseconds kept (whatsapp-web.js gives whole seconds)
            has_media: false,
        };
        msg.has_media = Boolean(media);
        if (media) {
            msg.media = { mimetype: media.mimetype || 'application/octet-stream', filename: media.filename || null };
            if (media.base64 !== undefined) msg.media.data = media.base64;
            else if (media.path) msg.media.data = fs.readFileSync(media.path).toString('base64');
            else msg.media.url = media.url;
        }
        if (location) msg.location = location;
        if (args.quoted_id) msg.quoted_id = String(args.quoted_id);
        if (args.notify_name && !fromMe) msg.notify_name = String(args.notify_name);
        return msg;
    }

    ownMessageData(id, chatId, type, body) {
        return {
            id,
            chat_id: chatId,
            from: this.wid,
            to: chatId,
            from_me: true,
            type,
            body,
            timestamp: Date.now() / 1000, // milliseconds kept (whatsapp-web.js gives whole seconds)
            has_media: false,
        };
    }

    async incoming(args, helpers) {
        const msg = this.buildMessage(args, helpers, { field: 'from', fromMe: false });
        this.emit(EVENTS.MESSAGE, msg);
        return { id: msg.id };
    }

    // The phone itself sends a message (typed on the phone): reported like wwebjs' message_create,
    // then acked 1 (sent) ~30 ms later, like a send.
    async outgoing(args, helpers) {
        const msg = this.buildMessage(args, helpers, { field: 'to', fromMe: true });
        this.sent.set(msg.id, msg.chat_id);
        this.ctx.ownMessage(msg.id, Promise.resolve(msg));
        this.later(30, () =>
            this.emit(EVENTS.MESSAGE_ACK, { id: msg.id, to: msg.chat_id, ack: 1, status: ackStatus(1) }),
        );
        return { id: msg.id };
    }

    async ack(args) {
        const ack = args.ack;
        if (!Number.isInteger(ack) || ack < -1 || ack > 4) throw new CommandError(E.BAD_REQUEST, '"ack" must be -1..4');
        if (typeof args.id !== 'string') throw new CommandError(E.BAD_REQUEST, '"id" must be a message id');
        let to = this.sent.get(args.id);
        if (!to) {
            const m = /^(?:true|false)_([^_]+@[^_]+)_/.exec(args.id);
            if (!m) throw new CommandError(E.BAD_REQUEST, `unknown message id ${args.id}`);
            to = m[1];
        }
        this.emit(EVENTS.MESSAGE_ACK, { id: args.id, to, ack, status: ackStatus(ack) });
        return {};
    }

    async disconnect(args) {
        const reason = typeof args.reason === 'string' && args.reason ? args.reason : 'NAVIGATION';
        this.clearTimers();
        setImmediate(() => this.ctx.emit(EVENTS.DISCONNECTED, { reason }));
        return {};
    }

    async phoneLogout() {
        this.clearTimers();
        fs.rmSync(this.authPath, { force: true });
        setImmediate(() => this.ctx.emit(EVENTS.DISCONNECTED, { reason: 'LOGOUT' }));
        return {};
    }

    async crash(args) {
        const code = args.exit_code;
        if (code !== undefined && (!Number.isInteger(code) || code < 1 || code > 255)) {
            throw new CommandError(E.BAD_REQUEST, '"exit_code" must be 1..255');
        }
        // Answered, then gone on the next tick: no error event, no state, no cleanup.
        setImmediate(() => {
            if (code === undefined) process.kill(process.pid, 'SIGKILL');
            else process.reallyExit(code);
        });
        return {};
    }

    async hang() {
        this.hung = true;
        this.clearTimers();
        this.ctx.hang();
        return {};
    }

    async leak(args) {
        const mb = args.mb;
        if (typeof mb !== 'number' || !(mb > 0) || mb > 16384) throw new CommandError(E.BAD_REQUEST, '"mb" must be 1..16384');
        const buf = Buffer.alloc(Math.round(mb * 1024 * 1024), 0xa5); // filled, so it is resident
        this.leaks.push(buf);
        const held = this.leaks.reduce((n, b) => n + b.length, 0);
        return { held_bytes: held, rss_bytes: process.memoryUsage.rss() };
    }
}

module.exports = ScriptedDriver;
