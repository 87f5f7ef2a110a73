"""Writes a benchmark's own section of docs/benchmarks.md: its table, command, machine and date."""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import re
import sys

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEAD = """# Benchmarks

Each section below is written by the benchmark it names (`--write-docs`), never by hand: the
table, the command that produced it, the machine and the date. Rerun a command to refresh its
section; the other sections stay as they are. Timings from different machines or dates do not
compare: each benchmark compares its rows side by side within one run.
"""


def machine() -> str:
    """CPU model, cores, OS, Python, thread settings and load (other work on the machine slows
    every timing) of this run, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    threads = os.environ.get("NUMBA_NUM_THREADS", "default")
    load = (f", load average {os.getloadavg()[0]:.1f} at the end" if hasattr(os, "getloadavg")
            else "")
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, NUMBA_NUM_THREADS={threads}{load}")


def section(name: str, title: str, body: str, argv=None, key: str | None = None) -> str:
    """The markdown section of benchmark `name` (e.g. "engine") with its table `body`; `key`
    tells apart sections of one benchmark run with different arguments."""
    key = key or name
    args = sys.argv[1:] if argv is None else argv
    command = " ".join(["python", "-m", f"bench.{name}", *args])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!-- bench.{key}: begin -->\n## {title}\n\n"
            f"`{command}` on {machine()}, {date}.\n\n{body.strip()}\n"
            f"<!-- bench.{key}: end -->\n")


def write_section(name: str, title: str, body: str, path: pathlib.Path = DOC, argv=None,
                  key: str | None = None, head: str = HEAD) -> None:
    """Replaces (or appends) benchmark `name`'s section (`key`) of `path`, keeping the others;
    a new file starts with `head`."""
    key = key or name
    text = path.read_text() if path.exists() else head
    new = section(name, title, body, argv, key)
    pattern = re.compile(rf"<!-- bench\.{re.escape(key)}: begin -->.*?"
                         rf"<!-- bench\.{re.escape(key)}: end -->\n", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: new, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + new
    path.write_text(text)
    print(f"wrote the bench.{name} section of {path}")
