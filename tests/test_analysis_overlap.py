"""The analysis's stages overlap without changing its results (issue #22).

The next pair is decoded and preprocessed while the detector runs, the
radiomics of a view's lesions run while the next view is detected, and a
pair's pixels are let go once used. What must hold: the findings equal those
of the analysis run step by step, a view's findings do not depend on the
study's other views, memory holds at most three pairs of a lazily decoded
study, an undecodable image still stops the analysis with its own error, and
the radiomics worker processes are started once and survive a dead worker.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import threading
import time
import weakref
from collections.abc import Iterator

import pytest

from cem_node.config import SelectionSection
from cem_node.contracts.analysis import InstanceUnusableError
from cem_node.contracts.findings import Findings
from cem_node.models import BundleRegistry
from cem_node.pipeline.analyse import LoadedModels, PairInput, analyse_study, study_context
from cem_node.pipeline.prefetch import prefetched
from cem_node.pipeline.service import decode_pairs, iter_decoded_pairs, requests_from_files
from cem_node.synthetic import SynthOptions, generate_study
from tests.bundle_factory import make_tiny_bundle

# -- prefetched: the background iterator ------------------------------------


def test_prefetched_keeps_order_and_runs_in_another_thread() -> None:
    threads = []

    def produce() -> Iterator[int]:
        for i in range(20):
            threads.append(threading.get_ident())
            yield i

    assert list(prefetched(produce(), depth=2)) == list(range(20))
    assert set(threads) and threading.get_ident() not in threads


def test_prefetched_produces_at_most_depth_ahead() -> None:
    produced: list[int] = []

    def produce() -> Iterator[int]:
        for i in range(10):
            produced.append(i)
            yield i

    items = prefetched(produce(), depth=1)
    assert next(items) == 0
    time.sleep(0.3)  # time for the producer to run ahead as far as it may
    # item 1 waits in the queue, item 2 is made and waits to be put
    assert len(produced) <= 3
    assert list(items) == list(range(1, 10))


def test_prefetched_raises_the_producers_error_after_the_items_before_it() -> None:
    def produce() -> Iterator[int]:
        yield 1
        yield 2
        raise InstanceUnusableError("1.2.3", "undecodable")

    items = prefetched(produce())
    assert next(items) == 1 and next(items) == 2
    with pytest.raises(InstanceUnusableError) as raised:
        next(items)
    assert raised.value.sop_instance_uid == "1.2.3"


def test_prefetched_stops_the_producer_when_the_consumer_stops() -> None:
    produced: list[int] = []

    def produce() -> Iterator[int]:
        for i in range(1000):
            produced.append(i)
            yield i

    items = prefetched(produce(), depth=1)
    assert next(items) == 0
    items.close()  # the consumer gives up (an exception in the analysis does this)
    count = len(produced)
    time.sleep(0.3)
    assert len(produced) == count <= 3
    assert not [t for t in threading.enumerate() if t.name == "prefetch"]


def test_prefetched_refuses_a_depth_below_one() -> None:
    with pytest.raises(ValueError, match="depth must be at least 1"):
        list(prefetched([1], depth=0))


# -- the analysis -------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("overlap")
    make_tiny_bundle(root / "models")
    generate_study(root / "studies", seed=11, index=0, options=SynthOptions(size="small"))
    study_dir = next((root / "studies").iterdir())
    studies, skipped = requests_from_files([study_dir / "dicom"], SelectionSection())
    assert not skipped and len(studies) == 1
    models = LoadedModels.load(BundleRegistry(root / "models").load("tiny-test"), "cpu")
    yield models, studies[0].request
    models.close()


def _comparable(findings: Findings) -> dict:
    """The findings without what differs between two runs (creation time, timings)."""
    return findings.model_dump(mode="json", exclude={"created", "timings_s"})


def _analyse(models, request, pairs, **options) -> Findings:
    return analyse_study(models, study_context(list(request.headers)), pairs, **options)


@pytest.mark.parametrize("radiomics_workers", [1, 2])
def test_overlapped_analysis_gives_the_step_by_step_findings(study, radiomics_workers) -> None:
    models, request = study
    reference = _analyse(models, request, decode_pairs(request), overlap=False)
    assert reference.lesions, "the tiny bundle finds lesions: the radiomics stage ran"
    assert all(lesion.radiomics_probability is not None for lesion in reference.lesions)
    overlapped = _analyse(
        models, request, iter_decoded_pairs(request), radiomics_workers=radiomics_workers
    )
    assert _comparable(overlapped) == _comparable(reference)
    assert {"decode", "preprocess", "detect", "radiomics", "radiomics_wait"} <= set(
        overlapped.timings_s
    )


def test_overlap_is_chosen_by_the_setting_the_device_and_the_cores(study, monkeypatch) -> None:
    from cem_node.config import AnalysisSection
    from cem_node.pipeline import analyse as analyse_module
    from cem_node.pipeline.service import OVERLAP_MIN_CPUS, analyse_request, overlap_stages

    assert overlap_stages("on", "cpu", cpus=1) and not overlap_stages("off", "cuda:0")
    assert overlap_stages("auto", "cuda:0", cpus=1)  # the CPU is free while the GPU detects
    assert not overlap_stages("auto", "cpu", cpus=2)  # measured slower on 2 cores
    assert overlap_stages("auto", "cpu", cpus=OVERLAP_MIN_CPUS)
    assert AnalysisSection().overlap_stages == "auto"
    with pytest.raises(ValueError):
        AnalysisSection(overlap_stages="sometimes")
    # the node's analysis passes the resolved choice on
    models, request = study
    seen: list[bool] = []
    real = analyse_module.analyse_study

    def spy(*args, **kwargs):
        seen.append(kwargs["overlap"])
        return real(*args, **kwargs)

    monkeypatch.setattr(analyse_module, "analyse_study", spy)
    for setting in ("on", "off"):
        analyse_request(models, request, AnalysisSection(overlap_stages=setting))
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    analyse_request(models, request, AnalysisSection())
    assert seen == [True, False, False]


def test_a_views_findings_do_not_depend_on_the_other_views(study) -> None:
    models, request = study
    pairs = decode_pairs(request)
    whole = _analyse(models, request, pairs)
    for pair in pairs:
        alone = _analyse(models, request, [pair])
        key = f"{pair.laterality}-{pair.view}-"
        expected = [
            lesion.model_dump(mode="json")
            for lesion in whole.lesions
            if lesion.lesion_id.startswith(key)
        ]
        found = [lesion.model_dump(mode="json") for lesion in alone.lesions]
        assert found == expected, f"{pair.laterality} {pair.view}"


def test_a_lazily_decoded_study_holds_at_most_three_pairs(study) -> None:
    models, request = study
    pairs = decode_pairs(request)
    many = [
        PairInput(p.laterality, p.view, p.low_energy, p.recombined) for p in pairs
    ]  # fresh copies of the pixels below, so that only the analysis holds them
    alive: list[weakref.ref] = []
    held_at_request: list[int] = []

    def lazily() -> Iterator[PairInput]:
        for pair in many:
            held_at_request.append(sum(ref() is not None for ref in alive))
            low = pair.low_energy.pixels.copy()
            alive.append(weakref.ref(low))
            yield PairInput(
                pair.laterality,
                pair.view,
                dataclasses.replace(pair.low_energy, pixels=low),
                pair.recombined,
            )

    findings = _analyse(models, request, lazily())
    assert len(findings.views) == len(many) == 4
    # asked for pair k, the analysis still holds at most pairs k-2 and k-1 (and
    # the one it detects on): never the whole study
    assert max(held_at_request) <= 3
    assert sum(ref() is not None for ref in alive) == 0, "every pair let go at the end"


def test_an_undecodable_image_stops_the_overlapped_analysis_with_its_error(study) -> None:
    models, request = study
    good = decode_pairs(request)

    def failing() -> Iterator[PairInput]:
        yield good[0]
        raise InstanceUnusableError("1.2.840.99", "undecodable pixel data")

    with pytest.raises(InstanceUnusableError) as raised:
        _analyse(models, request, failing())
    assert raised.value.sop_instance_uid == "1.2.840.99"
    assert not [t for t in threading.enumerate() if t.name.startswith("analysis-prefetch")]


def _children() -> set[int]:
    return {process.pid for process in multiprocessing.active_children()}


def test_radiomics_workers_start_once_and_a_dead_one_is_replaced(study) -> None:
    models, request = study
    models.close()
    before = _children()
    pool = models.radiomics_pool(2)
    workers = _children() - before
    assert len(workers) == 2, "both workers started with the pool, before any study"
    assert models.radiomics_pool(2) is pool
    first = _analyse(models, request, decode_pairs(request), radiomics_workers=2)
    assert _children() - before == workers, "the same processes served the study"

    killed = min(workers)
    os.kill(killed, signal.SIGKILL)
    time.sleep(0.5)
    # a new pool takes over at the next submission; the findings are the same
    again = _analyse(models, request, decode_pairs(request), radiomics_workers=2)
    assert _comparable(again) == _comparable(first)
    assert killed not in _children()

    models.close()
    assert not _children() - before, "close() stops the workers"
