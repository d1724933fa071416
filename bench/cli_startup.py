"""CPU time of the quick commands, each in a fresh interpreter, beside a bare ``python -c pass``.

``tinyfed --help`` lists the commands without importing them (``tinyfed.cli.COMMANDS``); a command
imports its own module when it runs. The figure is the child's user + system CPU (resource's
RUSAGE_CHILDREN), the median of ``--repeat`` runs, so a busy machine stretches it less than wall time.

Run: ``.venv/bin/python bench/cli_startup.py [--repeat 7]``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys

CASES: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "tinyfed --help": ["-m", "tinyfed.cli", "--help"],
    "tinyfed --version": ["-m", "tinyfed.cli", "--version"],
    "tinyfed boards list": ["-m", "tinyfed.cli", "boards", "list"],
    "tinyfed simulate --help": ["-m", "tinyfed.cli", "simulate", "--help"],
}
TARGET_CPU_S = 0.3  # tinyfed --help and boards list


def child_cpu(args: list[str]) -> float:
    """User + system CPU seconds of one ``python ARGS`` run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    base = None
    print(f"| command | CPU s (median of {args.repeat}) | over python -c pass |")
    print("| --- | ---: | ---: |")
    for name, argv in CASES.items():
        cpu = statistics.median(child_cpu(argv) for _ in range(args.repeat))
        base = cpu if base is None else base
        print(f"| {name} | {cpu:.3f} | {cpu - base:+.3f} |")
    print(f"target: tinyfed --help and boards list under {TARGET_CPU_S} s of CPU")


if __name__ == "__main__":
    main()
