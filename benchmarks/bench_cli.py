"""How fast the command line answers: `zoo --help`, `zoo list` and `zoo info NAME`, beside
`python -c "import torch"` for scale.

Each command runs `--runs` times, each time in a fresh subprocess (nothing cached in the interpreter; the
OS file cache warm after a first untimed run of each), with a private, empty local hub and variant
cache. Prints a markdown table of the median and the fastest wall time, with the CPU model:

    python benchmarks/bench_cli.py [--runs 7]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ZOO = str(Path(sys.executable).with_name("zoo"))
COMMANDS = {
    "`zoo --help`": [ZOO, "--help"],
    "`zoo list`": [ZOO, "list"],
    "`zoo info resnet18.zoo_digits`": [ZOO, "info", "resnet18.zoo_digits"],
    "`zoo info resnet18.zoo_digits_gmp90` (a variant: builds its recipe, imports torch)":
        [ZOO, "info", "resnet18.zoo_digits_gmp90"],
    '`python -c "import torch"`': [sys.executable, "-c", "import torch"],
}


def time_once(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per command (median reported)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    with tempfile.TemporaryDirectory() as root:
        env = {**os.environ, "ZOO_HUB": f"{root}/hub", "ZOO_CACHE": f"{root}/cache"}
        env.pop("ZOO_TRAIN_OPTIONS", None)
        rows = []
        for label, command in COMMANDS.items():
            time_once(command, env)  # warm the OS file cache
            times = [time_once(command, env) for _ in range(args.runs)]
            rows.append((label, statistics.median(times), min(times)))
    from zoo.evaluate.machine import current_machine

    machine = current_machine(threads=1)
    print(f"CPU: {machine.cpu} ({machine.isa}; {os.cpu_count()} logical CPUs); Python {machine.python}, "
          f"torch {machine.torch}; load average {os.getloadavg()[0]:.2f}; median of {args.runs} fresh subprocesses\n")
    print("| command | median s | fastest s |\n|---|---:|---:|")
    for label, median, fastest in rows:
        print(f"| {label} | {median:.2f} | {fastest:.2f} |")


if __name__ == "__main__":
    main()
