"""Benchmark: time to encode SEG + SR + GSPS for a full-size 8-image study with 3 lesions.

Target (issue #5): under 2 s on CPU. Run: ``.venv/bin/python bench/bench_encode.py``.
Generates one full-size synthetic study (not timed), builds hand-made findings
with 3 lesions from its ground truth (``tests/findings_factory.py``), then
times :func:`cem_node.dicom.objects.results.encode_results` (all objects, in memory)
and, separately, writing them to bytes. Pins BLAS threads and the process to
one core; reports the median of a few runs.
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.findings_factory

from tests.findings_factory import (  # noqa: E402
    findings_from_ground_truth,
    study_headers,
    synthetic_study,
)

from cem_node.dicom.objects.results import encode_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", default="full")
    parser.add_argument("--lesions", type=int, default=3)
    parser.add_argument("--segmentation-type", default="BINARY", choices=["BINARY", "FRACTIONAL"])
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    with tempfile.TemporaryDirectory() as tmp:
        study = synthetic_study(Path(tmp), seed=7, index=1, size=args.size)
        findings = findings_from_ground_truth(study, max_lesions=args.lesions)
        headers = study_headers(study)
    assert len(findings.lesions) == args.lesions, "the study has too few lesions"
    encode_results(findings, headers, segmentation_type=args.segmentation_type)  # warm-up
    encode, write, counts = [], [], {}
    for _ in range(args.repeats):
        started = time.perf_counter()
        objects = encode_results(findings, headers, segmentation_type=args.segmentation_type)
        encode.append(time.perf_counter() - started)
        started = time.perf_counter()
        for obj in objects:
            obj.dataset.save_as(io.BytesIO(), enforce_file_format=True)
        write.append(time.perf_counter() - started)
        counts = {t: sum(o.object_type == t for o in objects) for t in ("seg", "sr", "gsps")}
    rows, cols = findings.views[0].rows, findings.views[0].columns
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (pinned to 1)"
    )
    print(
        f"study: {len(headers)} images {cols}x{rows}, {len(findings.lesions)} lesions in "
        f"{sum(bool(v.lesion_ids) for v in findings.views)} views -> "
        f"{counts['seg']} SEG ({args.segmentation_type}), {counts['sr']} SR, "
        f"{counts['gsps']} GSPS"
    )
    print(
        f"encode SEG+SR+GSPS: median {statistics.median(encode):.3f} s, min {min(encode):.3f} s, "
        f"max {max(encode):.3f} s over {len(encode)} runs (target < 2 s); "
        f"writing them to bytes: median {statistics.median(write):.3f} s"
    )


if __name__ == "__main__":
    main()
