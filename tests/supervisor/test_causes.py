"""Session failure causes in words an admin can act on (supervisor/causes.py), from the technical
texts the real bridge reported here (whatsapp-web.js + Chromium, offline, profile locked, no browser)."""

from __future__ import annotations

import pytest

from control_plane.supervisor import causes

# Captured from bridge/src/main.js runs on this machine (see tests/api/test_session_cause.py).
OFFLINE = "initialize failed: net::ERR_NAME_NOT_RESOLVED at https://web.whatsapp.com/"
NO_BROWSER = (
    "initialize failed: Browser was not found at the configured executablePath (/nonexistent/chromium)"
)
LOCKED = (
    "initialize failed: The browser is already running for /srv/sessions/t/session-session. Use a "
    "different `userDataDir` or stop the running browser first."
)


@pytest.mark.parametrize(
    "reason, error, starts",
    [
        ("init_failed", OFFLINE, "cannot reach web.whatsapp.com: this server cannot resolve the name"),
        (
            "init_failed",
            "initialize failed: net::ERR_PROXY_CONNECTION_FAILED at https://web.whatsapp.com/",
            "cannot reach web.whatsapp.com through the configured proxy",
        ),
        (
            "init_failed",
            "initialize failed: net::ERR_CONNECTION_RESET at https://web.whatsapp.com/",
            "cannot reach web.whatsapp.com: check this server's internet access or proxy",
        ),
        (
            "init_failed",
            "initialize failed: net::ERR_CERT_AUTHORITY_INVALID at https://web.whatsapp.com/",
            "the TLS connection to web.whatsapp.com was refused",
        ),
        (
            "init_failed",
            "initialize failed: Navigation timeout of 30000 ms exceeded",
            "WhatsApp Web did not load in time",
        ),
        ("init_failed", NO_BROWSER, "the browser was not found: install Chromium"),
        ("init_failed", LOCKED, "the session's browser profile is locked by another Chromium"),
        ("init_failed", "initialize failed: something new", "WhatsApp Web could not be opened"),
        ("auth_failure", "authentication failed: restore failed", "WhatsApp refused the stored login"),
        ("qr_expired", None, "the QR code was not scanned in time"),
        ("signal_SIGKILL", None, "the session's process was killed (SIGKILL"),
        (
            "spawn_failed",
            "[Errno 2] No such file or directory: 'node'",
            "the bridge process could not be started",
        ),
    ],
)
def test_known_failures_read_as_what_to_do(reason, error, starts):
    assert causes.explain(reason, error).startswith(starts)


def test_crash_loop_says_the_cause_and_that_it_stopped():
    detail = causes.explain("crash_loop", OFFLINE, cause="init_failed")
    assert detail.startswith("cannot reach web.whatsapp.com") and detail.endswith("press Start to try again")
    assert causes.explain("crash_loop", None, cause="exit_3").startswith("the session's process ended")
    assert causes.explain("crash_loop", None).startswith("The session failed several times")


@pytest.mark.parametrize("reason", [None, "requested", "stopped", "scanned", "control_plane_restart"])
def test_nothing_to_do_is_none(reason):
    assert causes.explain(reason, None) is None


def test_the_technical_text_is_kept_on_one_bounded_line():
    long = "Failed to launch the browser process!\n" + "x" * 5000
    clipped = causes.clip(long)
    assert "\n" not in clipped and len(clipped) == causes.ERROR_MAX_CHARS
    assert causes.explain("init_failed", long).startswith("Chromium could not start")
    assert causes.clip(None) is None
