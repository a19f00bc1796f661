"""Where one stack's server spends its time under load: py-spy's samples, as inclusive frames.

A tool for planning and checking an optimisation, not a benchmark: sampling slows
the server, so its figures are shares of the samples, never speeds.

It serves one stack of ``bench/stacks.py`` (``--stack``: layer, hand, fastapi,
ceiling) on a database of its own (``--db``), loads one route (``--route``: read,
write, nodb) with ``wrk -t1 -c32`` and meanwhile samples the server's processes
with ``py-spy record --subprocesses --threads`` (``--gil``: only the samples
of a thread holding the GIL, the Python CPU time). Printed: the
share of samples in each thread kind (the event loop's main thread, aiosqlite's
connection threads, ...); for the main thread the functions with the largest
inclusive share of its samples (the function anywhere on the stack) and the
largest self share (at the top of it); for the others their top frames. Code a
greenlet runs (SQLAlchemy's asyncio bridge) shows as stacks of their own, rooted
at the greenlet's first frame, not under the event loop's. ``--raw FILE`` keeps
py-spy's collapsed stacks (for ``flamegraph.pl`` or speedscope). Needs ``py-spy``
(the ``bench`` extra) and root or ptrace rights.

Usage: ``python bench/profile_stack.py --stack layer --db sqlite --route write [--seconds 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `service` importable
    sys.path.insert(0, str(ROOT))

from bench import harness, stacks  # noqa: E402 - importable once the path is set
from bench.harness import Server  # noqa: E402

ROUTES = {
    "read": ("/", "read", (str(stacks.ROWS),)),
    "write": ("/items", "write", ()),
    "nodb": ("/nodb", "nodb", ()),
}
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _function(frame: str) -> str:
    """``name (file)``: the frame without its line number."""
    found = _FRAME.match(frame)
    return f"{found['function']} ({found['file']})" if found else frame


_THREAD = re.compile(r"^thread \(\d+\): (?P<name>.*)$")


_SCAFFOLD = re.compile(
    r"\((multiprocessing/|asyncio/runners\.py|hypercorn/asyncio/run\.py|<string>)"
    r"|^BaseEventLoop\.(run_forever|run_until_complete|_run_once) "
)
"""Frames under every sample of the event loop (start-up, the loop itself): left out."""


def _idle_frames() -> set[str]:
    """Leaf frames of a thread waiting for work, which py-spy counts as active all the same:
    aiosqlite's connection threads blocked in their queue's ``get()``."""
    import aiosqlite.core

    source = inspect.getsource(aiosqlite.core).splitlines()
    start = inspect.getsourcelines(aiosqlite.core._connection_worker_thread)[1]
    lines = [n for n, text in enumerate(source, 1) if n >= start and "tx.get()" in text]
    return {f"_connection_worker_thread (aiosqlite/core.py:{n})" for n in lines[:1]}


def _thread(name: str) -> str:
    """A thread's kind: its name without its number (``Thread-3 (f)``: ``Thread (f)``)."""
    return re.sub(r"-\d+", "", name)


def _top(counts: Counter[str], total: int, top: int) -> list[str]:
    return [f"  {n / total:6.1%}  {function}" for function, n in counts.most_common(top)]


def summarize(raw: Path, top: int) -> str:
    """Samples per thread kind; the main thread's top inclusive and self frames; the others'."""
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    others: Counter[str] = Counter()
    idle_frames, idle, greenlets = _idle_frames(), 0, 0
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        # The process frames hold command lines, which may hold ";": start at the thread's.
        at = stack_text.find("thread (")
        frames = stack_text[at:].split(";") if at >= 0 else stack_text.split(";")
        found = _THREAD.match(frames[0]) if frames else None
        kind = _thread(found["name"]) if found else "?"
        stack = frames[1:] if found else frames
        if stack and stack[-1] in idle_frames:
            idle += count
            continue
        threads[kind] += count
        if kind != "MainThread":
            if stack:
                others[f"{kind}: {_function(stack[-1])}"] += count
            continue
        if not any("run_forever" in f for f in stack):
            greenlets += count  # a greenlet's frames come without the loop's beneath them
        for function in {_function(f) for f in stack}:
            if not _SCAFFOLD.search(function):
                inclusive[function] += count
        if stack:
            own[_function(stack[-1])] += count
    total, main = sum(threads.values()), threads["MainThread"]
    if not total:
        return "no samples (py-spy needs ptrace rights: run as root)"
    lines = [f"{total} samples of active threads ({idle} more of aiosqlite's threads waiting for"]
    lines += [" work left out); by thread:", *_top(threads, total, top)]
    if main:
        waiting = own["EpollSelector.select (selectors.py)"]
        lines += ["", f"MainThread: {waiting / main:.1%} of its samples waiting in select (idle),"]
        lines += [f"{greenlets / main:.1%} in greenlets (SQLAlchemy's sync code, own stacks)"]
        lines += ["", f"MainThread (the event loop), top {top} inclusive, of its {main} samples:"]
        lines += _top(inclusive, main, top)
        lines += ["", f"MainThread, top {top} self:"]
        lines += _top(own, main, top)
    if total > main:
        lines += ["", f"the other threads, top {top} self, of all {total} samples:"]
        lines += _top(others, total, top)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stack", choices=["layer", "hand", "fastapi", "ceiling"], required=True)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--route", choices=list(ROUTES), default="read")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    args = parser.parse_args(argv)
    spy = Path(sys.executable).parent / "py-spy"
    for tool in ("wrk", str(spy)):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (`pip install -e '.[bench]'`, apt-get install wrk)")
            return 1
    stack = next(s for s in stacks.all_stacks(django=False) if s.key == args.stack)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        work = Path(tmp)
        if args.db == "sqlite":
            url = f"sqlite+aiosqlite:///{work / 'items.db'}"
        else:
            url = harness.postgres_url(f"profile_{stack.key}")
        asyncio.run(stacks.prepare(url))
        path, name, wrk_args = ROUTES[args.route]
        lua = {"read": stacks.READ_LUA, "write": stacks.WRITE_LUA, "nodb": ""}[name]
        script = harness.write_script(work, name, lua)
        server = Server(f"profile-{stack.key}", stack.target, {"DATABASE_URL": url}, work)
        raw = args.raw or work / "raw.txt"
        try:
            server.wait_ready("/nodb", timeout=60)
            harness.burst(server, path, 2, script, wrk_args)  # warm-up
            command = ["wrk", "-t1", "-c32", f"-d{args.seconds + 2}s", "--timeout", "10s"]
            command += ["-s", str(script), server.base + path, "--", *wrk_args]
            load = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            time.sleep(1)
            subprocess.run(
                [str(spy), "record", "--pid", str(server.process.pid), "--subprocesses"]
                + ["--threads", "--format", "raw", "--rate", "100"]
                + ["--duration", str(args.seconds), "--output", str(raw)]
                + (["--gil"] if args.gil else []),
                check=True,
                capture_output=True,
            )
            out, _ = load.communicate(timeout=60)
        finally:
            server.stop()
            if args.db == "postgresql":
                asyncio.run(harness.drop_postgres_database(url))
        rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
        print(f"{stack.label}, {args.db}, {args.route}: {rate[1] if rate else '?'} req/s sampled")
        print(summarize(raw, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
