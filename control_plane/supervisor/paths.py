"""Where a tenant's session lives: ``SESSIONS_DIR/<tenant-id>/`` (0700), and nowhere else.

Tenant ids are validated before they touch the filesystem, and every path is resolved (symlinks
followed) and checked to lie strictly inside SESSIONS_DIR, so neither a crafted id nor a planted
symlink can make the supervisor create, wipe or delete anything outside it.

The one thing a session leaves outside its folder is the bridge's short TMPDIR symlink,
``/tmp/wabridge-<sha256(<folder>/tmp)[:16]>`` -> ``<folder>/tmp`` (bridge/src/main.js, made only
when ``<folder>/tmp`` is too long for Chromium's socket paths). Wiping or deleting the folder
removes that link, only if it is a symlink pointing into the folder (it is never followed), and the
boot sweep removes such links whose target is gone (``sweep_tmp_links``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path

from control_plane import errors
from control_plane.db.metadata import TENANT_ID_RE

TMP_DIR_NAME = "tmp"
# whatsapp-web.js LocalAuth keeps Chromium's profile at <dataPath>/session-<clientId>; the bridge
# uses clientId "session".
PROFILE_DIR_NAME = "session-session"
# Where and how the bridge names its short TMPDIR symlinks (bridge/src/main.js, shortTmpDir).
TMP_LINK_DIR = Path("/tmp")
TMP_LINK_RE = re.compile(r"^wabridge-[0-9a-f]{16}\Z")

log = logging.getLogger(__name__)


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


def tmp_link(folder: Path, link_dir: Path = TMP_LINK_DIR) -> Path:
    """The name of the short TMPDIR symlink the bridge makes for the session folder ``folder``."""
    tmp = os.path.join(str(folder), TMP_DIR_NAME)
    return Path(link_dir) / f"wabridge-{hashlib.sha256(tmp.encode()).hexdigest()[:16]}"


def remove_tmp_link(folder: Path, link_dir: Path = TMP_LINK_DIR) -> bool:
    """Removes ``folder``'s TMPDIR symlink if there is one and it points into ``folder`` (by its text:
    never followed). Anything else under that name is left alone. Returns whether it was removed."""
    link = tmp_link(folder, link_dir)
    try:
        target = os.readlink(link)  # not a symlink / missing: OSError
    except OSError:
        return False
    if not os.path.isabs(target) or not Path(os.path.normpath(target)).is_relative_to(folder):
        log.warning("not removing %s: it points to %s, outside %s", link, target, folder)
        return False
    try:
        link.unlink()
    except FileNotFoundError:
        return False
    return True


def sweep_tmp_links(link_dir: Path = TMP_LINK_DIR) -> int:
    """Boot sweep: removes the bridge's TMPDIR symlinks (``wabridge-<16 hex>``, ours, pointing to a
    ``.../tmp`` folder) whose target no longer exists. Returns how many were removed."""
    removed = 0
    uid = os.getuid()
    try:
        entries = list(os.scandir(link_dir))
    except OSError:
        return 0
    for entry in entries:
        if not TMP_LINK_RE.match(entry.name):
            continue
        try:
            if not entry.is_symlink() or entry.stat(follow_symlinks=False).st_uid != uid:
                continue
            target = os.readlink(entry.path)
            if not os.path.isabs(target) or os.path.basename(os.path.normpath(target)) != TMP_DIR_NAME:
                continue
            if os.path.exists(entry.path):  # follows the link: the target is still there
                continue
            os.unlink(entry.path)
            removed += 1
        except OSError:
            continue
    return removed


def wipe_tenant_dir(sessions_dir: Path, tenant_id: str) -> None:
    """Empties the tenant's folder (profile, saved auth, temp files) but keeps the folder; removes
    its TMPDIR symlink (the next bridge makes it again)."""
    path = tenant_dir(sessions_dir, tenant_id)
    remove_tmp_link(path)
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
    remove_tmp_link(link)
    if link.is_symlink():  # never follow it: drop the link itself
        link.unlink()
        return True
    path = tenant_dir(sessions_dir, tenant_id)
    if not path.exists():
        return False
    shutil.rmtree(path)
    return True
