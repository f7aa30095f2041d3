"""Run one benchmark against two commits side by side and print each figure's ratio new/old.

    .venv/bin/python bench/compare.py --base c1006eb --rounds 3 webhook_bench -- --duration 5
    .venv/bin/python bench/compare.py --base main --rounds 3 dispatch_bench -- --tenants 5 --seconds 5

The base commit (old) is checked out into a temporary git worktree (``git worktree add --detach``;
``bridge/node_modules`` and ``tests/realtime/node_client/node_modules`` are symlinked from this tree
when present; the worktree is removed at exit). The new side is this working tree as it is,
uncommitted changes included, unless ``--new REV`` names a commit (checked out the same way).
Rounds alternate on the same machine in one run (old, new, old, new, ...), so both sides see the same
load. Each round runs ``python bench/<name>.py <args> --json`` with its tree as the working directory
(so it imports that tree's ``control_plane``) and reads the JSON object the bench prints as its last
line. The table shows, per figure, the median over rounds of each side and new/old, then every round's
value. Whether higher or lower is better depends on the figure (req/s vs. ms).

By default the NEW bench script, i.e. this tree's (``bench/<name>.py`` and the ``bench/*.js`` it
drives), is copied into the old worktree (and into the ``--new`` one) before the rounds: the bench
measures the server, the script is only the harness, and an older script may lack ``--json``.
``--base-bench own`` keeps each checked-out tree's own script (it must print the JSON line). A script
that imports a ``control_plane`` module the old tree does not have gets it from the virtualenv's
editable install (another tree) if there is one, and fails otherwise; compare.py prints a note naming
such modules. Harmless for constants (event names); otherwise keep the bench's imports to what both
trees provide, or use ``--base-bench own`` with a base whose bench has ``--json``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ("bridge/node_modules", "tests/realtime/node_client/node_modules")
Figures = dict[str, float]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def resolve(rev: str) -> str:
    try:
        return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except subprocess.CalledProcessError:
        sys.exit(f"compare: {rev!r} is not a commit in {ROOT}")


@contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """A detached checkout of ``rev`` in a temporary directory, with this tree's node_modules."""
    path = Path(tempfile.mkdtemp(prefix=f"bench-compare-{rev[:8]}-"))
    path.rmdir()  # git worktree add wants to create it
    git("worktree", "add", "--detach", str(path), rev)
    try:
        for rel in NODE_MODULES:
            source, target = ROOT / rel, path / rel
            if source.exists() and target.parent.is_dir() and not target.exists():
                target.symlink_to(source.resolve(), target_is_directory=True)
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)


def copy_harness(name: str, source: Path, target: Path) -> None:
    """Put the new tree's bench script (and the JS files benches drive) into the old tree."""
    shutil.copy2(source / "bench" / f"{name}.py", target / "bench" / f"{name}.py")
    for js in (source / "bench").glob("*.js"):
        shutil.copy2(js, target / "bench" / js.name)


def missing_modules(tree: Path, name: str) -> list[str]:
    """The ``control_plane`` modules the bench script imports that ``tree`` does not have.

    Python does not fail on them: the virtualenv's editable install of the package (if any) supplies
    them from wherever it points, mixed with this tree's modules. Worth knowing before trusting figures.
    """
    script = ast.parse((tree / "bench" / f"{name}.py").read_text())
    wanted = {n.name for node in ast.walk(script) if isinstance(node, ast.Import) for n in node.names}
    wanted |= {node.module for node in ast.walk(script) if isinstance(node, ast.ImportFrom) and node.module}
    missing = []
    for module in sorted(m for m in wanted if m.split(".")[0] == "control_plane"):
        base = tree.joinpath(*module.split("."))
        if not (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()):
            missing.append(module)
    return missing


