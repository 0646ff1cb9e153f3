"""Vendor-style CEM studies through the network, end to end.

Each study is written by ``cem-node synth --vendor ...`` in the header style
that docs/VENDORS.md confirms for its manufacturer, with the awkward layouts
of real sites (a For Processing copy of every low-energy image, one series
per image, only the old SNOMED-RT view codes, compressed transfer syntaxes),
sent by dcmtk's storescu to a running node. Each must be analysed once, with
the four For Presentation low-energy/recombined pairs of its breasts and
views. Late recombined images and multi-frame images have their own tests
(tests/test_late_arrivals.py, tests/test_multiframe.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from cem_node.jobs.admin import show_study
from cem_node.node import Node
from cem_node.store import StudyState
from cem_node.synthetic.study import SynthOptions, generate_study
from tests.analysis_double import DoubleAnalyser
from tests.test_node import make_settings, running_node, send, state_is, wait_until

pytestmark = pytest.mark.tools

__all__ = ["running_node"]  # the fixture, used by name below

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"

#: vendor, edge cases, transfer syntax
VARIANTS = [
    ("ge", frozenset({"for-processing", "old-view-codes"}), "explicit"),
    ("hologic", frozenset({"split-series", "for-processing"}), "jpeg2000"),
    ("siemens", frozenset({"old-view-codes"}), "jpegls"),
    ("fujifilm", frozenset({"split-series"}), "rle"),
]


@pytest.fixture(scope="module")
def vendor_studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vendors")
    return {
        vendor: generate_study(
            root / vendor,
            7,
            index,
            SynthOptions(
                size="small", vendor=vendor, edge_cases=edge_cases, transfer_syntax=syntax
            ),
        )
        for index, (vendor, edge_cases, syntax) in enumerate(VARIANTS)
    }


def test_every_vendor_style_is_paired_and_analysed_over_the_network(
    tmp_path: Path, running_node: Callable[..., Node], vendor_studies: dict[str, Path]
) -> None:
    analyser = DoubleAnalyser()
    node = running_node(make_settings(tmp_path / "node"), analyser)
    expected: dict[str, dict[str, object]] = {}
    for vendor, study in vendor_studies.items():
        files = sorted((study / "dicom").glob("*.dcm"))
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
        uid = str(headers[0].StudyInstanceUID)
        expected[uid] = {
            "vendor": vendor,
            "manufacturer": str(headers[0].Manufacturer),
            "images": len(files),
            "presentation": {
                str(ds.SOPInstanceUID) for ds in headers if ds.SOPClassUID == MG_FOR_PRESENTATION
            },
            "processing": {
                str(ds.SOPInstanceUID) for ds in headers if ds.SOPClassUID == MG_FOR_PROCESSING
            },
        }
        result = send(node, files)
        assert result.returncode == 0, result.stderr[-2000:]
    assert len({e["manufacturer"] for e in expected.values()}) == 4

    for uid, facts in expected.items():
        wait_until(
            state_is(node, uid, StudyState.DONE, StudyState.NOT_ANALYSABLE, StudyState.FAILED),
            timeout_s=60,
            what=f"the {facts['vendor']} study analysed",
        )
    assert node.sessions is not None
    requests = {r.study_instance_uid: r for r in analyser.calls}
    assert sorted(requests) == sorted(expected)  # each study analysed once
    for uid, facts in expected.items():
        vendor = facts["vendor"]
        shown = show_study(node.sessions, uid)
        assert shown["state"] == "done", (vendor, shown["state"], shown["state_reason"])
        assert len(shown["instances"]) == facts["images"], vendor
        request = requests[uid]
        assert sorted((p.laterality, p.view) for p in request.pairs) == [
            ("L", "CC"),
            ("L", "MLO"),
            ("R", "CC"),
            ("R", "MLO"),
        ], vendor
        used = {p.low_energy_sop_instance_uid for p in request.pairs} | {
            p.recombined_sop_instance_uid for p in request.pairs
        }
        # the processed images the model was trained on, never a raw copy
        assert used <= facts["presentation"], vendor
        assert not used & facts["processing"], vendor
        for instance in shown["instances"]:
            assert instance["role_reason"], (vendor, instance)
        if facts["processing"]:
            # the raw copies are accounted for, with the reason they were not used
            reasons = " ".join(str(p["reason"]) for p in shown["pairings"])
            assert "For Processing" in reasons, (vendor, reasons)
