'use strict';
// Wire protocol of the bridge: one JSON object per line on stdin (commands) and stdout
// (responses and events). Mirrored by control_plane/bridge/protocol.py and documented
// message by message in bridge/PROTOCOL.md; change all three together.

const PROTOCOL_VERSION = 1;

const EVENTS = Object.freeze({
    HELLO: 'hello',
    BROWSER: 'browser',
    STATE: 'state',
    QR: 'qr',
    CODE: 'code',
    AUTHENTICATED: 'authenticated',
    READY: 'ready',
    MESSAGE: 'message',
    MESSAGE_ACK: 'message_ack',
    MESSAGE_REACTION: 'message_reaction',
    MESSAGE_EDIT: 'message_edit',
    MESSAGE_REVOKE: 'message_revoke',
    VOTE_UPDATE: 'vote_update',
    GROUP_JOIN: 'group_join',
    GROUP_LEAVE: 'group_leave',
    CALL: 'call',
    DISCONNECTED: 'disconnected',
    HEARTBEAT: 'heartbeat',
    ERROR: 'error',
});

const COMMANDS = Object.freeze({
    GET_STATE: 'get_state',
    SEND: 'send',
    MARK_READ: 'mark_read',
    LOGOUT: 'logout',
    STOP: 'stop',
    REQUEST_PAIRING_CODE: 'request_pairing_code',
    SANDBOX_SCAN: 'sandbox.scan',
    SANDBOX_INCOMING: 'sandbox.incoming',
    SANDBOX_ACK: 'sandbox.ack',
    SANDBOX_DISCONNECT: 'sandbox.disconnect',
    SANDBOX_CRASH: 'sandbox.crash',
    SANDBOX_HANG: 'sandbox.hang',
    SANDBOX_LEAK: 'sandbox.leak',
    SANDBOX_LOGOUT: 'sandbox.logout',
    SANDBOX_OUTGOING: 'sandbox.outgoing',
    SANDBOX_REACTION: 'sandbox.reaction',
    SANDBOX_EDIT: 'sandbox.edit',
    SANDBOX_REVOKE: 'sandbox.revoke',
    SANDBOX_VOTE: 'sandbox.vote',
    SANDBOX_GROUP_JOIN: 'sandbox.group_join',
    SANDBOX_GROUP_LEAVE: 'sandbox.group_leave',
    SANDBOX_CALL: 'sandbox.call',
    SANDBOX_CONTACT: 'sandbox.contact',
});

// Events about messages and chats, with their data's keys (`?`: optional; PROTOCOL.md says what each
// means; protocol.py FORWARDED_EVENTS lists the same). The supervisor hands them to messaging in the
// order they are written. Ids are WhatsApp's (`1555...@c.us`, `1203...@g.us`, `<n>@lid`); an @lid one
// WhatsApp Web can map to a phone number is written as `<digits>@c.us`, the pair listed in `lids`
// {<phone id>: <lid>} (src/driver_events.js).
const CHANGE = 'id target chat_id actor from_me timestamp_ms lids?';
const FORWARDED = Object.freeze({
    [EVENTS.MESSAGE]:
        'id chat_id from to from_me type body timestamp has_media media? location? poll? ' +
        'quoted_id? notify_name? author? lids?',
    [EVENTS.MESSAGE_ACK]: 'id to ack status',
    [EVENTS.MESSAGE_REACTION]: `${CHANGE} emoji`, // emoji '': the reaction was removed
    [EVENTS.MESSAGE_EDIT]: `${CHANGE} body prev_body`, // id: the edit's own message id, or null
    [EVENTS.MESSAGE_REVOKE]: `${CHANGE} prev_body`, // whatsapp-web.js message_revoke_everyone
    [EVENTS.VOTE_UPDATE]: `${CHANGE} options`, // [{name, local_id}]: the voter's whole current choice
    [EVENTS.GROUP_JOIN]: 'id chat_id type members by timestamp_ms lids?', // add|invite|linked_group_join
    [EVENTS.GROUP_LEAVE]: 'id chat_id type members by timestamp_ms lids?', // remove|leave
    [EVENTS.CALL]: 'id from from_me video group timestamp_ms lids?',
});


