'use strict';
// What both drivers share to report WhatsApp's side (bridge/PROTOCOL.md, "Ids" and "Events"):
// - ids as strings: whatsapp-web.js hands message keys and wids over as objects
//   ({fromMe, remote, id, _serialized} / {server, user, _serialized}) or strings;
// - @lid ids resolved to phone ids (`<digits>@c.us`) where WhatsApp Web knows the number, each
//   replacement recorded in the event's `lids` map; an unknown one stays as it is (`<n>@lid`);
// - events emitted in the order WhatsApp reported them, although building one may wait (a media
//   download, a lid lookup): InOrder starts every build at once and emits them in arrival order.

const LID_SERVER = 'lid';
const LOOKUP_TIMEOUT_MS = 3000;
const UNKNOWN_TTL_MS = 10 * 60 * 1000; // an unknown lid is asked again after this long
const CACHE_MAX = 10000;

// A wid (`15551234567@c.us`, `1203...@g.us`, `123@lid`) as its serialized string, or null.
function serializeWid(wid) {
    if (!wid) return null;
    if (typeof wid === 'string') return wid;
    if (typeof wid !== 'object') return null;
    if (typeof wid._serialized === 'string' && wid._serialized) return wid._serialized;
    if (wid.user && wid.server) return `${wid.user}@${wid.server}`;
    return null;
}

// A message key as whatsapp-web.js serializes it: `<fromMe>_<remote>_<id>[_<participant>]`.
function serializeKey(key) {
    if (!key) return null;
    if (typeof key === 'string') return key;
    if (typeof key !== 'object') return null;
    if (typeof key._serialized === 'string' && key._serialized) return key._serialized;
    const remote = serializeWid(key.remote);
    if (typeof key.id !== 'string' || !key.id || !remote) return null;
    const base = `${Boolean(key.fromMe)}_${remote}_${key.id}`;
    const participant = serializeWid(key.participant);
    return participant ? `${base}_${participant}` : base;
}

// The chat a message key belongs to (`remote`), or null.
function keyChat(key) {
    if (!key) return null;
    if (typeof key === 'object') return serializeWid(key.remote);
    const m = /^(?:true|false)_([^_]+@[^_]+)_/.exec(String(key));
    return m ? m[1] : null;
}

function isLid(id) {
    return typeof id === 'string' && id.endsWith(`@${LID_SERVER}`);
}

// `15551234567@c.us`, `15551234567@s.whatsapp.net` or digits -> `15551234567@c.us`; else null.
function phoneJid(value) {
    const user = String(serializeWid(value) || '').split('@')[0].split(':')[0];
    return /^\d{5,20}$/.test(user) ? `${user}@c.us` : null;
}

function withTimeout(promise, ms) {
    let timer;
    const timeout = new Promise((resolve) => {
        timer = setTimeout(() => resolve(undefined), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// @lid -> phone id, through the driver's `lookup(lid)` (resolves to a phone id, digits, or null).
// Known numbers are kept for the life of the process; unknown ones are asked again after a while.
class LidResolver {
    constructor(lookup, log, { now = Date.now, timeoutMs = LOOKUP_TIMEOUT_MS } = {}) {
        this.lookup = lookup;
        this.log = log;
        this.now = now;
        this.timeoutMs = timeoutMs;
        this.cache = new Map(); // lid -> {phone, at}
        this.asking = new Map(); // lid -> the lookup in flight (a burst of events asks once)
    }

    phoneOf(lid) {
        const hit = this.cache.get(lid);
        if (hit && (hit.phone || this.now() - hit.at < UNKNOWN_TTL_MS)) return Promise.resolve(hit.phone);
        let asking = this.asking.get(lid);
        if (!asking) {
            asking = this.ask(lid).finally(() => this.asking.delete(lid));
            this.asking.set(lid, asking);
        }
        return asking;
    }

    async ask(lid) {
        let phone = null;
        try {
            phone = phoneJid(await withTimeout(Promise.resolve().then(() => this.lookup(lid)), this.timeoutMs));
        } catch (e) {
            this.log('warn', 'lid lookup %s failed: %s', lid, e && e.message ? e.message : e);
        }
        if (this.cache.size >= CACHE_MAX) this.cache.delete(this.cache.keys().next().value);
        this.cache.set(lid, { phone, at: this.now() });
        return phone;
    }

    // Something learned this lid's number: ask again next time.
    forget(lid) {
        this.cache.delete(lid);
    }

    // Replaces the @lid ids in data[field] (an id or a list of ids) for each field, in place;
    // data.lids gets {<phone id>: <lid>} for each replacement (absent when there was none).
    async resolve(data, fields) {
        const lids = {};
        for (const field of fields) {
            const value = data[field];
            if (Array.isArray(value)) {
                data[field] = await Promise.all(value.map((id) => this.one(id, lids)));
            } else if (isLid(value)) {
                data[field] = await this.one(value, lids);
            }
        }
        if (Object.keys(lids).length) data.lids = { ...(data.lids || {}), ...lids };
        return data;
    }

    async one(id, lids) {
        if (!isLid(id)) return id;
        const phone = await this.phoneOf(id);
        if (!phone) return id;
        lids[phone] = id;
        return phone;
    }
}

// Emits events in the order they were pushed, each once its data is ready (null: dropped).
class InOrder {
    constructor(emit, log) {
        this.emit = emit;
        this.log = log;
        this.tail = Promise.resolve();
    }

    push(name, data) {
        const ready = Promise.resolve()
            .then(() => data)
            .catch((err) => {
                this.log('error', 'cannot report %s: %s', name, err && err.stack ? err.stack : err);
                return null;
            });
        this.tail = this.tail
            .then(() => ready)
            .then((d) => {
                if (d) this.emit(name, d);
            })
            .catch((err) => this.log('error', 'cannot emit %s: %s', name, err && err.stack ? err.stack : err));
        return this.tail;
    }
}

module.exports = { serializeWid, serializeKey, keyChat, isLid, phoneJid, LidResolver, InOrder };
