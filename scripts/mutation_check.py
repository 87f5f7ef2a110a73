"""Applies guarantee-breaking mutations to a scratch copy, one at a time, and reports which the
tests catch.

    NUMBA_NUM_THREADS=1 .venv/bin/python scripts/mutation_check.py [--only ID ...]
        [--doc docs/mutation.md]

Mutations live in scripts/mutations.toml as exact search/replace pairs per file: update them
when code moves. A search text that is not found exactly once is reported as an error, never
as caught. Each mutation runs the tests it names (`python -m pytest -x`) in a copy of the
working tree (tracked and untracked, not ignored, files, plus the numba caches of the checkout,
so that unchanged kernels load warm). Numba's cache does not recompile a kernel whose callee in
another file changed, so a mutation in such a file (`fresh_numba_cache`, the default for engine
files with kernels) runs with an empty NUMBA_CACHE_DIR and compiles everything it calls.
Outcomes: caught (the tests fail), SURVIVED (they pass), error (the mutation could not be
applied, or pytest could not run), timeout. A baseline run of every named test on the
unmutated copy comes first: a failing baseline stops the check.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_LIST = REPO / "scripts" / "mutations.toml"
ENGINE = "server/eplb_server/engine/"


def load_mutations(path: pathlib.Path) -> list[dict]:
    """The [[mutation]] tables, each with edits = [{file, search, replace}]."""
    data = tomllib.loads(path.read_text())
    mutations = []
    for entry in data["mutation"]:
        edits = entry.get("edits") or [{k: entry[k] for k in ("file", "search", "replace")}]
        mutations.append({**entry, "edits": edits})
    ids = [m["id"] for m in mutations]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise SystemExit(f"duplicate mutation ids: {sorted(duplicates)}")
    return mutations


def needs_fresh_cache(mutation: dict, root: pathlib.Path) -> bool:
    if "fresh_numba_cache" in mutation:
        return bool(mutation["fresh_numba_cache"])
    return any(e["file"].startswith(ENGINE) and "numba.njit" in (root / e["file"]).read_text()
               for e in mutation["edits"])


def copy_tree(dest: pathlib.Path) -> None:
    """The working tree's files git does not ignore, and the numba caches beside the engine;
    ../shared (real snapshots, conformance cases) is linked beside the copy as beside the
    checkout, so that the tests reading it run rather than skip."""
    shared = REPO.parent / "shared"
    if shared.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        (dest.parent / "shared").symlink_to(shared)
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    caches = [p.relative_to(REPO).as_posix() for p in REPO.glob("server/**/__pycache__/*.nb[ic]")]
    for name in filter(None, listed + caches):
        source = REPO / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def apply(mutation: dict, root: pathlib.Path) -> str | None:
    """Applies the edits in place; returns an error message instead where one cannot apply."""
    for edit in mutation["edits"]:
        path = root / edit["file"]
        if not path.is_file():
            return f"{edit['file']}: no such file"
        text = path.read_text()
        found = text.count(edit["search"])
        if found != 1:
            return f"{edit['file']}: search text found {found} times, not once"
        path.write_text(text.replace(edit["search"], edit["replace"]))
    return None


def restore(mutation: dict, root: pathlib.Path) -> None:
    for edit in mutation["edits"]:
        if (REPO / edit["file"]).is_file():
            shutil.copy2(REPO / edit["file"], root / edit["file"])


def run_tests(tests: list[str], root: pathlib.Path, fresh_cache: bool, timeout: float):
    """-> (outcome, seconds, detail): pytest's exit status 1 is 'caught', 0 'SURVIVED'."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "server"),
                                                          str(root / "client")]),
           "NUMBA_NUM_THREADS": os.environ.get("NUMBA_NUM_THREADS", "1")}
    cache_dir = None
    if fresh_cache:
        cache_dir = tempfile.mkdtemp(prefix="numba-cache-")
        env["NUMBA_CACHE_DIR"] = cache_dir
    else:
        env.pop("NUMBA_CACHE_DIR", None)
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider",
               *tests]
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start, f"over {timeout:.0f} s"
    finally:
        if cache_dir:
            shutil.rmtree(cache_dir, ignore_errors=True)
    seconds = time.monotonic() - start
    failed = re.findall(r"^FAILED (.+?)(?: - .*)?$", done.stdout, re.M)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode == 1:
        return "caught", seconds, failed[0] if failed else summary
    if done.returncode == 0:
        return "SURVIVED", seconds, summary
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    return "error", seconds, f"pytest exit {done.returncode}: " + " | ".join(tail)


