"""Benchmark: the detector and the study analysis on a CUDA GPU (issue #22).

Target (issue #22): the analysis of a study under 1.5 s with the paper's
ResNet-101-FPN at full resolution on a GPU.

Run on the GPU machine, in one command::

    .venv/bin/python bench/bench_gpu.py --json gpu.json

Without a CUDA GPU it stops with exit status 2 (``no CUDA GPU: ...``);
``--allow-cpu --quick`` runs every part on the CPU on a small study, as a
check that the script works (``tests/test_bench_gpu.py``), not as a figure.

What is measured (one table; ``--json`` writes every figure and sample)
    One synthetic study (``cem_node.synthetic``, size ``full``: the first seed
    from ``--seed`` with at least one lesion, so that the radiomics stage runs),
    paired and decoded as the node does (``requests_from_files``,
    ``decode_pairs``), its pairs preprocessed with each detector's own
    preprocessing (``preprocess_pair``).

    1. The detector, per image: the real ``detect()`` on each of the study's
       views in turn, one image per call as the analysis calls it (the time of
       the views divided by their number), host-to-device copy and
       post-processing included, with fp16 autocast
       (what ``detect()`` does on CUDA) and in fp32. ``detect()`` has no switch
       for its autocast: the fp32 rows run it on a wrapper whose forward
       disables autocast around the network (an inner ``torch.autocast(...,
       enabled=False)`` overrides the outer one). The precision that really
       ran is read from the box predictor's output dtype, not assumed. Two
       detectors:

       - the paper's ResNet-101-FPN Mask R-CNN (preset ``paper`` of ``cem-node
         train detector``: its widths, input short side 800). No bundle ships
         its weights, so it is built with untrained weights of the same
         architecture, which is what the time depends on, with the number of
         detections. Its BatchNorm statistics are computed on the benchmark's
         own images first (one forward in training mode): with the initial
         statistics the activations of 33 residual blocks exceed the fp16 range
         and would turn into inf/NaN. Its RoI heads keep a fixed number of
         detections per image (``--paper-detections``, default 10; the demo
         bundle's trained detector gives 5 to 7 per image on these studies),
         so that the mask head runs on a realistic, known number of RoIs.
       - the demo bundle's detector (``models/cem-demo``, MobileNetV3-lite),
         loaded as the node loads it (``LoadedModels.load``) with its own
         post-processing; its number of detections is what it finds.

    2. The whole analysis of the study with the demo bundle on that device:
       ``analyse_request`` with the node's default ``[analysis]`` settings,
       from the DICOM files (decoding included), median and p90 of its total
       and of each step of its ``timings_s``.
    3. An estimate of the same analysis with the ResNet-101-FPN detector:
       the demo analysis' median total with the demo detector's fp16
       ``detect()`` of the study's views replaced by ResNet-101's, and the demo
       preprocessing (short side 512) by ResNet-101's (short side 800), both
       measured here on the study's pairs. The analysis overlaps preprocessing
       with detection, so adding the difference whole is pessimistic; the
       radiomics stays the demo bundle's (the lesions a trained detector
       finds). An estimate, not a measurement, printed next to the 1.5 s
       target.
    4. End-to-end latency through a served node (``bench/bench_end_to_end.py
       --size full --studies 3 --model cem-demo``, run as a subprocess: dcmtk
       ``storescu`` into ``cem-node serve``, results stored at Orthanc; needs
       dcmtk and Orthanc, as ``make setup`` installs them). ``--skip-e2e``
       leaves it out.

Every timing has ``--warmup`` calls first that are not counted, then
``--repeats`` counted ones; on CUDA each is enclosed in
``torch.cuda.synchronize()``. The exit status is 0 when every part was
measured (the target is reported, not enforced), 1 when a part failed, 2 for
no CUDA GPU (without ``--allow-cpu``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from rich.console import Console
from rich.table import Table
from torch import nn

from cem_node.config import Settings
from cem_node.contracts.analysis import AnalysisRequest
from cem_node.contracts.params import (
    BACKBONE_WIDTHS,
    PRESET_ARCHITECTURE,
    DetectorConfig,
    PostprocessParams,
    PreprocessParams,
)
from cem_node.models.registry import BundleRegistry
from cem_node.pipeline.analyse import LoadedModels, PairInput
from cem_node.pipeline.detector import build_detector, detect
from cem_node.pipeline.preprocess import preprocess_pair
from cem_node.pipeline.service import (
    analyse_request,
    decode_pairs,
    effective_params,
    requests_from_files,
)
from cem_node.synthetic import SynthOptions, generate_study

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "models"
DEMO_BUNDLE = "cem-demo"
PAPER_BACKBONE, PAPER_SHORT_SIDE = PRESET_ARCHITECTURE["paper"]
#: Detections per image the ResNet-101 RoI heads keep (so the mask head runs on them).
PAPER_DETECTIONS = 10
#: Issue #22: study analysis with ResNet-101-FPN at full resolution on a GPU.
TARGET_STUDY_S = 1.5
#: --quick: the ResNet-101 input short side, so a CPU run stays within seconds.
QUICK_SHORT_SIDE = 320
E2E_TIMEOUT_S = 480
SEARCHED_SEEDS = 50


def _summary(samples: Sequence[float]) -> dict[str, Any]:
    """Median, p90 and count of ``samples`` (p90 of one sample: that sample)."""
    ordered = sorted(samples)
    p90 = (
        statistics.quantiles(ordered, n=10, method="inclusive")[-1]
        if len(ordered) > 1
        else ordered[0]
    )
    return {"median": statistics.median(ordered), "p90": p90, "n": len(ordered)}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(
    call: Callable[[], object], device: torch.device, warmup: int, repeats: int
) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``call``, after ``warmup`` uncounted ones.

    Parameters
    ----------
    call : callable
        The work timed, without arguments.
    device : torch.device
        On CUDA, the device is synchronised before and after each counted call.
    warmup, repeats : int
        Uncounted calls first, then counted ones.

    Returns
    -------
    list of float
        One duration per counted call, in seconds.
    """
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        _synchronize(device)  # nothing queued before the clock starts
        started = time.perf_counter()
        call()
        _synchronize(device)  # the GPU has finished when the clock stops
        samples.append(time.perf_counter() - started)
    return samples


