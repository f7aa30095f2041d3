'use strict';
// Scripted driver: plays WhatsApp's part for sandbox tenants and tests, through the same bridge
// code as the real driver. QR codes rotate until `sandbox.scan`; the scan is remembered in
// <session-dir>/scripted-auth.json so the next start restores the session like LocalAuth does.

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const { CommandError, ERROR_CODES: E, EVENTS, STATES, ackStatus } = require('../protocol');
const { InOrder, LidResolver, keyChat } = require('../driver_events');

const AUTH_FILE = 'scripted-auth.json';
const MESSAGE_TYPES = new Set([
    'chat', 'text', 'image', 'document', 'audio', 'ptt', 'video', 'sticker', 'location', 'poll_creation',
]);
const STATUS_CHAT = 'status@broadcast';
const KNOWN_MESSAGES_MAX = 10000;
const GROUP_JOIN_TYPES = new Set(['add', 'invite', 'linked_group_join']);
const GROUP_LEAVE_TYPES = new Set(['remove', 'leave']);

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
        // What WhatsApp Web would know: @lid users' numbers (sandbox.contact), and the messages
        // this session saw (for the previous body of an edit or revoke, and a poll's options).
        this.lidPhones = new Map();
        this.resolver = new LidResolver((lid) => this.lidPhones.get(lid) || null, ctx.log);
        this.out = new InOrder((name, data) => this.emit(name, data), ctx.log);
        this.known = new Map(); // message id -> {body, poll}
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
            'sandbox.reaction': this.reaction,
            'sandbox.edit': this.edit,
            'sandbox.revoke': this.revoke,
            'sandbox.vote': this.vote,
            'sandbox.group_join': (args, helpers) => this.group(EVENTS.GROUP_JOIN, args, helpers),
            'sandbox.group_leave': (args, helpers) => this.group(EVENTS.GROUP_LEAVE, args, helpers),
            'sandbox.call': this.call,
            'sandbox.contact': this.contact,
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
        const poll = args.poll !== undefined && args.poll !== null ? normalizePoll(args.poll) : null;
        let type = args.type || (poll ? 'poll_creation' : location ? 'location' : media ? 'image' : 'chat');
        if (!MESSAGE_TYPES.has(type)) throw new CommandError(E.BAD_REQUEST, `unknown message type ${type}`);
        if (type === 'text') type = 'chat';
        if (type === 'chat' && (typeof args.text !== 'string' || !args.text)) {
            throw new CommandError(E.BAD_REQUEST, '"text" is required for a chat message');
        }
        if (type === 'poll_creation' && !poll) throw new CommandError(E.BAD_REQUEST, '"poll" is required for a poll');
        // In a group (and on status@broadcast) whatsapp-web.js names the member who wrote in `author`,
        // and appends them to the message id.
        const shared = chatId.endsWith('@g.us') || chatId === STATUS_CHAT;
        let author = null;
        if (shared && !fromMe) {
            if (args.author === undefined || args.author === null) {
                throw new CommandError(E.BAD_REQUEST, '"author" (the member who wrote) is required in a group');
            }
            author = normalizeChatId(args.author, 'author').chatId;
        } else if (shared) {
            author = this.wid;
        }
        const body = args.text || (poll && poll.name) || (location && location.description) || '';
        const id = `${fromMe ? 'true' : 'false'}_${chatId}_${randomHex(10)}${author && !fromMe ? `_${author}` : ''}`;
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
        if (poll) msg.poll = poll;
        if (author) msg.author = author;
        if (args.quoted_id) msg.quoted_id = String(args.quoted_id);
        if (args.notify_name && !fromMe) msg.notify_name = String(args.notify_name);
        this.remember(id, { body, poll });
        return msg;
    }

    remember(id, facts) {
        if (this.known.size >= KNOWN_MESSAGES_MAX) this.known.delete(this.known.keys().next().value);
        this.known.set(id, facts);
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
        this.out.push(EVENTS.MESSAGE, this.resolver.resolve(msg, ['chat_id', 'from', 'author']));
        return { id: msg.id };
    }

    // The phone itself sends a message (typed on the phone): reported like wwebjs' message_create,
    // then acked 1 (sent) ~30 ms later, like a send.
    async outgoing(args, helpers) {
        const msg = this.buildMessage(args, helpers, { field: 'to', fromMe: true });
        this.sent.set(msg.id, msg.chat_id);
        this.ctx.ownMessage(msg.id, this.resolver.resolve(msg, ['chat_id', 'to']));
        this.later(30, () =>
            this.emit(EVENTS.MESSAGE_ACK, { id: msg.id, to: msg.chat_id, ack: 1, status: ackStatus(1) }),
        );
        return { id: msg.id };
    }

    // -- what contacts do to messages and chats (through the same lid resolution and ordering as wwebjs)

    // The actor of a change: `from` (digits or an id), or this account with `from_me`, or by default
    // the contact of the target's chat (a group needs `from`).
    changeBase(args, normalizeChatId) {
        this.requireReady();
        if (typeof args.target !== 'string' || !keyChat(args.target)) {
            throw new CommandError(E.BAD_REQUEST, '"target" must be a message id (true_<chat id>_<id>...)');
        }
        const chatId = keyChat(args.target);
        const fromMe = Boolean(args.from_me);
        let actor;
        if (fromMe) actor = this.wid;
        else if (args.from !== undefined && args.from !== null) actor = normalizeChatId(args.from, 'from').chatId;
        else if (chatId.endsWith('@g.us')) throw new CommandError(E.BAD_REQUEST, '"from" is required in a group');
        else actor = chatId;
        const id = `${fromMe}_${chatId}_${randomHex(10)}${chatId.endsWith('@g.us') && !fromMe ? `_${actor}` : ''}`;
        return { id, target: args.target, chat_id: chatId, actor, from_me: fromMe, timestamp_ms: Date.now() };
    }

    pushChange(name, data) {
        this.out.push(name, this.resolver.resolve(data, ['actor', 'chat_id']));
        return { id: data.id };
    }

    async reaction(args, { normalizeChatId }) {
        const data = this.changeBase(args, normalizeChatId);
        if (typeof args.emoji !== 'string' || [...args.emoji].length > 16) {
            throw new CommandError(E.BAD_REQUEST, '"emoji" must be a string ("" removes the reaction)');
        }
        return this.pushChange(EVENTS.MESSAGE_REACTION, { ...data, emoji: args.emoji });
    }

    async edit(args, { normalizeChatId }) {
        const data = this.changeBase(args, normalizeChatId);
        if (typeof args.body !== 'string' || !args.body) throw new CommandError(E.BAD_REQUEST, '"body" is required');
        const known = this.known.get(args.target);
        const prev = known ? known.body : null;
        if (known) known.body = args.body;
        return this.pushChange(EVENTS.MESSAGE_EDIT, { ...data, body: args.body, prev_body: prev });
    }

    async revoke(args, { normalizeChatId }) {
        const data = this.changeBase(args, normalizeChatId);
        const known = this.known.get(args.target);
        this.known.delete(args.target);
        return this.pushChange(EVENTS.MESSAGE_REVOKE, { ...data, prev_body: known ? known.body : null });
    }

    // A vote on a poll: `options` is the voter's whole current choice (names), [] withdraws it.
    async vote(args, { normalizeChatId }) {
        const data = this.changeBase(args, normalizeChatId);
        if (!Array.isArray(args.options) || !args.options.every((o) => typeof o === 'string')) {
            throw new CommandError(E.BAD_REQUEST, '"options" must be a list of option names');
        }
        const poll = (this.known.get(args.target) || {}).poll;
        const options = args.options.map((name) => {
            const localId = poll ? poll.options.indexOf(name) : args.options.indexOf(name);
            if (localId < 0) throw new CommandError(E.BAD_REQUEST, `the poll has no option ${JSON.stringify(name)}`);
            return { name, local_id: localId };
        });
        return this.pushChange(EVENTS.VOTE_UPDATE, { ...data, id: null, options });
    }

    // Members join or leave a group (`type`: add | invite | linked_group_join, remove | leave),
    // `by` the admin who added or removed them (null when they came or went themselves).
    async group(name, args, { normalizeChatId }) {
        this.requireReady();
        const { chatId } = normalizeChatId(args.group, 'group');
        if (!chatId.endsWith('@g.us')) throw new CommandError(E.BAD_REQUEST, '"group" must be a group id (...@g.us)');
        const types = name === EVENTS.GROUP_JOIN ? GROUP_JOIN_TYPES : GROUP_LEAVE_TYPES;
        const type = args.type === undefined ? [...types][0] : args.type;
        if (!types.has(type)) throw new CommandError(E.BAD_REQUEST, `"type" must be one of ${[...types].join(', ')}`);
        if (!Array.isArray(args.members) || !args.members.length || args.members.length > 256) {
            throw new CommandError(E.BAD_REQUEST, '"members" must be a list of 1..256 ids');
        }
        const members = args.members.map((m) => normalizeChatId(m, 'members').chatId);
        const by = args.by === undefined || args.by === null ? null : normalizeChatId(args.by, 'by').chatId;
        const id = `false_${chatId}_${randomHex(10)}_${by || members[0]}`;
        const data = { id, chat_id: chatId, type, members, by, timestamp_ms: Date.now() };
        this.out.push(name, this.resolver.resolve(data, ['members', 'by']));
        return { id };
    }

    async call(args, { normalizeChatId }) {
        this.requireReady();
        const { chatId } = normalizeChatId(args.from, 'from');
        const data = {
            id: randomHex(16),
            from: chatId,
            from_me: false,
            video: Boolean(args.video),
            group: Boolean(args.group),
            timestamp_ms: Date.now(),
        };
        this.out.push(EVENTS.CALL, this.resolver.resolve(data, ['from']));
        return { id: data.id };
    }

    // WhatsApp Web learns the phone number of an @lid user: later events resolve it.
    async contact(args) {
        if (typeof args.lid !== 'string' || !/^\d{1,24}@lid$/.test(args.lid)) {
            throw new CommandError(E.BAD_REQUEST, '"lid" must be an @lid id (<digits>@lid)');
        }
        const phone = String(args.phone || '').replace(/[\s()+-]/g, '');
        if (!/^\d{5,20}$/.test(phone)) throw new CommandError(E.BAD_REQUEST, '"phone" must be a phone number in digits');
        this.lidPhones.set(args.lid, `${phone}@c.us`);
        this.resolver.forget(args.lid);
        return {};
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

function normalizePoll(poll) {
    if (!poll || typeof poll !== 'object' || typeof poll.name !== 'string' || !poll.name) {
        throw new CommandError(E.BAD_REQUEST, '"poll" must be {name, options}');
    }
    const options = poll.options;
    if (!Array.isArray(options) || options.length < 2 || options.length > 12) {
        throw new CommandError(E.BAD_REQUEST, '"poll.options" must be a list of 2..12 names');
    }
    if (!options.every((o) => typeof o === 'string' && o) || new Set(options).size !== options.length) {
        throw new CommandError(E.BAD_REQUEST, '"poll.options" must be distinct non-empty names');
    }
    return { name: poll.name, options: [...options] };
}

module.exports = ScriptedDriver;