def last_json(stdout: str) -> Figures | None:
    """The numbers of the last stdout line that is a JSON object (nested objects flattened a.b)."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not (line.startswith("{") and line.endswith("}")):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        return flatten(obj)
    return None


def flatten(obj: dict, prefix: str = "") -> Figures:
    out: Figures = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        elif isinstance(value, int | float):
            out[f"{prefix}{key}"] = float(value)
    return out


def stop(proc: subprocess.Popen, forward: bool) -> None:
    """Let an interrupted bench run its own clean-up (servers, throwaway database): SIGINT, then kill."""
    if forward:  # a Ctrl-C in the terminal already reached it (same process group)
        proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def run_round(tree: Path, name: str, bench_args: list[str], label: str, show: bool) -> Figures:
    cmd = [sys.executable, f"bench/{name}.py", *bench_args, "--json"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate()
    except BaseException as exc:
        stop(proc, forward=not isinstance(exc, KeyboardInterrupt))
        raise
    if show:
        sys.stderr.write(stdout + stderr)
    figures = last_json(stdout)
    if proc.returncode != 0 or figures is None:
        tail = "\n".join((stdout + stderr).splitlines()[-30:])
        sys.exit(
            f"compare: {label} round failed (exit {proc.returncode}, "
            f"{'no' if figures is None else 'a'} JSON line) in {tree}:\n{tail}"
        )
    print(f"  {label}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return figures


def fmt(value: float) -> str:
    if value != value:  # NaN
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def table(old: list[Figures], new: list[Figures]) -> list[str]:
    names = list(dict.fromkeys(k for f in (*old, *new) for k in f))
    rows = [("figure", "old", "new", "new/old", "old rounds", "new rounds")]
    for key in names:
        olds = [f[key] for f in old if key in f]
        news = [f[key] for f in new if key in f]
        o = statistics.median(olds) if olds else float("nan")
        n = statistics.median(news) if news else float("nan")
        ratio = f"{n / o:.3f}" if olds and news and o else "-"
        rows.append(
            (key, fmt(o), fmt(n), ratio, " ".join(fmt(v) for v in olds), " ".join(fmt(v) for v in news))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        cells = [
            c.ljust(w) if j in (0, 4, 5) else c.rjust(w)
            for j, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    argv = sys.argv[1:]
    bench_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, bench_args = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [options] NAME [-- BENCH ARGS...]",
    )
    parser.add_argument("bench", help="bench/<name>.py to run, e.g. webhook_bench")
    parser.add_argument("--base", required=True, help="the old commit (any git revision)")
    parser.add_argument("--new", default=None, help="the new commit (default: this working tree as it is)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side, alternating (default 3)")
    parser.add_argument(
        "--base-bench",
        choices=("new", "own"),
        default="new",
        help="bench script on a checked-out side: this tree's, copied over (default), or the tree's own",
    )
    parser.add_argument("--show-output", action="store_true", help="echo every round's output to stderr")
    args = parser.parse_args(argv)
    args.bench = Path(args.bench).name.removesuffix(".py")
    if not (ROOT / "bench" / f"{args.bench}.py").is_file():
        parser.error(f"no bench/{args.bench}.py in {ROOT}")
    return args, bench_args


def main() -> None:
    args, bench_args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the worktree clean-up
    base = resolve(args.base)
    new_rev = resolve(args.new) if args.new else None
    with ExitStack() as stack:
        old_tree = stack.enter_context(worktree(base))
        new_tree = stack.enter_context(worktree(new_rev)) if new_rev else ROOT
        if args.base_bench == "new":
            for tree in {old_tree, new_tree} - {ROOT}:
                copy_harness(args.bench, ROOT, tree)
        script = "this tree's bench script" if args.base_bench == "new" else "each tree's own bench script"
        new_label = new_rev[:10] if new_rev else f"working tree ({git('rev-parse', '--short=10', 'HEAD')}+)"
        print(
            f"{args.bench} {' '.join(bench_args)}: old {base[:10]} vs new {new_label}, {args.rounds} "
            f"alternating rounds, {script}, {os.cpu_count()} CPUs, "
            f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
            flush=True,
        )
        for side, tree in (("old", old_tree), ("new", new_tree)):
            if missing := missing_modules(tree, args.bench):
                print(
                    f"note: the {side} tree has no {', '.join(missing)}; the bench imports "
                    f"{'it' if len(missing) == 1 else 'them'} from the installed package, if any",
                    flush=True,
                )
        old: list[Figures] = []
        new: list[Figures] = []
        for i in range(1, args.rounds + 1):
            old.append(run_round(old_tree, args.bench, bench_args, f"round {i} old", args.show_output))
            new.append(run_round(new_tree, args.bench, bench_args, f"round {i} new", args.show_output))
    print(f"medians over {args.rounds} rounds; load average now {os.getloadavg()[0]:.1f}")
    print("\n".join(table(old, new)))


if __name__ == "__main__":
    main()
