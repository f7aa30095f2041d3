"""The security and chaos suite's figures: a pytest plugin (loaded by ``tests/conftest.py``).

- The ``chaos`` marker: ``pytest -m chaos`` runs the whole security-and-chaos suite. Tests in
  ``tests/chaos/`` carry it; so do the older security tests elsewhere, listed in ``ELSEWHERE`` (by file
  and test-name fragment, so their files need no edit; a listed fragment that matches nothing in a
  collected file is reported in red in the summary, not a silently smaller suite).
- The ``figures`` fixture: ``figures("cross-tenant matrix", routes=88, leaks=0)`` prints one line
  ``FIGURES <test>: <what>: k=v ...`` at once and keeps it for the end of the run.
- At the end, "security and chaos figures": every chaos test that ran, its outcome, its duration
  (setup + call + teardown) and its figures lines, then the suite's summed duration.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

# file -> fragments of test names marked chaos there (None: every test of the file)
ELSEWHERE: dict[str, tuple[str, ...] | None] = {
    "tests/webhooks/test_abuse.py": None,
    "tests/webhooks/test_webhook_receiver.py": (
        "duplicate",
        "signature",
        "cross_tenant_forgery",
        "body_limits",
        "database_unreachable",
        "killed_connections",
    ),
    "tests/messaging/test_kill9.py": None,
    "tests/api/test_schemathesis.py": ("schemathesis",),
    "tests/api/test_empty_bodies.py": None,
    "tests/api/test_hostile_input.py": None,
    "tests/api/test_tenants.py": ("another_tenants_objects", "admin_routes_refuse"),
    "tests/http/test_auth_throttle.py": None,
    "tests/realtime/test_connect_throttle.py": None,
    "tests/supervisor/test_supervisor_scripted.py": ("kill9",),
    "tests/supervisor/test_supervisor_wwebjs.py": ("kill9",),  # the bridge's browser too
}
CHAOS_DIR = "tests/chaos/"


@dataclass
class _Record:
    nodeid: str
    outcome: str = "passed"
    duration_s: float = 0.0
    lines: list[str] = field(default_factory=list)


class _Figures:
    def __init__(self) -> None:
        self.records: dict[str, _Record] = {}
        self.started: float | None = None
        self.unmatched: list[str] = []  # ELSEWHERE entries that matched no collected test

    def record(self, nodeid: str) -> _Record:
        return self.records.setdefault(nodeid, _Record(nodeid))


_KEY = pytest.StashKey[_Figures]()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_KEY] = _Figures()


@pytest.hookimpl(tryfirst=True)  # before -m chaos selects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seen: dict[str, set[str]] = {}
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        name = item.name
        if path.startswith(CHAOS_DIR):
            item.add_marker(pytest.mark.chaos)
            continue
        if path not in ELSEWHERE:
            continue
        fragments = ELSEWHERE[path]
        hits = seen.setdefault(path, set())
        if fragments is None:
            item.add_marker(pytest.mark.chaos)
            continue
        for fragment in fragments:
            if fragment in name:
                item.add_marker(pytest.mark.chaos)
                hits.add(fragment)
    store = config.stash[_KEY]
    for path, hits in seen.items():
        missing = set(ELSEWHERE[path] or ()) - hits
        # only when the whole file was collected (not a -k or ::name selection of it)
        if missing and not config.getoption("keyword") and not any("::" in a for a in config.args):
            store.unmatched.append(f"{path}: no test named like {sorted(missing)}")


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``figures("what", key=value, ...)``: print one figures line now, and again in the summary."""
    store = request.config.stash[_KEY]

    def report(what: str, **values: Any) -> None:
        line = f"{what}: " + " ".join(f"{k}={_fmt(v)}" for k, v in values.items())
        store.record(request.node.nodeid).lines.append(line)
        print(f"\nFIGURES {request.node.name}: {line}", flush=True)

    return report


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_KEY].started = time.monotonic()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]):  # type: ignore[no-untyped-def]
    outcome = yield
    if item.get_closest_marker("chaos") is None:
        return
    report: pytest.TestReport = outcome.get_result()
    store = item.config.stash[_KEY]
    rec = store.record(item.nodeid)
    rec.duration_s += report.duration
    if report.skipped:
        rec.outcome = "skipped"
    elif report.failed:
        rec.outcome = "failed" if report.when == "call" else f"error ({report.when})"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    store = config.stash.get(_KEY, None)
    records = [r for r in store.records.values() if r.outcome != "skipped"] if store else []
    if store is None or not (records or store.unmatched):
        return  # e.g. the SQLite smoke run, where the chaos tests are skipped
    tr = terminalreporter
    tr.write_sep("=", "security and chaos figures")
    for line in store.unmatched:
        tr.write_line(f"MISSING  {line}: update ELSEWHERE in tests/chaos/figures.py", red=True)
    total = 0.0
    for rec in records:
        total += rec.duration_s
        tr.write_line(f"{rec.outcome:8} {rec.duration_s:6.1f} s  {rec.nodeid}")
        for line in rec.lines:
            tr.write_line(f"{'':18}{line}")
    counts: dict[str, int] = {}
    for rec in records:
        counts[rec.outcome] = counts.get(rec.outcome, 0) + 1
    wall = time.monotonic() - store.started if store.started else 0.0
    tr.write_line(
        f"security and chaos suite: {len(records)} tests ("
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        + f"), {total:.1f} s of test time; this pytest run's wall time {wall:.1f} s"
    )
