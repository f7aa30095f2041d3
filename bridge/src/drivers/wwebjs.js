'use strict';
// Real driver: whatsapp-web.js with LocalAuth in the tenant's session folder and Debian's
// Chromium over a pipe (pipe:true: Chromium exits by itself when node dies, even on SIGKILL).
// Every failure ends in ctx.fatal / a rejected start(): main.js reports it and exits non-zero,
// because the library itself leaves node running with the browser open (see the reference).

const fs = require('fs');
const path = require('path');
const { Client, LocalAuth, MessageMedia, Location } = require('whatsapp-web.js');

const { CommandError, ERROR_CODES: E, EVENTS, ackStatus } = require('../protocol');
const { InOrder, LidResolver, keyChat, serializeKey, serializeWid } = require('../driver_events');

const CLIENT_ID = 'session'; // profile: <session-dir>/session-session
const SINGLETON_FILES = ['SingletonLock', 'SingletonSocket', 'SingletonCookie'];
const BROWSER_CLOSE_MS = 3000;
const STATUS_CHAT = 'status@broadcast';

function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

function pidAlive(pid) {
    try {
        process.kill(pid, 0);
        return true;
    } catch (e) {
        return e.code === 'EPERM';
    }
}

function lexists(p) {
    try {
        fs.lstatSync(p);
        return true;
    } catch {
        return false;
    }
}

// LocalAuth that tells the bridge as soon as Chromium is up (before the page even loads).
class ReportingLocalAuth extends LocalAuth {
    constructor(options, onBrowser) {
        super(options);
        this.onBrowser = onBrowser;
    }

    async afterBrowserInitialized() {
        await super.afterBrowserInitialized();
        this.onBrowser(this.client.pupBrowser);
    }
}

class WwebjsDriver {
    constructor(ctx) {
        this.ctx = ctx;
        this.sandbox = null; // sandbox.* commands are refused with not_supported
        this.profileDir = path.join(ctx.sessionDir, `session-${CLIENT_ID}`);
        this.browser = null;
        this.browserPid = null;
        this.stopping = false;
        this.pairingPhone = null;
        this.resolver = new LidResolver((lid) => this.lookupLid(lid), ctx.log);
        this.out = new InOrder(ctx.emit, ctx.log); // events in the order the library fired them
        this.client = this.makeClient();
    }

    makeClient() {
        const { sessionDir, opts } = this.ctx;
        const client = new Client({
            authStrategy: new ReportingLocalAuth({ clientId: CLIENT_ID, dataPath: sessionDir }, (b) =>
                this.onBrowser(b),
            ),
            puppeteer: {
                executablePath: opts.chromePath,
                pipe: true,
                headless: true,
                handleSIGTERM: false,
                handleSIGINT: false,
                handleSIGHUP: false,
                args: [
                    '--no-sandbox',
                    '--disable-gpu',
                    '--disable-dev-shm-usage',
                    '--disable-background-networking',
                    '--disable-component-update',
                    '--disable-sync',
                    '--no-first-run',
                    `--disk-cache-dir=${path.join(sessionDir, 'cache')}`,
                ],
            },
            webVersionCache: { type: 'none' },
            qrMaxRetries: 0, // the supervisor owns the QR TTL and cycle limit
            takeoverOnConflict: false,
        });
        this.wire(client);
        return client;
    }

    onBrowser(browser) {
        if (this.browser === browser) return;
        this.browser = browser;
        const proc = browser.process();
        this.browserPid = proc ? proc.pid : null;
        this.ctx.setBrowser(this.browserPid, this.profileDir);
        browser.on('disconnected', () => {
            if (this.stopping) return;
            this.ctx.fatal('browser_gone', 'Chromium exited or its pipe closed', 1);
        });
    }

