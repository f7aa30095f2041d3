"""Where a tenant's session lives: ``SESSIONS_DIR/<tenant-id>/`` (0700), and nowhere else.

Tenant ids are validated before they touch the filesystem, and every path is resolved (symlinks
followed) and checked to lie strictly inside SESSIONS_DIR, so neither a crafted id nor a planted
symlink can make the supervisor create, wipe or delete anything outside it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from control_plane import errors

TENANT_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")
TMP_DIR_NAME = "tmp"
# whatsapp-web.js LocalAuth keeps Chromium's profile at <dataPath>/session-<clientId>; the bridge
# uses clientId "session".
PROFILE_DIR_NAME = "session-session"


class InvalidTenantId(errors.InvalidInput):
    code = "invalid_tenant_id"


class UnsafeSessionPath(errors.Conflict):
    """The tenant folder resolves outside SESSIONS_DIR (a symlink was planted)."""
    code = "unsafe_session_path"


def validate_tenant_id(tenant_id: object) -> str:
    if not isinstance(tenant_id, str) or not TENANT_ID_RE.match(tenant_id):
        raise InvalidTenantId("tenant id must be 32 lower-case hex characters", field="tenant_id")
    return tenant_id


def sessions_root(sessions_dir: Path, *, create: bool = False) -> Path:
    root = Path(sessions_dir).resolve()
    if create:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return root


def tenant_dir(sessions_dir: Path, tenant_id: str, *, create: bool = False) -> Path:
    """The absolute, resolved folder of this tenant; created 0700 when ``create``."""
    validate_tenant_id(tenant_id)
    root = sessions_root(sessions_dir, create=create)
    path = (root / tenant_id).resolve()
    if path.parent != root or not path.is_relative_to(root):
        raise UnsafeSessionPath(f"session folder of tenant {tenant_id} resolves outside SESSIONS_DIR")
    if create:
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
        (path / TMP_DIR_NAME).mkdir(mode=0o700, exist_ok=True)
    return path


def profile_dir(folder: Path) -> Path:
    return folder / PROFILE_DIR_NAME


def inside(folder: Path, candidate: str | Path) -> bool:
    """Whether ``candidate`` (resolved) lies inside ``folder``."""
    try:
        return Path(candidate).resolve().is_relative_to(folder)
    except (OSError, ValueError):
        return False


def wipe_tenant_dir(sessions_dir: Path, tenant_id: str) -> None:
    """Empties the tenant's folder (profile, saved auth, temp files) but keeps the folder."""
    path = tenant_dir(sessions_dir, tenant_id)
    if not path.is_dir():
        return
    for entry in path.iterdir():
        if entry.is_symlink() or not entry.is_dir():
            entry.unlink(missing_ok=True)
        else:
            shutil.rmtree(entry, ignore_errors=True)
    (path / TMP_DIR_NAME).mkdir(mode=0o700, exist_ok=True)


def remove_tenant_dir(sessions_dir: Path, tenant_id: str) -> bool:
    """Deletes the tenant's folder. Returns whether there was one."""
    validate_tenant_id(tenant_id)
    root = sessions_root(sessions_dir)
    link = root / tenant_id
    if link.is_symlink():  # never follow it: drop the link itself
        link.unlink()
        return True
    path = tenant_dir(sessions_dir, tenant_id)
    if not path.exists():
        return False
    shutil.rmtree(path)
    return True
