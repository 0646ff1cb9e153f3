"""A test double of the analysis (the real one arrives with issue #4).

It does what the worker needs from an analyser and nothing medical: for a
study with pairs it returns one SR naming the pairs it was given, tagged
"TEST DOUBLE" and "NOT FOR CLINICAL USE", and a model identity saying it
is a test double. It can be told to fail (transiently) a number of times,
or to pause, so tests can kill the node mid-analysis, or to decode the
pairs' pixel data as the real analysis does (an undecodable image then
raises the real analysis' :class:`~cem_node.contracts.analysis.InstanceUnusableError`).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from pydicom.uid import generate_uid

from cem_node.contracts.analysis import AnalysisRequest, AnalysisResult, ResultObject
from cem_node.dicom.objects.common import ReportingDevice
from cem_node.dicom.objects.not_analysable import build_not_analysable_sr

__all__ = ["DoubleAnalyser"]

MODEL_NAME = "test-double"
MODEL_VERSION = "0"
MODEL_SHA256 = "0" * 64


class DoubleAnalyser:
    """Return one SR per study round; optionally fail first or pause.

    Parameters
    ----------
    fail_times
        Raise a (transient) RuntimeError on the first ``fail_times`` calls.
    pause_s
        Sleep this long before answering (to kill the node mid-analysis).
    started_marker
        A file created when an analysis starts (tests wait for it).
    decode_pixels
        Decode every pair's images first, with the real analysis' decoder.
    """

    def __init__(
        self,
        *,
        fail_times: int = 0,
        pause_s: float = 0.0,
        started_marker: Path | None = None,
        decode_pixels: bool = False,
    ) -> None:
        self.fail_times = fail_times
        self.pause_s = pause_s
        self.started_marker = started_marker
        self.decode_pixels = decode_pixels
        self.calls: list[AnalysisRequest] = []
        self._lock = threading.Lock()

    def analyse(self, request: AnalysisRequest) -> AnalysisResult:
        with self._lock:
            self.calls.append(request)
            calls = len(self.calls)
        if self.started_marker is not None:
            self.started_marker.write_text(f"{os.getpid()} {request.study_instance_uid}\n")
        if self.pause_s:
            time.sleep(self.pause_s)
        if calls <= self.fail_times:
            raise RuntimeError(f"test double failing on purpose (call {calls})")
        if self.decode_pixels:
            from cem_node.pipeline.service import decode_pairs

            decode_pairs(request)
        pairs = ", ".join(f"{p.laterality} {p.view}" for p in request.pairs)
        report = build_not_analysable_sr(
            list(request.headers),
            f"TEST DOUBLE of the analysis, round {request.analysis_round}: pairs {pairs}",
            device=ReportingDevice(device_serial_number="TEST_DOUBLE"),
            sop_instance_uid=generate_uid(),
        )
        return AnalysisResult(
            objects=[ResultObject("sr", report)],
            model_name=MODEL_NAME,
            model_version=MODEL_VERSION,
            model_sha256=MODEL_SHA256,
            device="cpu",
            document={"pairs": [[p.laterality, p.view] for p in request.pairs]},
        )