class _AutocastOff(nn.Module):
    """A detector whose forward runs with autocast disabled (fp32 on CUDA).

    ``detect()`` always enters fp16 autocast on CUDA; an ``autocast(enabled=False)``
    region nested inside it wins, so ``detect()`` can run unchanged on this wrapper.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    @property
    def roi_heads(self) -> nn.Module:
        """The wrapped detector's RoI heads (``detect()`` sets their thresholds)."""
        return self.inner.roi_heads

    def forward(self, images: list[torch.Tensor]) -> Any:
        device_type = images[0].device.type if images else "cpu"
        with torch.autocast(device_type, enabled=False):
            return self.inner(images)


class _HeadProbe:
    """Hooks on the RoI heads: the dtype the box predictor ran in, the mask head's RoIs.

    A hook is one Python call per forward, negligible next to the network, so
    the probe stays on during the timed calls.
    """

    def __init__(self, model: nn.Module) -> None:
        heads = model.roi_heads
        self.dtypes: set[str] = set()
        self.mask_rois: list[int] = []
        self._handles = [
            heads.box_predictor.register_forward_hook(self._box),
            heads.mask_predictor.register_forward_hook(self._mask),
        ]

    def _box(self, module: nn.Module, inputs: object, output: tuple[torch.Tensor, ...]) -> None:
        self.dtypes.add(str(output[0].dtype).removeprefix("torch."))

    def _mask(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        self.mask_rois.append(int(output.shape[0]))

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _study_with_lesions(root: Path, first_seed: int, size: str) -> tuple[Path, int, int]:
    """The first synthetic study from ``first_seed`` with a lesion: (folder, seed, lesions)."""
    for seed in range(first_seed, first_seed + SEARCHED_SEEDS):
        study = generate_study(root / f"s{seed}", seed, 0, SynthOptions(size=size))
        lesions = len(json.loads((study / "ground_truth.json").read_text())["lesions"])
        if lesions:
            return study, seed, lesions
    raise RuntimeError(f"no synthetic study with a lesion among seeds {first_seed}+")


def _request(study: Path, settings: Settings) -> AnalysisRequest:
    """The study's analysis request, its images paired as the node pairs them."""
    studies, skipped = requests_from_files(
        sorted((study / "dicom").glob("*.dcm")), settings.selection
    )
    if len(studies) != 1 or studies[0].request is None:
        raise RuntimeError(f"the synthetic study is not analysable: {studies} {skipped}")
    return studies[0].request


def _preprocessed(
    pairs: Sequence[PairInput], params: PreprocessParams, repeats: int
) -> tuple[list[np.ndarray], list[float]]:
    """Every pair's network input with ``params``, and the seconds each of ``repeats`` took."""
    samples, images = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        images = [
            preprocess_pair(p.low_energy.pixels, p.recombined.pixels, params, p.laterality).image
            for p in pairs
        ]
        samples.append(time.perf_counter() - started)
    return images, samples


@torch.no_grad()
def _calibrate_batchnorm(
    model: nn.Module, images: Sequence[np.ndarray], device: torch.device
) -> None:
    """Set the backbone's BatchNorm statistics to those of ``images`` (one training-mode pass).

    With the initial statistics (mean 0, variance 1) BatchNorm is the identity
    and the untrained residual blocks let the activations grow past the fp16
    range; a trained network's statistics keep them in range.
    """
    body = model.backbone.body
    for module in body.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative mean: this one pass's statistics
    batch, _ = model.transform(
        [torch.from_numpy(np.ascontiguousarray(im)).to(device) for im in images]
    )
    body.train()
    body(batch.tensors)
    model.eval()


def _paper_detector(
    preprocess: PreprocessParams,
    images: Sequence[np.ndarray],
    device: torch.device,
    detections: int,
) -> nn.Module:
    """The paper preset's Mask R-CNN, untrained weights, BatchNorm calibrated, on ``device``."""
    fpn, box, mask = BACKBONE_WIDTHS[PAPER_BACKBONE]
    config = DetectorConfig(
        backbone=PAPER_BACKBONE, fpn_channels=fpn, box_head_width=box, mask_head_channels=mask
    )
    torch.manual_seed(0)  # the same untrained weights at every run
    model = build_detector(config, preprocess, PostprocessParams()).to(device)
    _calibrate_batchnorm(model, images, device)
    model.roi_heads.detections_per_img = detections
    return model


def _precision(dtypes: set[str]) -> str:
    names = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
    return "+".join(sorted(names.get(d, d) for d in dtypes)) or "unknown"


def _bench_detector(
    label: str,
    model: nn.Module,
    images: Sequence[np.ndarray],
    post: PostprocessParams,
    device: torch.device,
    warmup: int,
    repeats: int,
    notes: dict[str, Any],
) -> list[dict[str, Any]]:
    """Two rows, fp16 autocast (``detect()`` as is) and fp32 (autocast off), of one detector.

    Parameters
    ----------
    label : str
        The detector's name in the rows (its backbone).
    model : nn.Module
        The detector, in eval mode on ``device``.
    images : sequence of ndarray
        Preprocessed (3, H, W) images; each counted call detects them all, one per call
        of ``detect()``.
    post : PostprocessParams
        The post-processing ``detect()`` applies.
    device : torch.device
        Where the model is.
    warmup, repeats : int
        Uncounted, then counted calls per row.
    notes : dict
        Added to both rows (which weights, ...).

    Returns
    -------
    list of dict
        The fp16 row, then the fp32 row: the precision that really ran (the box
        predictor's output dtype), the mask head's RoIs per image, the lesions
        ``detect()`` kept, and the seconds per image and per study.
    """
    rows = []
    for requested, runner in (("fp16", model), ("fp32", _AutocastOff(model))):
        probe = _HeadProbe(model)
        kept: list[int] = []

        def call(runner: nn.Module = runner, kept: list[int] = kept) -> None:
            # one view per call, as analyse_study detects each view on its own
            kept[:] = [len(detect(runner, [im], post, device)[0]) for im in images]

        try:
            samples = _timed(call, device, warmup, repeats)
        finally:
            probe.close()
        ran = _precision(probe.dtypes)
        rows.append(
            {
                "model": label,
                **notes,
                "precision_requested": requested,
                "precision_ran": ran,
                "autocast": ran != "fp32",
                "images": len(images),
                "input_shapes": [list(im.shape) for im in images],
                "mask_head_rois_per_image": sum(probe.mask_rois[-len(images) :]) / len(images),
                "lesions_kept_per_image": kept,
                "per_image_s": _summary([s / len(images) for s in samples]),
                "per_study_s": _summary(samples),
                "samples_s": samples,
            }
        )
    return rows


def _bench_analysis(
    models: LoadedModels,
    request: AnalysisRequest,
    settings: Settings,
    device: torch.device,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """``analyse_request`` of the study: its total and each step of its timings."""
    runs: list[dict[str, float]] = []
    lesions: list[int] = []

    def call() -> None:
        findings = analyse_request(models, request, settings.analysis)
        runs.append(dict(findings.timings_s))
        lesions.append(len(findings.lesions))

    samples = _timed(call, device, warmup, repeats)
    counted = runs[warmup:]
    steps = [k for k in counted[0] if k != "total"]
    return {
        "bundle": models.bundle.manifest.bundle.name,
        "backbone": models.bundle.manifest.detector.backbone,
        "radiomics_workers": settings.analysis.radiomics_workers,
        "lesions": lesions[-1],
        "wall_s": _summary(samples),
        "total_s": _summary([r["total"] for r in counted]),
        "timings_s": {k: _summary([r.get(k, 0.0) for r in counted]) for k in steps},
        "samples_s": samples,
    }


def _bench_end_to_end(out: Path, quick: bool) -> dict[str, Any]:
    """bench/bench_end_to_end.py as a subprocess; its JSON summary, or why there is none."""
    size, studies = ("small", 1) if quick else ("full", 3)
    command = [
        sys.executable,
        str(REPO / "bench" / "bench_end_to_end.py"),
        f"--size={size}",
        f"--studies={studies}",
        f"--model={DEMO_BUNDLE}",
        f"--json={out}",
    ]
    if quick:
        command.append("--warmup=0")
    try:
        done = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=E2E_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return {"command": command, "error": f"no result within {E2E_TIMEOUT_S} s"}
    # exit 1 with a summary: measured, above that bench's own target
    if done.returncode in (0, 1) and out.is_file():
        summary = json.loads(out.read_text())
        return {"command": command, "exit_code": done.returncode, **summary}
    tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
    return {"command": command, "error": f"exit {done.returncode}: {' | '.join(tail)}"}


def _estimate(figures: dict[str, Any]) -> float | None:
    """Study analysis with ResNet-101-FPN: the demo analysis with its detector swapped.

    The demo analysis' median total, plus the difference of the detectors'
    ``detect()`` over the study's views (fp16 rows) and of their preprocessing
    (measured here on the same pairs). The analysis overlaps preprocessing with
    detection; adding the preprocessing difference whole makes the estimate
    pessimistic.
    """
    steps = figures["analysis"]["timings_s"]
    if "detect" not in steps:
        return None
    detect_s = {
        r["model"]: r["per_image_s"]["median"] * figures["study"]["views"]
        for r in figures["detector"]
        if r["precision_requested"] == "fp16"
    }
    preprocess = figures["preprocess_s"]
    demo_backbone = figures["analysis"]["backbone"]
    return (
        figures["analysis"]["total_s"]["median"]
        - steps["detect"]["median"]
        + detect_s[PAPER_BACKBONE]
        + preprocess[PAPER_BACKBONE]["median"]
        - preprocess[demo_backbone]["median"]
    )


def _table(figures: dict[str, Any]) -> Table:
    """The one table of the figures."""
    table = Table(title=f"Detector and study analysis on {figures['device']}")
    for column, justify in (
        ("measure", "left"),
        ("model", "left"),
        ("precision", "left"),
        ("input", "left"),
        ("RoIs/img", "right"),
        ("median s", "right"),
        ("p90 s", "right"),
        ("note", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in figures["detector"]:
        shapes = row["input_shapes"]
        high, wide = max(s[1] for s in shapes), max(s[2] for s in shapes)
        precision = row["precision_ran"]
        if precision != row["precision_requested"]:
            precision += f" (asked {row['precision_requested']})"
        table.add_row(
            "detect() per image",
            row["model"] + (" *" if row["weights"] != "bundle" else f" ({row['bundle']})"),
            precision,
            f"{len(shapes)} x <={high}x{wide}",
            f"{row['mask_head_rois_per_image']:.1f}",
            f"{row['per_image_s']['median']:.4f}",
            f"{row['per_image_s']['p90']:.4f}",
            f"{len(shapes)} view(s): {row['per_study_s']['median']:.3f} s",
        )
    analysis = figures["analysis"]
    study = figures["study"]
    table.add_section()
    table.add_row(
        "analyse_request, study",
        f"{analysis['backbone']} ({analysis['bundle']})",
        "as the node",
        f"{study['views']} pairs, {study['size']}",
        "",
        f"{analysis['total_s']['median']:.3f}",
        f"{analysis['total_s']['p90']:.3f}",
        f"{analysis['lesions']} lesion(s) found",
    )
    for step, value in analysis["timings_s"].items():
        table.add_row(
            f"  {step}", "", "", "", "", f"{value['median']:.3f}", f"{value['p90']:.3f}", ""
        )
    estimate = figures["estimate_resnet101_study_s"]
    if estimate is not None:
        verdict = "meets" if estimate < TARGET_STUDY_S else "misses"
        table.add_row(
            "study analysis, estimate",
            f"{PAPER_BACKBONE} *",
            "fp16 if CUDA",
            f"short side {figures['paper_preprocessing']['short_side']}",
            "",
            f"{estimate:.3f}",
            "",
            f"target < {TARGET_STUDY_S:g} s on a GPU: {verdict}",
        )
    e2e = figures["end_to_end"]
    table.add_section()
    if "median_s" in e2e:
        table.add_row(
            "end-to-end, served node",
            DEMO_BUNDLE,
            "as the node",
            f"{sum(s['counted'] for s in e2e['studies'])} stud(ies), {e2e['size']}",
            "",
            f"{e2e['median_s']:.2f}",
            "",
            f"max {e2e['max_s']:.2f} s (its target < {e2e['target_s']:g} s)"
            + (f"; peak RSS {e2e['peak_rss_mib']} MiB" if "peak_rss_mib" in e2e else ""),
        )
    else:
        table.add_row("end-to-end, served node", DEMO_BUNDLE, "", "", "", "-", "-",
                      e2e.get("skipped") or e2e.get("error", ""))  # fmt: skip
    return table


def _bench_models(
    models: LoadedModels,
    pairs: Sequence[PairInput],
    request: AnalysisRequest,
    settings: Settings,
    device: torch.device,
    paper_params: PreprocessParams,
    args: argparse.Namespace,
    warmup: int,
    repeats: int,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """The detector rows, the analysis and the preprocessing times of both detectors."""
    manifest = models.bundle.manifest
    # --quick: the first view only, so that the untrained ResNet-101 takes seconds on a CPU
    views = pairs[:1] if args.quick else pairs
    preprocess_repeats = min(repeats, 3)  # CPU work, steady: a few runs suffice
    paper_images, paper_pre = _preprocessed(pairs, paper_params, preprocess_repeats)
    demo_images, demo_pre = _preprocessed(pairs, manifest.preprocessing, preprocess_repeats)
    preprocess_s = {
        PAPER_BACKBONE: _summary(paper_pre),
        manifest.detector.backbone: _summary(demo_pre),
    }

    paper = _paper_detector(paper_params, paper_images[: len(views)], device, args.paper_detections)
    rows = _bench_detector(
        PAPER_BACKBONE,
        paper,
        paper_images[: len(views)],
        PostprocessParams(),
        device,
        warmup,
        repeats,
        {
            "weights": "untrained (no bundle ships ResNet-101 weights), BatchNorm calibrated",
            "detections_per_image_cap": args.paper_detections,
        },
    )
    del paper
    if device.type == "cuda":
        torch.cuda.empty_cache()
    post, _, _ = effective_params(settings.analysis, models.bundle)
    rows += _bench_detector(
        manifest.detector.backbone,
        models.detector,  # type: ignore[arg-type]
        demo_images[: len(views)],
        post,
        device,
        warmup,
        repeats,
        {"weights": "bundle", "bundle": f"{manifest.bundle.name} {manifest.bundle.version}"},
    )
    analysis = _bench_analysis(models, request, settings, device, warmup, repeats)
    return rows, analysis, preprocess_s


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, help="counted calls per figure (default 20)")
    parser.add_argument("--warmup", type=int, help="uncounted calls first (default 3)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--seed", type=int, default=1000, help="first synthetic study seed")
    parser.add_argument(
        "--paper-detections",
        type=int,
        default=PAPER_DETECTIONS,
        help="detections per image the ResNet-101 RoI heads keep (the mask head's RoIs)",
    )
    parser.add_argument("--skip-e2e", action="store_true", help="leave out the end-to-end part")
    parser.add_argument("--e2e", action="store_true", help="with --quick: run it (small, 1 study)")
    parser.add_argument(
        "--allow-cpu", action="store_true", help="run on the CPU when there is no CUDA GPU"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a check that the script works: small study, first view only, ResNet-101 "
        f"short side {QUICK_SHORT_SIDE}, 1 repeat, no warm-up, no end-to-end unless --e2e",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status (0 measured, 1 a part failed, 2 no CUDA GPU)."""
    parser = _parser()
    args = parser.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 3)
    if repeats < 1 or warmup < 0 or args.paper_detections < 1:
        parser.error("--repeats and --paper-detections must be at least 1, --warmup at least 0")
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print(
            f"no CUDA GPU: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees none; "
            "run this on the GPU machine, or pass --allow-cpu --quick for a CPU check",
            file=sys.stderr,
        )
        return 2

    console = Console()
    if not console.is_terminal:
        console = Console(width=190)  # captured output: keep the table's rows on one line
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    device_name = (
        torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    )
    console.print(
        f"device {device_name}; torch {torch.__version__} (CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version() if cuda else '-'}), "
        f"torchvision {torchvision.__version__}"
    )
    settings = Settings.defaults()  # the node's defaults, whatever the environment says
    size = "small" if args.quick else "full"
    side = QUICK_SHORT_SIDE if args.quick else PAPER_SHORT_SIDE
    paper_params = PreprocessParams(
        short_side=side, max_long_side=max(side, round(side * 1333 / 800))
    )

    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(tmp)
        study, seed, truth = _study_with_lesions(work / "studies", args.seed, size)
        request = _request(study, settings)
        pairs = decode_pairs(request)
        console.print(
            f"study seed {seed} ({size}, {len(pairs)} views, {truth} lesion(s)); "
            f"{warmup} warm-up + {repeats} counted calls per figure"
        )
        models = LoadedModels.load(
            BundleRegistry(MODELS_DIR).resolve(None, DEMO_BUNDLE), "cuda" if cuda else "cpu"
        )
        demo_params = models.bundle.manifest.preprocessing
        try:
            if settings.analysis.radiomics_workers > 1:  # started with the model, as the node does
                models.radiomics_pool(settings.analysis.radiomics_workers)
            rows, analysis, preprocess_s = _bench_models(
                models, pairs, request, settings, device, paper_params, args, warmup, repeats
            )
        finally:
            models.close()  # before the end-to-end run: its node starts its own workers
            del models
            if cuda:
                torch.cuda.empty_cache()  # the served node needs the GPU's memory

        if args.skip_e2e or (args.quick and not args.e2e):
            end_to_end: dict[str, Any] = {"skipped": "--skip-e2e" if args.skip_e2e else "--quick"}
        else:
            console.print("end-to-end: bench/bench_end_to_end.py (a served node and Orthanc) ...")
            end_to_end = _bench_end_to_end(work / "e2e.json", args.quick)

    figures: dict[str, Any] = {
        "device": device_name,
        "cuda": cuda,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda_version": torch.version.cuda,
        "quick": args.quick,
        "warmup": warmup,
        "repeats": repeats,
        "study": {"seed": seed, "size": size, "views": len(pairs), "lesions": truth},
        "paper_preprocessing": paper_params.model_dump(mode="json"),
        "demo_preprocessing": demo_params.model_dump(mode="json"),
        "preprocess_s": preprocess_s,
        "fp32_method": "detect() on a wrapper whose forward disables autocast (detect() has no "
        "precision switch); precision_ran is the box predictor's output dtype",
        "detector": rows,
        "analysis": analysis,
        "target_study_s": TARGET_STUDY_S,
        "end_to_end": end_to_end,
    }
    figures["estimate_resnet101_study_s"] = _estimate(figures)
    console.print(_table(figures))
    console.print(
        f"* {PAPER_BACKBONE}: the paper preset's architecture with untrained weights (no bundle "
        "ships them; the time depends on the architecture and the number of detections), "
        f"BatchNorm statistics from these images, at most {args.paper_detections} detections "
        "per image (RoIs/img: what the mask head ran on). The estimate: the demo analysis "
        f"with {PAPER_BACKBONE}'s detect() (fp16 row) and preprocessing in place of its own."
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if "error" in end_to_end else 0


if __name__ == "__main__":
    raise SystemExit(main())
