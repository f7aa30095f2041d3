#!/usr/bin/env bash
# Regenerates the lock files from pyproject.toml: requirements/runtime.txt ([project] dependencies)
# and requirements/test.txt (plus the "test" extra, constrained to runtime.txt's pins), every
# package pinned with its hashes. scripts/run and scripts/test install from them (scripts/lib.sh,
# ensure_venv) and reinstall when either changes.
#
# Run it after changing dependencies in pyproject.toml, then commit both files:
#   requirements/lock.sh                            # keep the current pins where still allowed
#   requirements/lock.sh --upgrade-package aiohttp  # move one package to its newest allowed release
#   requirements/lock.sh --upgrade                  # move everything
# Needs pip-tools (`python3.11 -m venv /tmp/lock && /tmp/lock/bin/pip install pip-tools`, then
# LOCK_PIP_COMPILE=/tmp/lock/bin/pip-compile) run by Python 3.11, the oldest supported, and PyPI access.
# It resolves against PyPI only: a machine's pip configuration (extra indexes, local wheels) is
# ignored, so the hashes are PyPI's.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK_PIP_COMPILE="${LOCK_PIP_COMPILE:-pip-compile}"  # not PIP_*: pip reads those
export CUSTOM_COMPILE_COMMAND="requirements/lock.sh   (its header says how to add, change or upgrade a dependency)"
compile() {
  env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null "$LOCK_PIP_COMPILE" --quiet \
    --generate-hashes --allow-unsafe --strip-extras --index-url https://pypi.org/simple "$@"
}
compile "$@" --output-file requirements/runtime.txt pyproject.toml
compile "$@" --extra test --constraint requirements/runtime.txt --output-file requirements/test.txt pyproject.toml
