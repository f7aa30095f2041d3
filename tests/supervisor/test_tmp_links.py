"""The bridge's short TMPDIR symlinks (/tmp/wabridge-<hash> -> <session folder>/tmp) do not outlive
their session: removed when the profile is wiped (logout) or the tenant deleted, only when they point
into that tenant's folder; the boot sweep removes those whose target is gone."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from control_plane.supervisor import paths
from tests.bridge.conftest import NODE
from tests.supervisor.conftest import ready_session

pytestmark = pytest.mark.timeout(60)
TID = "0123456789abcdef0123456789abcdef"


def test_link_name_matches_the_bridge():
    """sha256 of '<folder>/tmp', as bridge/src/main.js names it."""
    folder = "/srv/sessions/" + TID
    js = (
        "const tmp = require('path').join(process.argv[1], 'tmp');"
        "console.log(require('crypto').createHash('sha256').update(tmp).digest('hex').slice(0, 16))"
    )
    out = subprocess.run([NODE, "-e", js, folder], capture_output=True, text=True, check=True).stdout.strip()
    assert paths.tmp_link(Path(folder)) == Path(f"/tmp/wabridge-{out}")


def test_remove_tmp_link_only_when_it_points_into_the_folder(tmp_path):
    links = tmp_path / "links"
    links.mkdir()
    root = tmp_path / "sessions"
    folder = paths.tenant_dir(root, TID, create=True)
    link = paths.tmp_link(folder, links)
    # Not a symlink: left alone.
    link.write_text("mine")
    assert not paths.remove_tmp_link(folder, links) and link.read_text() == "mine"
    link.unlink()
    # A symlink to somewhere else: left alone, and its target untouched.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link.symlink_to(elsewhere)
    assert not paths.remove_tmp_link(folder, links) and link.is_symlink() and elsewhere.is_dir()
    link.unlink()
    link.symlink_to(str(folder) + "/../other/tmp")  # lexically outside the folder
    assert not paths.remove_tmp_link(folder, links) and link.is_symlink()
    link.unlink()
    # Ours: removed (the link only; the folder's tmp stays).
    link.symlink_to(folder / paths.TMP_DIR_NAME)
    assert paths.remove_tmp_link(folder, links) and not os.path.lexists(link)
    assert (folder / paths.TMP_DIR_NAME).is_dir()
    assert not paths.remove_tmp_link(folder, links)  # nothing there: fine


def test_sweep_removes_only_our_dangling_links(tmp_path):
    links = tmp_path / "links"
    links.mkdir()
    live = tmp_path / "live" / "tmp"
    live.mkdir(parents=True)
    made = {
        "wabridge-00000000000000aa": tmp_path / "gone" / "tmp",  # dangling: removed
        "wabridge-00000000000000bb": live,  # target exists: kept
        "wabridge-00000000000000cc": tmp_path / "gone" / "other",  # not a .../tmp target: kept
        "wabridge-short": tmp_path / "gone" / "tmp",  # not a bridge name: kept
        "other-00000000000000dd": tmp_path / "gone" / "tmp",  # not a bridge name: kept
    }
    for name, target in made.items():
        (links / name).symlink_to(target)
    (links / "wabridge-00000000000000ee").write_text("a file")  # not a symlink: kept
    assert paths.sweep_tmp_links(links) == 1
    assert sorted(p.name for p in links.iterdir()) == sorted(
        set(made) - {"wabridge-00000000000000aa"} | {"wabridge-00000000000000ee"}
    )
    assert live.is_dir()
    assert paths.sweep_tmp_links(tmp_path / "missing") == 0


async def test_logout_and_forget_remove_the_link_and_boot_sweeps_dangling_ones(
    make_supervisor, new_tenant, sessions_root
):
    # A deep SESSIONS_DIR: <folder>/tmp is too long for Chromium's sockets, so the bridge makes a link.
    deep = sessions_root / ("d" * 60)
    sup, pub = await make_supervisor(SESSIONS_DIR=str(deep))
    tid = await new_tenant()
    await ready_session(sup, pub, tid)
    folder = (deep / tid).resolve()
    link = paths.tmp_link(folder)
    assert link.is_symlink() and os.readlink(link) == str(folder / "tmp")
    await sup.logout(tid)
    assert not os.path.lexists(link) and folder.is_dir()  # noqa: ASYNC240 -- a stat in a test, no loop to keep responsive
    n = len(pub.of(tid))
    await sup.start(tid)  # the next bridge makes it again
    await pub.wait_state(tid, "qr", after=n)
    assert link.is_symlink()
    await sup.forget(tid)
    assert not os.path.lexists(link) and not folder.exists()  # noqa: ASYNC240 -- a stat in a test, no loop to keep responsive

    # A link left dangling (its folder deleted behind our back) goes at the next start-up.
    tid2 = await new_tenant()
    await ready_session(sup, pub, tid2)
    folder2 = (deep / tid2).resolve()
    link2 = paths.tmp_link(folder2)
    assert link2.is_symlink()
    n = len(pub.of(tid2))
    await sup.stop(tid2)
    await pub.wait_state(tid2, "stopped", after=n)
    shutil.rmtree(folder2)
    assert os.path.lexists(link2) and not os.path.exists(link2)  # noqa: ASYNC240 -- a stat in a test, no loop to keep responsive
    await sup.close()
    await make_supervisor(SESSIONS_DIR=str(deep))
    assert not os.path.lexists(link2)  # noqa: ASYNC240 -- a stat in a test, no loop to keep responsive
