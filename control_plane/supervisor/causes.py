"""Why a session is where it is, in words an admin can act on.

``explain(reason, error)`` turns a session's short ``reason`` code and the technical ``error`` text the
bridge reported (e.g. ``initialize failed: net::ERR_NAME_NOT_RESOLVED at https://web.whatsapp.com/``)
into the ``detail`` sentence of ``GET /api/session`` and the ``session.state`` event. Known error
patterns come first (they say more than the code), then the reason codes; None when there is nothing
to act on (a requested stop, a session that is fine). The technical text stays in ``error``.
"""

from __future__ import annotations

import re

ERROR_MAX_CHARS = 1000  # what is kept of the bridge's technical text (Chromium's can run for pages)

_UNREACHABLE = (
    "cannot reach web.whatsapp.com: check this server's internet access or proxy "
    "(HTTPS_PROXY / https_proxy in the service's environment)"
)

# (pattern in the technical text, sentence). First match wins; matched case-insensitively.
ERROR_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        r"ERR_NAME_NOT_RESOLVED|ERR_NAME_RESOLUTION_FAILED",
        "cannot reach web.whatsapp.com: this server cannot resolve the name (DNS); check its internet "
        "access, DNS resolver or proxy",
    ),
    (
        r"ERR_PROXY_CONNECTION_FAILED|ERR_TUNNEL_CONNECTION_FAILED|ERR_PROXY_",
        "cannot reach web.whatsapp.com through the configured proxy: check that the proxy "
        "(HTTPS_PROXY / https_proxy) is up and lets this server through",
    ),
    (
        r"ERR_INTERNET_DISCONNECTED|ERR_NETWORK_UNREACHABLE|ERR_ADDRESS_UNREACHABLE|"
        r"ERR_CONNECTION_(?:REFUSED|RESET|CLOSED|TIMED_OUT|FAILED)|ERR_TIMED_OUT|ERR_NETWORK_CHANGED|"
        r"ERR_EMPTY_RESPONSE|ERR_SOCKS_",
        _UNREACHABLE,
    ),
    (
        r"ERR_CERT_|ERR_SSL_|ERR_BAD_SSL",
        "the TLS connection to web.whatsapp.com was refused (certificate error): an intercepting "
        "proxy or a wrong system clock; check the proxy and the server's time",
    ),
    (
        r"Navigation timeout|Timed out after waiting|auth timeout|TimeoutError",
        "WhatsApp Web did not load in time: the connection to web.whatsapp.com is too slow or blocked; "
        "check this server's internet access or proxy",
    ),
    (
        r"Browser was not found|Could not find (?:Chrom|expected browser)|"
        r"Failed to launch the browser process.*(?:ENOENT|No such file)|spawn \S+ ENOENT",
        "the browser was not found: install Chromium (apt-get install chromium) or set CHROME_PATH "
        "to its path",
    ),
    (
        r"already running for|profile appears to be in use|ProcessSingleton|SingletonLock",
        "the session's browser profile is locked by another Chromium: stop the other process using "
        "this tenant's folder under SESSIONS_DIR (a second gateway on the same folder?), then Start",
    ),
    (
        r"error while loading shared libraries",
        "Chromium cannot start: a system library is missing (reinstall the chromium package)",
    ),
    (
        r"ENOSPC|No space left on device",
        "the disk is full: free space under SESSIONS_DIR and DATA_DIR, then Start",
    ),
    (
        r"EACCES|EPERM|Permission denied",
        "the gateway may not write this tenant's session folder: check the owner and mode of "
        "SESSIONS_DIR (the service user must own it)",
    ),
    (
        r"Failed to launch the browser process",
        "Chromium could not start: see the technical error; check CHROME_PATH and that the "
        "chromium package works (chromium --headless --no-sandbox --version)",
    ),
)

# reason code -> sentence, when the technical text matched nothing.
REASON_SENTENCES: dict[str, str] = {
    "init_failed": "WhatsApp Web could not be opened in the browser: see the technical error",
    "auth_failure": "WhatsApp refused the stored login: log out, then Start and scan a new QR code",
    "browser_gone": "the browser exited under the session (out of memory, or killed): it is restarted; "
    "if it keeps happening raise MEMORY_LIMIT_MB or the server's memory",
    "heartbeat_timeout": "the session stopped answering (hung) and was restarted",
    "start_timeout": "the session did not start in time (a slow or blocked connection to "
    "web.whatsapp.com?) and was restarted",
    "memory_limit": "the session used more memory than MEMORY_LIMIT_MB and was restarted",
    "qr_expired": "the QR code was not scanned in time: press Start to get a new one",
    "phone_logout": "the phone unlinked this device: press Start and scan a new QR code",
    "disconnected": "WhatsApp disconnected the session (another WhatsApp Web took over, or the "
    "phone is offline); it is restarted",
    "spawn_failed": "the bridge process could not be started: check NODE_PATH / BRIDGE_SCRIPT and "
    "that Node.js is installed",
    "internal_error": "the gateway hit an internal error running this session: see the server log",
}

CRASH_LOOP = "crash_loop"


def explain(reason: str | None, error: str | None, *, cause: str | None = None) -> str | None:
    """The sentence for a session's state (see the module docstring). ``cause`` is the underlying
    reason of a ``crash_loop`` (the last failure's code)."""
    sentence = _from_error(error) or _from_code(cause) or _from_code(reason)
    if reason == CRASH_LOOP:
        stopped = "failed several times in a row and was stopped: press Start to try again"
        return f"{sentence}; it {stopped}" if sentence else f"The session {stopped}"
    return sentence


def _from_code(code: str | None) -> str | None:
    if not code:
        return None
    if code.startswith("signal_"):
        return f"the session's process was killed ({code[7:]}; out of memory?) and is restarted"
    if code.startswith("exit_"):
        return f"the session's process ended unexpectedly ({code}); it is restarted: see the technical error"
    return REASON_SENTENCES.get(code)


def _from_error(error: str | None) -> str | None:
    if not error:
        return None
    for pattern, sentence in ERROR_PATTERNS:
        if re.search(pattern, error, re.IGNORECASE | re.DOTALL):
            return sentence
    return None


def clip(error: str | None) -> str | None:
    """The technical text as kept (one bounded string; None stays None)."""
    if error is None:
        return None
    text = " ".join(error.split())
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 1] + "…"
