"""Benchmark: time to generate one full-size 8-image synthetic CEM study on one core.

Target (issue #2): under 10 s. Run: ``.venv/bin/python bench/bench_synth.py``.
Pins BLAS/FFT threads to one and reports the time per stage and in total.
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from cem_node.synthetic import SynthOptions, generate_study  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", default="full")
    parser.add_argument("--transfer-syntax", default="explicit")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    options = SynthOptions(size=args.size, transfer_syntax=args.transfer_syntax)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            started = time.perf_counter()
            generate_study(Path(tmp) / str(i), 1000 + i, 1, options)
            times.append(time.perf_counter() - started)
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (pinned to 1)"
    )
    print(
        f"synthetic study, size={args.size}, {args.transfer_syntax}: "
        f"median {statistics.median(times):.2f} s, min {min(times):.2f} s, max {max(times):.2f} s "
        f"over {len(times)} studies (target < 10 s)"
    )


if __name__ == "__main__":
    main()
