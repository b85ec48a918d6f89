"""CPU time of the platform's processes by role over a window, read from /proc (Linux).

Run beside anything (``make ui``, a benchmark): every ``--every`` seconds it reads the user+system CPU time of
each process whose command line names a role (run worker, code server, daemon, webserver, ``dagster dev``,
plain benchmark worker), and at the end prints per role the CPU seconds used during the window, per minute, and
as a share of the machine's cores. A process that ended during the window counts what it used until its last
sample. No yardstick is needed: the figures are shares of the machine measured in the same window.

    .venv/bin/python benchmarks/process_cpu.py [--seconds 180] [--every 2] [--json out.json]
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

#: role -> substrings of a command line (the first role that matches wins)
ROLES = (
    ("run worker", ("execute_run", "execute_step", "api execute")),
    ("code server", ("api grpc", "code-server")),
    ("daemon", ("dagster-daemon", "dagster._daemon")),
    ("webserver", ("dagster-webserver", "dagster_webserver")),
    ("dagster dev", ("dagster dev",)),
    ("plain worker", ("multiprocessing.spawn",)),
)
TICKS = os.sysconf("SC_CLK_TCK")


def _role(command: str) -> str | None:
    return next((role for role, marks in ROLES if any(mark in command for mark in marks)), None)


def sample() -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds so far) of every process with a role."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        role = _role(command)
        if role is not None:
            found[int(entry.name)] = (role, (int(fields[11]) + int(fields[12])) / TICKS)
    return found


def measure(seconds: float, every: float) -> dict[str, float]:
    """CPU seconds used per role during the window (processes started during it count from zero)."""
    first, last = sample(), {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(every, max(0.0, deadline - time.monotonic())))
        last.update(sample())
    used: dict[str, float] = {}
    for pid, (role, cpu) in last.items():
        used[role] = used.get(role, 0.0) + cpu - first.get(pid, (role, 0.0))[1]
    return used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--every", type=float, default=2.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not Path("/proc/self/stat").exists():
        print("process_cpu: needs Linux's /proc", file=sys.stderr)
        return 2
    used = measure(args.seconds, args.every)
    cores = os.cpu_count() or 1
    print(f"| role | CPU-s in {args.seconds:.0f} s | CPU-s a minute | share of {cores} cores |")
    print("|---|---|---|---|")
    for role, cpu in sorted(used.items(), key=lambda item: -item[1]):
        print(f"| {role} | {cpu:.1f} | {60 * cpu / args.seconds:.2f} | {100 * cpu / (args.seconds * cores):.1f} % |")
    if args.json:
        args.json.write_text(json.dumps({"seconds": args.seconds, "cores": cores, "cpu_s": used}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
