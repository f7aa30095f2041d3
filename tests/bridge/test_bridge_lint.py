"""The bridge's JavaScript passes ESLint (bridge/eslint.config.js: @eslint/js recommended, node
globals). Same as ``cd bridge && npx eslint .``."""

from __future__ import annotations

import subprocess

from tests.bridge.conftest import NODE, REPO
from tests.support import unless_installed

ESLINT = REPO / "bridge" / "node_modules" / "eslint" / "bin" / "eslint.js"


@unless_installed(ESLINT, "eslint is not installed (npm ci in bridge/)")
def test_bridge_sources_pass_eslint():
    done = subprocess.run(
        [NODE, str(ESLINT), "--max-warnings", "0", "."],
        cwd=REPO / "bridge",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
