"""What a ``TenantSession`` needs from the supervisor that owns it, and nothing more.

``Supervisor`` implements ``SessionHost``; a session is handed the host, never the Supervisor, so it
cannot reach the other tenants, the database or the loops. Tests run a session against a small fake
host (tests/supervisor/test_session_host.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from control_plane.supervisor.policy import WatchdogSettings

if TYPE_CHECKING:
    from control_plane.supervisor.session import TenantSession


class SessionSettings(WatchdogSettings, Protocol):
    """The settings a session reads (``control_plane.config.Settings`` has them all): the watchdog's
    (``policy.WatchdogSettings``) and these."""

    @property
    def bridge_driver(self) -> str | None: ...
    @property
    def sessions_dir(self) -> Path: ...
    @property
    def chrome_path(self) -> str: ...
    @property
    def stop_wait_s(self) -> float: ...
    @property
    def backoff_base_s(self) -> float: ...
    @property
    def backoff_cap_s(self) -> float: ...
    @property
    def crash_loop_max(self) -> int: ...
    @property
    def crash_loop_window_s(self) -> float: ...


class SessionHost(Protocol):
    """The supervisor, as one tenant's session sees it."""

    @property
    def settings(self) -> SessionSettings: ...

    @property
    def closing(self) -> bool:
        """The control plane is shutting down: a runner must not start a bridge again."""
        ...

    def bridge_argv(self, tenant_id: str, folder: Path, driver: str) -> list[str]:
        """The command line of this tenant's bridge."""
        ...

    def record_state(self, tenant_id: str, snapshot: dict[str, Any], event: dict[str, Any] | None) -> None:
        """Persist the session's actual state (``snapshot``) and, with ``event``, publish session.state."""
        ...

    def publish(self, tenant_id: str, type_: str, data: dict[str, Any]) -> None:
        """Publish another session event (session.qr), in order with the states."""
        ...

    def dispatch_message(self, tenant_id: str, name: str, data: dict[str, Any]) -> None:
        """Hand a bridge ``message`` / ``message_ack`` to the message listeners, in order."""
        ...

    def watch(self, session: TenantSession) -> None:
        """From spawn to exit, the session's bridge is checked by the watchdog sweep."""
        ...

    def unwatch(self, session: TenantSession) -> None: ...