    wire(client) {
        const { emit, log, fatal } = this.ctx;
        client.on('qr', (qr) => emit(EVENTS.QR, { qr }));
        client.on('code', (code) => emit(EVENTS.CODE, { code, phone: this.pairingPhone }));
        client.on('authenticated', () => emit(EVENTS.AUTHENTICATED, {}));
        client.on('auth_failure', (msg) => fatal('auth_failure', `authentication failed: ${msg}`, 1));
        client.on('ready', () => {
            const info = client.info || {};
            const wid = info.wid ? info.wid._serialized : null;
            emit(EVENTS.READY, { wid, number: wid ? wid.split('@')[0] : null, pushname: info.pushname || null });
        });
        client.on('loading_screen', (percent) => log('info', 'loading %s%%', percent));
        client.on('change_state', (state) => log('info', 'whatsapp state %s', state));
        client.on('disconnected', (reason) => emit(EVENTS.DISCONNECTED, { reason: String(reason) }));
        client.on('message', (msg) => this.out.push(EVENTS.MESSAGE, this.normalize(msg)));
        // message_create fires for every message created, ours included: the fromMe ones are typed on
        // the phone, or our own sends coming back (the bridge drops those: Bridge.ownMessage).
        client.on('message_create', (msg) => this.onMessageCreate(msg));
        client.on('message_ack', (msg, ack) => {
            emit(EVENTS.MESSAGE_ACK, { id: msg.id._serialized, to: msg.to, ack, status: ackStatus(ack) });
        });
        // What contacts do to messages and chats: mapped to the protocol (PROTOCOL.md), @lid ids
        // resolved, emitted in the order the library fired them.
        const report = (name, build, fields) => (...args) => {
            let data;
            try {
                data = build(this.ownWid(), ...args);
            } catch (err) {
                log('error', 'cannot map %s: %s', name, err && err.stack ? err.stack : err);
                return;
            }
            if (data) this.out.push(name, this.resolver.resolve(data, fields));
        };
        const CHANGE = ['actor', 'chat_id'];
        client.on('message_reaction', report(EVENTS.MESSAGE_REACTION, mapReaction, CHANGE));
        client.on('message_edit', report(EVENTS.MESSAGE_EDIT, mapEdit, CHANGE));
        client.on('message_revoke_everyone', report(EVENTS.MESSAGE_REVOKE, mapRevoke, CHANGE));
        client.on('vote_update', report(EVENTS.VOTE_UPDATE, mapVote, CHANGE));
        client.on('group_join', report(EVENTS.GROUP_JOIN, mapGroup, ['members', 'by']));
        client.on('group_leave', report(EVENTS.GROUP_LEAVE, mapGroup, ['members', 'by']));
        client.on('call', report(EVENTS.CALL, mapCall, ['from']));
    }

    ownWid() {
        const info = this.client.info;
        return info && info.wid ? serializeWid(info.wid) : null;
    }

    // The phone number WhatsApp Web knows for an @lid user (getContactLidAndPhone reads its contact
    // store, and asks WhatsApp when it has none), or null.
    async lookupLid(lid) {
        if (!this.client.pupPage) return null;
        const [found] = await this.client.getContactLidAndPhone([lid]);
        return (found && found.pn) || null;
    }

    onMessageCreate(msg) {
        if (!msg || !msg.fromMe || !msg.id) return; // incoming ones are reported by 'message'
        if (msg.to === 'status@broadcast' || msg.from === 'status@broadcast') return; // status posts
        const id = msg.id._serialized;
        this.ctx.ownMessage(
            id,
            this.normalize(msg).catch((err) => {
                this.ctx.log('error', 'cannot normalize own message %s: %s', id, err);
                return null;
            }),
        );
    }

    async normalize(msg) {
        const chatId = msg.fromMe ? msg.to : msg.from;
        if (chatId === STATUS_CHAT || msg.isStatus) {
            // A status post is no conversation (the control plane counts and drops it): no media
            // download, no lookups.
            return {
                id: msg.id._serialized,
                chat_id: STATUS_CHAT,
                from: msg.from,
                to: msg.to,
                from_me: Boolean(msg.fromMe),
                type: msg.type,
                body: '',
                timestamp: msg.timestamp,
                has_media: Boolean(msg.hasMedia),
                author: msg.author || null,
            };
        }
        const out = {
            id: msg.id._serialized,
            chat_id: chatId,
            from: msg.from,
            to: msg.to,
            from_me: Boolean(msg.fromMe),
            type: msg.type,
            body: msg.body || '',
            timestamp: msg.timestamp,
            has_media: Boolean(msg.hasMedia),
        };
        if (msg.author) out.author = msg.author;
        const notify = msg._data && msg._data.notifyName;
        if (notify) out.notify_name = notify;
        if (msg.hasQuotedMsg) {
            try {
                const q = await msg.getQuotedMessage();
                if (q) out.quoted_id = q.id._serialized;
            } catch (e) {
                this.ctx.log('warn', 'quoted message lookup failed: %s', e.message);
            }
        }
        if (msg.type === 'poll_creation' && msg.pollName) {
            out.poll = {
                name: msg.pollName,
                options: (msg.pollOptions || []).map((o) => (o && typeof o === 'object' ? o.name : String(o))),
            };
        }
        if (msg.location) {
            out.location = {
                latitude: Number(msg.location.latitude),
                longitude: Number(msg.location.longitude),
                description: msg.location.description || msg.location.name || null,
            };
        }
        if (msg.hasMedia) {
            out.media = { mimetype: null, filename: null };
            try {
                const media = await msg.downloadMedia();
                if (media) {
                    out.media.mimetype = media.mimetype;
                    out.media.filename = media.filename || null;
                    const size = Math.floor((media.data.length * 3) / 4);
                    out.media.size = size;
                    if (size <= this.ctx.opts.maxInlineMediaBytes) out.media.data = media.data;
                }
            } catch (e) {
                this.ctx.log('warn', 'media download failed: %s', e.message);
            }
        }
        return this.resolver.resolve(out, ['chat_id', 'from', 'to', 'author']);
    }

