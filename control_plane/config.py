"""Settings: typed, read once from an injectable mapping (``os.environ`` by default).

Every error names the variable it is about; secrets are :class:`Secret` and print masked.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from control_plane.forwarded import Networks, parse_networks


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


class Secret:
    """A string that never shows itself in repr/str (logs, tracebacks, /docs)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and secrets.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe to log)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _bool(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"Config '{name}' must be a boolean (true/false), got {raw!r}")


def _networks(name: str, raw: str) -> Networks:
    try:
        return parse_networks(raw)
    except ValueError as exc:
        raise ConfigError(f"Config '{name}' must list IP addresses or CIDR networks: {exc}") from None


def _number(name: str, raw: str, kind: type) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"Config '{name}' must be a {kind.__name__}, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"Config '{name}' must not be negative, got {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the control plane reads from its environment. See README for each variable."""

    database_url: str
    redis_url: str | None
    admin_token: Secret
    secret_key: Secret
    host: str = "127.0.0.1"
    port: int = 5000
    data_dir: Path = Path("data")
    sessions_dir: Path = Path("sessions")
    graph_api_url: str = "https://graph.facebook.com"
    graph_api_version: str = "v23.0"
    chrome_path: str = "/usr/bin/chromium"
    node_path: str = "node"
    bridge_script: Path = Path(__file__).resolve().parent.parent / "bridge" / "src" / "main.js"
    log_format: str = "text"
    log_level: str = "INFO"
    max_body_bytes: int = 1024 * 1024
    # who is the client: X-Forwarded-For / -Proto believed from these peers only (forwarded.py)
    trusted_proxies: Networks = ()
    # authentication throttling (auth_throttle.py): free failures, then waits base * 2^k up to cap
    auth_free_failures: int = 5
    auth_backoff_base_s: float = 1.0
    auth_backoff_cap_s: float = 30.0
    auth_failure_window_s: float = 60.0
    webhook_max_body_bytes: int = 3 * 1024 * 1024
    # before a webhook's signature is checked (webhooks/prescan.py, webhooks/decoder.py)
    webhook_max_routing_ids: int = 5_000  # distinct numbers + WABAs per delivery; Meta sends <= ~1,000
    webhook_inline_decode_bytes: int = 32 * 1024  # larger bodies are parsed in a worker process
    # supervisor policy
    supervisor_enabled: bool = True
    heartbeat_interval_s: float = 5.0
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    crash_loop_max: int = 5
    crash_loop_window_s: float = 120.0
    memory_limit_mb: int = 1024
    memory_check_interval_s: float = 5.0
    qr_ttl_s: float = 60.0
    qr_max_cycles: int = 5
    stop_wait_s: float = 5.0
    boot_stagger_s: float = 0.05
    qr_interval_s: float = 20.0
    bridge_driver: str | None = None  # BRIDGE_DRIVER: force scripted|wwebjs for every tenant (tests)
    # realtime
    event_retention_days: float = 7.0
    # messaging
    cloud_rate_per_s: float = 80.0
    web_rate_per_s: float = 1.0
    cloud_rate_headroom: float = 0.03
    cloud_pair_interval_s: float = 6.0
    cloud_pair_burst: int = 5
    messaging_enabled: bool = True
    messaging_max_attempts: int = 6
    messaging_retry_base_s: float = 1.0
    messaging_retry_cap_s: float = 60.0
    messaging_lease_s: float = 60.0
    messaging_reconcile_s: float = 60.0  # the longest wait for a confirmation of an unknown outcome
    messaging_reconcile_min_s: float = 5.0  # the shortest (messaging/recovery.py)
    messaging_reconcile_factor: float = 4.0  # x the p99 of the tenant's send -> first status delay
    messaging_poll_s: float = 1.0
    messaging_batch_max: int = 200
    extra: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in {"database_url", "redis_url"} and value:
                value = mask_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"


# name in the environment -> (field, parser)
_ENV: dict[str, tuple[str, Any]] = {
    "HOST": ("host", str),
    "PORT": ("port", int),
    "GRAPH_API_URL": ("graph_api_url", str),
    "GRAPH_API_VERSION": ("graph_api_version", str),
    "CHROME_PATH": ("chrome_path", str),
    "NODE_PATH_BIN": ("node_path", str),
    "LOG_FORMAT": ("log_format", str),
    "LOG_LEVEL": ("log_level", str),
    "MAX_BODY_BYTES": ("max_body_bytes", int),
    "TRUSTED_PROXIES": ("trusted_proxies", "networks"),
    "AUTH_FREE_FAILURES": ("auth_free_failures", int),
    "AUTH_BACKOFF_BASE_S": ("auth_backoff_base_s", float),
    "AUTH_BACKOFF_CAP_S": ("auth_backoff_cap_s", float),
    "AUTH_FAILURE_WINDOW_S": ("auth_failure_window_s", float),
    "WEBHOOK_MAX_BODY_BYTES": ("webhook_max_body_bytes", int),
    "WEBHOOK_MAX_ROUTING_IDS": ("webhook_max_routing_ids", int),
    "WEBHOOK_INLINE_DECODE_BYTES": ("webhook_inline_decode_bytes", int),
    "SUPERVISOR_ENABLED": ("supervisor_enabled", bool),
    "HEARTBEAT_INTERVAL_S": ("heartbeat_interval_s", float),
    "BACKOFF_BASE_S": ("backoff_base_s", float),
    "BACKOFF_CAP_S": ("backoff_cap_s", float),
    "CRASH_LOOP_MAX": ("crash_loop_max", int),
    "CRASH_LOOP_WINDOW_S": ("crash_loop_window_s", float),
    "MEMORY_LIMIT_MB": ("memory_limit_mb", int),
    "MEMORY_CHECK_INTERVAL_S": ("memory_check_interval_s", float),
    "QR_TTL_S": ("qr_ttl_s", float),
    "QR_MAX_CYCLES": ("qr_max_cycles", int),
    "QR_INTERVAL_S": ("qr_interval_s", float),
    "STOP_WAIT_S": ("stop_wait_s", float),
    "BOOT_STAGGER_S": ("boot_stagger_s", float),
    "BRIDGE_DRIVER": ("bridge_driver", str),
    "EVENT_RETENTION_DAYS": ("event_retention_days", float),
    "CLOUD_RATE_PER_S": ("cloud_rate_per_s", float),
    "WEB_RATE_PER_S": ("web_rate_per_s", float),
    "CLOUD_RATE_HEADROOM": ("cloud_rate_headroom", float),
    "CLOUD_PAIR_INTERVAL_S": ("cloud_pair_interval_s", float),
    "CLOUD_PAIR_BURST": ("cloud_pair_burst", int),
    "MESSAGING_ENABLED": ("messaging_enabled", bool),
    "MESSAGING_MAX_ATTEMPTS": ("messaging_max_attempts", int),
    "MESSAGING_RETRY_BASE_S": ("messaging_retry_base_s", float),
    "MESSAGING_RETRY_CAP_S": ("messaging_retry_cap_s", float),
    "MESSAGING_LEASE_S": ("messaging_lease_s", float),
    "MESSAGING_RECONCILE_S": ("messaging_reconcile_s", float),
    "MESSAGING_RECONCILE_MIN_S": ("messaging_reconcile_min_s", float),
    "MESSAGING_RECONCILE_FACTOR": ("messaging_reconcile_factor", float),
    "MESSAGING_POLL_S": ("messaging_poll_s", float),
    "MESSAGING_BATCH_MAX": ("messaging_batch_max", int),
}

_LOG_FORMATS = {"text", "json"}
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def _read_or_create_secret(path: Path, nbytes: int) -> tuple[str, bool]:
    """The secret kept in ``path`` (0600), generating it on first use. Returns (value, created)."""
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value, True


def normalize_database_url(name: str, url: str) -> str:
    """Accept ``mysql://``, ``mariadb://``, ``sqlite:///`` and SQLAlchemy forms; return an async URL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"Config '{name}' must look like mysql://user:pass@host:port/db or sqlite:///path")
    base = scheme.split("+", 1)[0].lower()
    if base in {"mysql", "mariadb"}:
        if not urlsplit(url).path.strip("/"):
            raise ConfigError(f"Config '{name}' must name a database (mysql://user:pass@host:port/db)")
        return f"mysql+aiomysql://{rest}"
    if base == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    raise ConfigError(f"Config '{name}' has unsupported scheme {scheme!r}; use mysql:// or sqlite:///")


def load_settings(env: Mapping[str, str] | None = None, *, generate_secrets: bool = True) -> Settings:
    """Read settings once. ``env`` defaults to ``os.environ``; tests pass a dict.

    When ADMIN_TOKEN / SECRET_KEY are unset they are generated once and kept in DATA_DIR (0600);
    a freshly generated admin token is reported in ``extra['generated_admin_token']`` so the caller
    can print it once.
    """
    env = dict(os.environ if env is None else env)
    values = _typed_values(env)
    data_dir = Path(env.get("DATA_DIR") or "data").resolve()
    sessions_dir = Path(env.get("SESSIONS_DIR") or "sessions").resolve()
    database_url = env.get("DATABASE_URL") or f"sqlite:///{data_dir / 'gateway.sqlite3'}"
    database_url = normalize_database_url("DATABASE_URL", database_url)
    redis_url = env.get("REDIS_URL") or None
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("Config 'REDIS_URL' must start with redis://, rediss:// or unix://")
    admin_token, secret_key, extra = _secrets(env, data_dir, generate_secrets)
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        admin_token=Secret(admin_token),
        secret_key=Secret(secret_key),
        data_dir=data_dir,
        sessions_dir=sessions_dir,
        extra=extra,
        **values,
    )