def table(rows) -> str:
    lines = ["| mutation | breaks | file | tests run | outcome | first failing test | s |",
             "|---|---|---|---|---|---|---|"]
    for m, outcome, seconds, detail in rows:
        files = ", ".join(sorted({e["file"].rsplit("/", 1)[-1] for e in m["edits"]}))
        tests = ", ".join(t.rsplit("/", 1)[-1] for t in m["tests"])
        fresh = " (fresh numba cache)" if m.get("_fresh") else ""
        lines.append(f"| {m['id']} | {m['breaks']} | {files}{fresh} | {tests} | {outcome} | "
                     f"{detail.replace('|', '/')} | {seconds:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", type=pathlib.Path, default=DEFAULT_LIST)
    parser.add_argument("--only", nargs="*", help="mutation ids to run (default: all)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per pytest run")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--doc", type=pathlib.Path, help="also write the table to this file")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    args = parser.parse_args(argv)
    mutations = load_mutations(args.list)
    if args.only:
        unknown = set(args.only) - {m["id"] for m in mutations}
        if unknown:
            raise SystemExit(f"unknown mutation ids: {sorted(unknown)}")
        mutations = [m for m in mutations if m["id"] in args.only]
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="eplb-mutation-"))
    root = scratch / "repo"
    copy_tree(root)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    print(f"scratch copy {root} of {commit}{' (with uncommitted changes)' if dirty else ''}",
          flush=True)
    started = time.monotonic()
    try:
        if not args.no_baseline:
            tests = sorted({t for m in mutations for t in m["tests"]})
            outcome, seconds, detail = run_tests(tests, root, False, args.timeout)
            baseline = f"baseline, unmutated ({len(tests)} test paths): {detail} in {seconds:.0f} s"
            print(baseline, flush=True)
            if outcome != "SURVIVED":  # unmutated, the tests must pass
                print("the baseline fails: outcomes would mean nothing", file=sys.stderr)
                return 2
        else:
            baseline = "baseline not run"
        rows = []
        for m in mutations:
            m["_fresh"] = needs_fresh_cache(m, root)
            error = apply(m, root)
            if error:
                outcome, seconds, detail = "error", 0.0, error
            else:
                outcome, seconds, detail = run_tests(m["tests"], root, m["_fresh"], args.timeout)
            restore(m, root)
            rows.append((m, outcome, seconds, detail))
            print(f"{m['id']}: {outcome} in {seconds:.0f} s ({detail})", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    report = table(rows)
    caught = sum(outcome == "caught" for _, outcome, _, _ in rows)
    summary = (f"{caught} of {len(rows)} mutations caught; {len(rows) - caught} not "
               f"(survived, error or timeout); {time.monotonic() - started:.0f} s in all")
    print(report)
    print(summary)
    if args.doc:
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        args.doc.write_text(
            "# Mutation check\n\nWritten by `scripts/mutation_check.py` (mutations in "
            "`scripts/mutations.toml`): each mutation breaks one guarantee that the README or "
            "the docs state, on a scratch copy, and the tests it names must then fail.\n\n"
            f"Run {when} on {commit}{' with uncommitted changes' if dirty else ''}, "
            f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', '1')}, "
            "on a shared machine (times are contended).\n\n"
            f"{baseline}.\n\n{report}\n\n{summary}.\n")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