    // --- driver interface ---
    async start() {
        this.ctx.log('info', 'launching %s, profile %s', this.ctx.opts.chromePath, this.profileDir);
        await this.client.initialize();
    }

    // Closes the browser for good: polite close, then the browser's whole process group, then
    // the Singleton* locks, which Chromium leaves behind when it does not exit cleanly.
    async stop({ wipe = false } = {}) {
        this.stopping = true;
        const pid = this.browserPid || (this.client.pupBrowser && this.client.pupBrowser.process()?.pid);
        try {
            await Promise.race([this.client.destroy(), sleep(BROWSER_CLOSE_MS)]);
        } catch (e) {
            this.ctx.log('warn', 'client.destroy failed: %s', e && e.message);
        }
        if (pid) await this.killBrowser(pid);
        this.removeLocks();
        if (wipe) await this.wipe();
    }

    async killBrowser(pid) {
        for (const [sig, waitMs] of [
            ['SIGTERM', 1000],
            ['SIGKILL', 1000],
        ]) {
            if (!pidAlive(pid)) return;
            this.ctx.log('warn', 'browser pid=%d still alive, %s to its group', pid, sig);
            try {
                process.kill(-pid, sig); // puppeteer starts Chromium detached: its own group
            } catch {
                try {
                    process.kill(pid, sig);
                } catch {
                    /* already gone */
                }
            }
            const deadline = Date.now() + waitMs;
            while (pidAlive(pid) && Date.now() < deadline) await sleep(25);
        }
    }

    removeLocks() {
        for (const name of SINGLETON_FILES) {
            const p = path.join(this.profileDir, name);
            if (lexists(p)) {
                try {
                    fs.unlinkSync(p);
                } catch (e) {
                    this.ctx.log('warn', 'cannot remove %s: %s', p, e.message);
                }
            }
        }
    }

    async wipe() {
        await fs.promises.rm(this.profileDir, { recursive: true, force: true, maxRetries: 4 });
    }

    async logout() {
        this.stopping = true;
        if (this.client.pupPage && this.client.info) {
            try {
                await this.client.logout(); // tells WhatsApp, closes the browser, deletes the profile
            } catch (e) {
                this.ctx.log('warn', 'client.logout failed: %s', e && e.message);
            }
        }
        await this.stop({ wipe: true });
    }

    async resolveChat(msg) {
        if (!msg.digits || !msg.chatId.endsWith('@c.us')) return msg.chatId;
        const wid = await this.client.getNumberId(msg.digits);
        if (!wid) throw new CommandError(E.NOT_ON_WHATSAPP, `${msg.digits} is not on WhatsApp`);
        return wid._serialized;
    }

    async send(msg) {
        const chatId = await this.resolveChat(msg);
        const options = {};
        if (msg.replyTo) options.quotedMessageId = msg.replyTo;
        let content;
        if (msg.type === 'text') {
            content = msg.text;
        } else if (msg.type === 'location') {
            const { latitude, longitude, description } = msg.location;
            content = new Location(latitude, longitude, description ? { name: description } : {});
        } else {
            content = await this.loadMedia(msg.media);
            if (msg.caption) options.caption = msg.caption;
            if (msg.asDocument) options.sendMediaAsDocument = true;
        }
        let sent;
        try {
            sent = await this.client.sendMessage(chatId, content, options);
        } catch (e) {
            throw new CommandError(E.SEND_FAILED, `send failed: ${e && e.message ? e.message : e}`);
        }
        return { id: sent.id._serialized, timestamp: sent.timestamp };
    }

    async loadMedia(media) {
        let m;
        try {
            if (media.path) m = MessageMedia.fromFilePath(media.path);
            else if (media.url) m = await MessageMedia.fromUrl(media.url, { unsafeMime: true });
            else m = new MessageMedia(media.mimetype, media.base64, media.filename);
        } catch (e) {
            throw new CommandError(E.BAD_REQUEST, `cannot load media: ${e && e.message ? e.message : e}`);
        }
        if (media.mimetype) m.mimetype = media.mimetype;
        if (media.filename) m.filename = media.filename;
        return m;
    }

    async markRead(chatId) {
        await this.client.sendSeen(chatId);
    }