const STATES = Object.freeze({
    STARTING: 'starting',
    QR: 'qr',
    AUTHENTICATED: 'authenticated',
    READY: 'ready',
    DISCONNECTED: 'disconnected',
});

// Error codes carried by ok:false responses.
const ERROR_CODES = Object.freeze({
    UNKNOWN_COMMAND: 'unknown_command',
    BAD_REQUEST: 'bad_request',
    NOT_READY: 'not_ready',
    NOT_SUPPORTED: 'not_supported',
    INVALID_STATE: 'invalid_state',
    STOPPING: 'stopping',
    NOT_ON_WHATSAPP: 'not_on_whatsapp',
    SEND_FAILED: 'send_failed',
    INTERNAL: 'internal',
});

// Exit codes of the bridge process; the supervisor classifies exits with them.
const EXIT_CODES = Object.freeze({
    CLEAN: 0,              // stop/logout command or SIGTERM, destroyed in time
    FATAL: 1,              // fatal error (init failed, auth_failure, browser gone, uncaught ...)
    STOP_TIMEOUT: 2,       // SIGTERM/stop: destroying the client exceeded --stop-timeout-ms
    STDIN_CLOSED: 3,       // control plane went away (stdin EOF or stdout EPIPE)
    DISCONNECTED: 4,       // WhatsApp session disconnected (conflict, navigation, ...)
    LOGGED_OUT: 5,         // phone unlinked this device; the session profile was wiped
    USAGE: 64,             // bad command line
});

const ACK_STATUS = Object.freeze({
    '-1': 'error', 0: 'pending', 1: 'sent', 2: 'delivered', 3: 'read', 4: 'played',
});

function ackStatus(ack) {
    return ACK_STATUS[String(ack)] || 'unknown';
}

class CommandError extends Error {
    constructor(code, message) {
        super(message);
        this.code = code;
    }
}

function encode(obj) {
    return JSON.stringify(obj) + '\n';
}

// Key order matters: the control plane recognises a heartbeat by the line's first bytes,
// {"event":"heartbeat", (HEARTBEAT_PREFIX in control_plane/bridge/protocol.py), without decoding it.
function event(name, data) {
    return { event: name, ts: Date.now(), data: data || {} };
}

function okResponse(id, result) {
    return { id, ok: true, result: result || {} };
}

function errorResponse(id, code, message) {
    return { id, ok: false, error: { code, message: String(message) } };
}

// Parses one stdin line. Returns {id, cmd, args} or throws CommandError (with .id when known).
function parseCommand(line) {
    let msg;
    try {
        msg = JSON.parse(line);
    } catch (e) {
        throw new CommandError(ERROR_CODES.BAD_REQUEST, `invalid JSON: ${e.message}`);
    }
    if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) {
        throw new CommandError(ERROR_CODES.BAD_REQUEST, 'command must be a JSON object');
    }
    const id = msg.id;
    const fail = (text) => {
        const err = new CommandError(ERROR_CODES.BAD_REQUEST, text);
        err.id = Number.isInteger(id) ? id : null;
        return err;
    };
    if (!Number.isInteger(id)) throw fail('"id" must be an integer');
    if (typeof msg.cmd !== 'string' || !msg.cmd) throw fail('"cmd" must be a non-empty string');
    const args = msg.args === undefined || msg.args === null ? {} : msg.args;
    if (typeof args !== 'object' || Array.isArray(args)) throw fail('"args" must be an object');
    return { id, cmd: msg.cmd, args };
}

module.exports = {
    PROTOCOL_VERSION,
    EVENTS,
    FORWARDED,
    COMMANDS,
    STATES,
    ERROR_CODES,
    EXIT_CODES,
    ackStatus,
    CommandError,
    encode,
    event,
    okResponse,
    errorResponse,
    parseCommand,
};
