"""bench/bench_gpu.py in small: the CPU check of the GPU benchmark, and its refusal without CUDA.

The benchmark itself runs on a machine with a CUDA GPU; ``--allow-cpu --quick``
runs every part on the CPU on a small study, so these tests keep the script
working where there is no GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "bench_gpu.py"
DETECTOR_ROWS = {
    ("resnet101_fpn", "fp16"),
    ("resnet101_fpn", "fp32"),
    ("mobilenet_v3_lite", "fp16"),
    ("mobilenet_v3_lite", "fp32"),
}


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_quick_cpu_run_measures_every_detector_row_and_the_analysis(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = _run("--allow-cpu", "--quick", f"--json={out}", timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())

    rows = {(r["model"], r["precision_requested"]): r for r in figures["detector"]}
    assert set(rows) == DETECTOR_ROWS and len(figures["detector"]) == 4
    for (model, requested), row in rows.items():
        assert row["per_image_s"]["median"] > 0, (model, requested)
        # what ran, read from the network's output, not assumed
        expected = requested if figures["cuda"] else "fp32"  # detect() autocasts on CUDA only
        assert row["precision_ran"] == expected, row
        assert row["mask_head_rois_per_image"] > 0, row
    paper = rows[("resnet101_fpn", "fp16")]
    assert paper["mask_head_rois_per_image"] <= paper["detections_per_image_cap"]
    assert "untrained" in paper["weights"]

    analysis = figures["analysis"]
    assert analysis["bundle"] == "cem-demo"
    assert analysis["total_s"]["median"] > 0
    assert analysis["timings_s"]["detect"]["median"] > 0
    assert figures["estimate_resnet101_study_s"] > 0
    assert figures["end_to_end"] == {"skipped": "--quick"}
    assert "Detector and study analysis on" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_without_cuda_it_exits_2_with_one_clear_line() -> None:
    done = _run(timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("no CUDA GPU: "), done.stderr
    assert "--allow-cpu" in lines[0]
    assert done.stdout == ""
