"""Benchmark: end-to-end latency, study fully received -> results stored at the PACS.

Target (issue #7): under 60 s on CPU, under 5 s on GPU, excluding the quiet
period. Run: ``.venv/bin/python bench/bench_end_to_end.py [--studies 5]
[--size small|full] [--json OUT]``.

What is measured
    ``cem-node serve`` (embedded defaults, the model bundle ``--model`` from
    ``--models-dir``, default the shipped demo bundle) with Orthanc as the
    destination of the results, both on loopback, as in the end-to-end test
    (``tests/e2e/node_stack.py``). For each synthetic study (different seeds,
    each with at least one lesion so the radiomics stage runs), dcmtk
    ``storescu`` sends its images; when it exits every image has been
    acknowledged, i.e. fsynced and indexed by the node. The clock starts
    then and stops when Orthanc lists the study's SEG, SR and GSPS series
    (polled every 50 ms). The quiet period is subtracted; the assembler's
    check interval (0.2 s here) is not, so the figure is slightly pessimistic.
    It covers assembly, pairing, decoding, preprocessing, detection,
    radiomics, classification, fusion, encoding of the objects and their
    C-STORE to Orthanc. Studies are sent one at a time (no queueing), after
    ``--warmup`` studies that are not counted (the model is loaded at start,
    but the first inference pays for lazy initialisation).

Memory
    Before each study the kernel's peak RSS of the node's processes is reset
    (``/proc/PID/clear_refs``, 5); after its results arrived, each process's
    ``VmHWM`` is its peak during the study. The node's own process and the
    sum over the node and its child processes (radiomics workers, the
    forkserver) are reported; the sum counts pages the processes share more
    than once, so it is an upper bound. The RSS of the idle node (after the
    warm-up) is reported too. Target (issue #22): the node's peak at most
    2.5 GB during a full-size study.

The device is what the node chooses (CUDA when present, otherwise the CPU);
the summary says which, with the CPU count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for tests.peers and tests.e2e.node_stack

from tests.e2e.node_stack import (  # noqa: E402
    DEMO_MODEL,
    DEMO_MODELS_DIR,
    ServedNode,
    wait_for_results,
)
from tests.peers import OrthancServer  # noqa: E402
from tests.proc_memory import peaks_mib, reset_peaks, status_mib  # noqa: E402

from cem_node.synthetic import SynthOptions, generate_study  # noqa: E402

QUIET_PERIOD_S = 2.0
TARGET_CPU_S = 60.0
TARGET_GPU_S = 5.0
TARGET_PEAK_RSS_MIB = 2.5 * 1000**3 / 2**20  # 2.5 GB


def _studies_with_lesions(root: Path, count: int, size: str, first_seed: int) -> list[Path]:
    """``count`` synthetic studies that have at least one lesion (seeds from first_seed)."""
    studies: list[Path] = []
    seed = first_seed
    while len(studies) < count:
        study = generate_study(root / f"s{seed}", seed, 0, SynthOptions(size=size))
        truth = json.loads((study / "ground_truth.json").read_text())
        if truth["lesions"]:
            studies.append(study)
        seed += 1
    return studies


def _device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda ({torch.cuda.get_device_name(0)})"
    except ImportError:
        pass
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=5, help="Studies measured.")
    parser.add_argument("--warmup", type=int, default=1, help="Studies sent first, not counted.")
    parser.add_argument("--size", default="small", help="Synthetic image size: small or full.")
    parser.add_argument("--seed", type=int, default=1000, help="First study seed.")
    parser.add_argument("--models-dir", type=Path, default=DEMO_MODELS_DIR)
    parser.add_argument("--model", default=DEMO_MODEL)
    parser.add_argument(
        "--radiomics-workers",
        type=int,
        help="The node's [analysis] radiomics_workers (unset: the node's default).",
    )
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument(
        "--steps",
        action="store_true",
        help="Print the node's log lines on each study's steps (worker, analysis, export).",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        studies = _studies_with_lesions(
            work / "studies", args.warmup + args.studies, args.size, args.seed
        )
        rows = []
        with OrthancServer(work / "orthanc") as pacs:
            node = ServedNode(
                work / "node",
                pacs,
                quiet_period_s=QUIET_PERIOD_S,
                check_interval_s=0.2,
                models_dir=args.models_dir.resolve(),  # the node runs elsewhere
                model=args.model,
                extra_env={}
                if args.radiomics_workers is None
                else {"CEM_NODE_ANALYSIS__RADIOMICS_WORKERS": str(args.radiomics_workers)},
            )
            idle_rss: list[float] = []
            with node:
                for index, study in enumerate(studies):
                    files = sorted((study / "dicom").glob("*.dcm"))
                    uid = json.loads((study / "ground_truth.json").read_text())["study"][
                        "study_instance_uid"
                    ]
                    counted = index >= args.warmup
                    if counted:
                        idle_rss.append(status_mib(node.pid, "VmRSS") or 0.0)
                    reset_peaks(node.pid)
                    node.send(files)
                    arrived = wait_for_results(pacs, uid, 600, poll_s=0.05)
                    latency = arrived.seconds - QUIET_PERIOD_S
                    peak, peak_tree = peaks_mib(node.pid)
                    objects = {kind: len(ids) for kind, ids in arrived.instances.items()}
                    rows.append({"study": study.parent.name, "seconds": latency, "counted": counted,
                                 "objects": objects, "peak_rss_mib": round(peak),
                                 "peak_rss_with_children_mib": round(peak_tree)})  # fmt: skip
                    print(
                        f"{'study' if counted else 'warm-up'} {study.parent.name}: {latency:.2f} s "
                        f"after the quiet period; peak RSS {peak:.0f} MiB (with children "
                        f"{peak_tree:.0f} MiB); objects {objects}",
                        flush=True,
                    )
            if node.stop() != 0:
                print(node.log_tail(), file=sys.stderr)
                return 1
            if args.steps:
                # the node's own account of each study: worker steps, analysis stages, export
                for line in node.log_path.read_text(errors="replace").splitlines():
                    if "; in the analysis:" in line or "export: " in line:
                        print("  node:", line[line.find("job ") if "job " in line else 0 :])
    measured = [row["seconds"] for row in rows if row["counted"]]
    peaks = [row["peak_rss_mib"] for row in rows if row["counted"]]
    peaks_tree = [row["peak_rss_with_children_mib"] for row in rows if row["counted"]]
    device = _device()
    target = TARGET_GPU_S if device.startswith("cuda") else TARGET_CPU_S
    summary = {
        "device": device,
        "size": args.size,
        "model": f"{args.models_dir / args.model}",
        "quiet_period_s": QUIET_PERIOD_S,
        "median_s": statistics.median(measured),
        "max_s": max(measured),
        "target_s": target,
        "idle_rss_mib": round(statistics.median(idle_rss)),
        "peak_rss_mib": max(peaks),
        "peak_rss_with_children_mib": max(peaks_tree),
        "target_peak_rss_mib": round(TARGET_PEAK_RSS_MIB),
        "radiomics_workers": args.radiomics_workers,
        "studies": rows,
    }
    print(
        f"end-to-end latency on {device}, {args.size} studies: median {summary['median_s']:.2f} s, "
        f"max {summary['max_s']:.2f} s over {len(measured)} studies (target < {target:g} s); "
        f"node RSS idle {summary['idle_rss_mib']} MiB, peak during a study "
        f"{summary['peak_rss_mib']} MiB (with its child processes "
        f"{summary['peak_rss_with_children_mib']} MiB; target <= {TARGET_PEAK_RSS_MIB:.0f} MiB)"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if summary["max_s"] < target and max(peaks) <= TARGET_PEAK_RSS_MIB else 1


if __name__ == "__main__":
    raise SystemExit(main())