def _typed_values(env: Mapping[str, str]) -> dict[str, Any]:
    """The plain settings (``_ENV``) that are set, parsed to their types and checked."""
    values: dict[str, Any] = {}
    for var, (attr, kind) in _ENV.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        if kind is bool:
            values[attr] = _bool(var, raw)
        elif kind in (int, float):
            values[attr] = _number(var, raw, kind)
        elif kind == "networks":
            values[attr] = _networks(var, raw)
        else:
            values[attr] = raw
    if not 0 < values.get("port", 5000) < 65536:
        raise ConfigError(f"Config 'PORT' must be 1..65535, got {values['port']}")
    fmt = values.get("log_format", "text").lower()
    if fmt not in _LOG_FORMATS:
        raise ConfigError(f"Config 'LOG_FORMAT' must be one of text|json, got {fmt!r}")
    values["log_format"] = fmt
    level = values.get("log_level", "INFO").upper()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"Config 'LOG_LEVEL' must be one of {'|'.join(sorted(_LOG_LEVELS))}, got {level!r}")
    values["log_level"] = level
    return values


def _secrets(env: Mapping[str, str], data_dir: Path, generate: bool) -> tuple[str, str, dict[str, str]]:
    """(admin token, secret key, extra): from the environment, else (``generate``) read from or
    created in DATA_DIR; a newly created admin token is reported in extra."""
    extra: dict[str, str] = {}
    admin_token = env.get("ADMIN_TOKEN")
    secret_key = env.get("SECRET_KEY")
    if not admin_token or not secret_key:
        if not generate:
            missing = "ADMIN_TOKEN" if not admin_token else "SECRET_KEY"
            raise ConfigError(f"Config '{missing}' is missing, and has no default")
        if not admin_token:
            admin_token, created = _read_or_create_secret(data_dir / "admin_token", 32)
            if created:
                extra["generated_admin_token"] = admin_token
        if not secret_key:
            secret_key, _ = _read_or_create_secret(data_dir / "secret_key", 32)
    if len(admin_token) < 16:
        raise ConfigError("Config 'ADMIN_TOKEN' must be at least 16 characters")
    if len(secret_key) < 16:
        raise ConfigError("Config 'SECRET_KEY' must be at least 16 characters")
    return admin_token, secret_key, extra