    async requestPairingCode(phone) {
        this.pairingPhone = phone;
        return this.client.requestPairingCode(phone);
    }
}

// --- whatsapp-web.js objects -> protocol data (PROTOCOL.md); `own` is this session's wid --------

function msToNumber(value, fallback) {
    const n = Number(value);
    return Number.isFinite(n) && n > 0 ? Math.round(n) : fallback;
}

// A Message's sender: the group member (author) or the chat; this account for its own.
function messageActor(own, msg) {
    if (msg.fromMe) return own || msg.author || msg.from;
    return msg.author || msg.from;
}

// message_reaction(reaction): Reaction {id (its own key), msgId (the message's key), senderId,
// reaction ('' = removed), timestamp (s)}.
function mapReaction(own, r) {
    const target = serializeKey(r.msgId);
    if (!target) return null;
    const actor = serializeWid(r.senderId);
    const fromMe = Boolean((r.id && r.id.fromMe) || (own && actor === own));
    return {
        id: serializeKey(r.id),
        target,
        chat_id: keyChat(r.msgId),
        actor: fromMe ? own || actor : actor,
        from_me: fromMe,
        emoji: typeof r.reaction === 'string' ? r.reaction : '',
        timestamp_ms: msToNumber(Number(r.timestamp) * 1000, Date.now()),
    };
}

// message_edit(message, newBody, prevBody): the edited Message (its id is the original's; the edit's
// own key is latestEditMsgKey).
function mapEdit(own, msg, newBody, prevBody) {
    if (!msg || !msg.id || typeof newBody !== 'string' || newBody === prevBody) return null;
    return {
        id: serializeKey(msg.latestEditMsgKey),
        target: serializeKey(msg.id),
        chat_id: msg.fromMe ? msg.to : msg.from,
        actor: messageActor(own, msg),
        from_me: Boolean(msg.fromMe),
        body: newBody,
        prev_body: typeof prevBody === 'string' ? prevBody : null,
        timestamp_ms: msToNumber(msg.latestEditSenderTimestampMs, Date.now()),
    };
}

// message_revoke_everyone(after, before): `after` is the message as revoked (type 'revoked'; the
// original's key in protocolMessageKey when it differs), `before` the original, when the library
// still had it. Neither carries the revoke's time (`after.timestamp` is the original's): the time
// WhatsApp Web reported it is used.
function mapRevoke(own, after, before) {
    if (!after || !after.id) return null;
    const revokedId = serializeKey(after.id);
    const target = serializeKey(after.protocolMessageKey) || revokedId;
    return {
        id: revokedId !== target ? revokedId : null,
        target,
        chat_id: after.fromMe ? after.to : after.from,
        actor: messageActor(own, after),
        from_me: Boolean(after.fromMe),
        prev_body: before && typeof before.body === 'string' ? before.body : null,
        timestamp_ms: Date.now(),
    };
}

// vote_update(vote): PollVote {voter, selectedOptions [{name, localId}], interractedAtTs (ms),
// parentMessage (the poll), parentMsgKey}.
function mapVote(own, vote) {
    const target = serializeKey(vote.parentMsgKey) || serializeKey(vote.parentMessage && vote.parentMessage.id);
    if (!target) return null;
    const actor = serializeWid(vote.voter);
    return {
        id: null,
        target,
        chat_id: keyChat(vote.parentMsgKey) || keyChat(target),
        actor,
        from_me: Boolean(own && actor === own),
        options: (vote.selectedOptions || []).map((o) => ({
            name: o.name === undefined ? null : o.name,
            local_id: o.localId,
        })),
        timestamp_ms: msToNumber(vote.interractedAtTs, Date.now()),
    };
}

// group_join / group_leave(notification): GroupNotification {id, chatId, type (add | invite |
// linked_group_join | remove | leave), recipientIds, author (who did it), timestamp (s)}.
function mapGroup(own, n) {
    return {
        id: serializeKey(n.id),
        chat_id: n.chatId,
        type: n.type,
        members: (n.recipientIds || []).map(serializeWid).filter(Boolean),
        by: serializeWid(n.author),
        timestamp_ms: msToNumber(Number(n.timestamp) * 1000, Date.now()),
    };
}

// call(call): Call {id, from (peerJid), fromMe (outgoing), isVideo, isGroup, timestamp (offerTime, s)}.
function mapCall(own, call) {
    return {
        id: call.id === undefined || call.id === null ? null : String(call.id),
        from: serializeWid(call.from),
        from_me: Boolean(call.fromMe),
        video: Boolean(call.isVideo),
        group: Boolean(call.isGroup),
        timestamp_ms: msToNumber(Number(call.timestamp) * 1000, Date.now()),
    };
}

module.exports = WwebjsDriver;
