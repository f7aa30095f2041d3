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
