"""Benchmark: what the node's memory is made of, idle and during a study (#22).

Run: ``.venv/bin/python bench/bench_memory.py [--model cem-demo] [--json OUT]``.

What is measured
    In a fresh Python process (one per run, so nothing is imported before):
    the resident set (``VmRSS``) after each group of imports the worker role
    needs, in the order the node imports them; then after loading the model
    bundle (the detector's weights, the XGBoost model), after starting the
    radiomics worker processes if ``--radiomics-workers`` > 1 (their own RSS
    is reported apart), and the peak (``VmHWM``, reset before) while one
    full-size synthetic study is analysed, its pairs decoded lazily as the
    node does. Shared library pages count in every process that maps them,
    as the kernel reports them.

A receiver-only node (``serve --role receiver``) imports neither torch nor
the analysis: its row "receiver role" is what such a node holds.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for tests.proc_memory (stdlib only)

from tests.proc_memory import reset_peaks, status_mib  # noqa: E402

#: Import groups in the order a full node meets them, with why each is there.
IMPORTS: list[tuple[str, list[str], str]] = [
    ("numpy", ["numpy"], "arrays everywhere"),
    ("pydicom, pynetdicom", ["pydicom", "pynetdicom"], "DICOM files and the network"),
    ("sqlalchemy", ["sqlalchemy"], "the database"),
    ("receiver role", ["cem_node.node"], "the node itself: what a receiver-only node holds"),
    ("highdicom", ["highdicom"], "writing SEG, SR and GSPS"),
    ("SimpleITK, pyradiomics", ["SimpleITK", "radiomics"], "handcrafted radiomics"),
    ("xgboost", ["xgboost"], "the radiomics classifier"),
    ("torch", ["torch"], "the detector (CPU and CUDA kernels)"),
    ("torchvision", ["torchvision"], "Mask R-CNN, RoI ops"),
    ("the analysis", ["cem_node.pipeline.analyse", "cem_node.dicom.objects.results"], "the rest"),
]


def _rss(field: str = "VmRSS", pid: int | str = "self") -> float:
    return status_mib(pid, field) or 0.0


def _measure(model: str, models_dir: Path, radiomics_workers: int) -> dict:
    rows: list[dict] = [{"step": "python", "why": "the interpreter", "rss_mib": _rss()}]
    for step, modules, why in IMPORTS:
        for module in modules:
            importlib.import_module(module)
        rows.append({"step": f"import {step}", "why": why, "rss_mib": _rss()})

    from cem_node.config import Settings
    from cem_node.models.registry import BundleRegistry
    from cem_node.pipeline.analyse import LoadedModels
    from cem_node.pipeline.service import analyse_request, requests_from_files
    from cem_node.synthetic import SynthOptions, generate_study

    models = LoadedModels.load(BundleRegistry(models_dir).resolve(None, model), "cpu")
    rows.append({"step": f"load bundle {model}", "why": "weights", "rss_mib": _rss()})
    workers_rss = 0.0
    if radiomics_workers > 1:
        before = {p.pid for p in multiprocessing.active_children()}
        models.radiomics_pool(radiomics_workers)
        pids = {p.pid for p in multiprocessing.active_children()} - before
        workers_rss = sum(_rss("VmRSS", pid) for pid in pids)
    idle = _rss()

    settings = Settings()
    settings.analysis.radiomics_workers = radiomics_workers
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        study = generate_study(Path(tmp), 1001, 0, SynthOptions(size="full"))
        studies, _ = requests_from_files(
            sorted((study / "dicom").glob("*.dcm")), settings.selection
        )
        request = studies[0].request
        analyse_request(models, request, settings.analysis)  # lazy initialisation
        reset_peaks("self")
        findings = analyse_request(models, request, settings.analysis)
        peak = _rss("VmHWM")
    models.close()
    return {
        "model": model,
        "radiomics_workers": radiomics_workers,
        "rows": rows,
        "idle_rss_mib": idle,
        "radiomics_workers_rss_mib": workers_rss,
        "study_peak_rss_mib": peak,
        "study_lesions": len(findings.lesions),
        "study_seconds": findings.timings_s.get("total"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cem-demo")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--radiomics-workers", type=int, default=1)
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_measure(args.model, args.models_dir, args.radiomics_workers)))
        return 0

    # a fresh interpreter: nothing imported before the first row
    command = [sys.executable, __file__, "--child", "--model", args.model]
    command += ["--models-dir", str(args.models_dir)]
    command += ["--radiomics-workers", str(args.radiomics_workers)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return 1
    figures = json.loads(done.stdout.strip().splitlines()[-1])

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"node memory (RSS), bundle {figures['model']}")
    for column in ("step", "RSS MiB", "added MiB", "why"):
        table.add_column(column, justify="right" if "MiB" in column else "left")
    previous = 0.0
    for row in figures["rows"]:
        rss = row["rss_mib"]
        table.add_row(row["step"], f"{rss:.0f}", f"{rss - previous:+.0f}", row["why"])
        previous = rss
    console = Console()
    console.print(table)
    console.print(
        f"idle with the bundle loaded: {figures['idle_rss_mib']:.0f} MiB"
        + (
            f" (+ {figures['radiomics_workers_rss_mib']:.0f} MiB in "
            f"{figures['radiomics_workers']} radiomics worker processes)"
            if figures["radiomics_workers"] > 1
            else ""
        )
        + f"; peak during a full-size study ({figures['study_lesions']} lesions, "
        f"{figures['study_seconds']:.2f} s): {figures['study_peak_rss_mib']:.0f} MiB"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
