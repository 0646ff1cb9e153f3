"""bench/bench_crash.py in small: one kill -9 during a 2-sender burst loses nothing acknowledged.

The full run (5 rounds, 4 senders x 25 full-size images) is the benchmark's;
this one keeps the script working: 1 round, 2 senders x 10 small images.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.bench_crash import main

from tests.dicom_validators import require_tool

pytestmark = [pytest.mark.tools, pytest.mark.slow]


def test_one_kill9_round_keeps_every_acknowledged_instance(tmp_path: Path) -> None:
    require_tool("echoscu")
    figures = tmp_path / "figures.json"
    code = main(
        [
            "--rounds=1",
            "--senders=2",
            "--images=10",
            "--size=small",
            "--seed=3",  # the kill after 9 of the 20 images were acknowledged
            "--jitter-ms=20",
            f"--work-dir={tmp_path / 'cache'}",
            f"--scratch={tmp_path}",
            f"--json={figures}",
        ]
    )
    result = json.loads(figures.read_text())
    (round_,) = result["rounds"]
    assert round_["missing"] == 0 and round_["differing"] == 0, round_
    assert 1 <= round_["acknowledged"] < round_["images"], "the kill must land mid-burst"
    assert round_["healthz_after_restart"] == 200 and round_["echo_after_restart"]
    assert round_["survivors_after_kill"] == 0
    assert round_["temporary_files_after_restart"] == 0
    assert code == 0 and result["totals"]["pass"]
