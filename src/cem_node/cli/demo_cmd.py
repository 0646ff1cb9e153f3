"""``cem-node demo``: the whole node on the embedded defaults, end to end.

It generates a synthetic CEM study, starts a node on loopback (SQLite, the
configured model bundle) and a receiving PACS (an embedded storage SCP),
sends the study by C-STORE as a mammography unit would, waits for the
analysis, receives the SEG, SR and GSPS at the PACS, validates them, and
prints the lesions, scores, labels and the time of each stage with the paths
of the result files and of an overlay PNG. Exit code 0 only when the results
arrived and validate; 1 otherwise (the reason is printed).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()

DEMO_SOURCE_AE = "DEMO_SENO"
DEMO_PACS_AE = "DEMO_PACS"
#: The phantom-trained bundle: the demo sends a phantom study and checks what it finds.
DEMO_BUNDLE = "cem-demo"
#: the result objects' storage SOP classes the demo PACS accepts
RESULT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "seg",
    "1.2.840.10008.5.1.4.1.1.88.33": "sr",
    "1.2.840.10008.5.1.4.1.1.11.1": "gsps",
}


class DemoPacs:
    """A tiny receiving PACS: stores every SEG, SR and GSPS it gets under ``folder``."""

    def __init__(self, folder: Path) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

        self.folder = folder
        self.received: list[Path] = []
        self._lock = threading.Lock()
        ae = AE(ae_title=DEMO_PACS_AE)
        for sop_class in RESULT_SOP_CLASSES:
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        self._server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        kind = RESULT_SOP_CLASSES.get(str(ds.SOPClassUID), "other")
        path = self.folder / f"{kind}-{ds.SeriesNumber}-{ds.SOPInstanceUID}.dcm"
        self.folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        with self._lock:
            self.received.append(path)
        return 0x0000

    def stop(self) -> None:
        self._server.shutdown()


def demo(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo's files.")] = Path(
        "demo-out"
    ),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic study.")] = 2026,
    size: Annotated[
        str,
        typer.Option(
            help="Image size: small (573 x 478 at 0.4 mm, what the demo bundle was trained "
            "on), full (2294 x 1914 at 0.1 mm) or WxH."
        ),
    ] = "small",
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Model bundle (default: cem-demo, trained on the phantoms the demo sends; "
            "the research bundle that serve uses is trained on real images).",
        ),
    ] = DEMO_BUNDLE,
    models_dir: Annotated[
        Path | None, typer.Option("--models-dir", help="Folder of model bundles.")
    ] = None,
    timeout_s: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the results.")
    ] = 600.0,
) -> None:
    """Run the whole node end to end on a synthetic study: C-STORE in, SEG/SR/GSPS out."""
    import pydicom

    from cem_node.synthetic import SynthOptions, generate_study

    console.rule("[bold]cem-node demo")
    timings: dict[str, float] = {}
    settings = ctx.obj.settings()
    analysis = settings.analysis
    if models_dir is not None:
        analysis = analysis.model_copy(update={"models_dir": models_dir})
    analysis = analysis.model_copy(update={"model": model})
    _resolve_bundle(analysis, model)

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    study_dir = generate_study(out, seed, 1, SynthOptions(size=size))
    files = sorted((study_dir / "dicom").glob("*.dcm"))
    timings["synthetic study (8 images)"] = time.perf_counter() - started
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    console.print(f"synthetic study {uid}: {study_dir}")

    pacs = DemoPacs(out / "pacs")
    try:
        outcome = _run_node(settings, analysis, out, files, uid, pacs, timings, timeout_s)
    finally:
        pacs.stop()
    findings, received = outcome
    ok = _report(findings, received, study_dir, files, out, timings)
    if not ok:
        raise typer.Exit(1)


def _resolve_bundle(analysis: Any, model: str | None) -> None:
    from cem_node.models import BundleError, BundleRegistry

    try:
        bundle = BundleRegistry(analysis.bundles_dir).resolve(model, analysis.model)
    except BundleError as exc:
        console.print(
            f"[red]No usable model bundle:[/red] {exc}\n"
            "The demo needs one: import a bundle (`cem-node models import DIR`) or train one "
            "(scripts/train_demo_bundle.sh); see models/README.md."
        )
        raise typer.Exit(1) from None
    identity = bundle.identity()
    console.print(
        f"model bundle {identity.name} {identity.version} (sha256 {identity.sha256[:12]})"
        + (f": [bold yellow]{identity.disclaimer}[/]" if identity.disclaimer else "")
    )


def _run_node(
    settings: Any,
    analysis: Any,
    out: Path,
    files: list[Path],
    uid: str,
    pacs: DemoPacs,
    timings: dict[str, float],
    timeout_s: float,
) -> tuple[dict[str, Any] | None, list[Path]]:
    """Start a node, send the study, wait for the results at the PACS."""
    from cem_node import __version__
    from cem_node.dicom.net.scu import RemoteAE, send_files
    from cem_node.dicom.objects.common import ReportingDevice
    from cem_node.node import Node
    from cem_node.pipeline.service import BundleAnalyser

    node_settings = _node_settings(settings, analysis, out, pacs)
    analyser = BundleAnalyser(
        node_settings.analysis,
        device=ReportingDevice(software_version=__version__, device_serial_number="DEMO"),
    )
    started = time.perf_counter()
    console.print(analyser.preload())
    timings["model bundle load"] = time.perf_counter() - started
    node = Node(node_settings, analyser=analyser, node_id="demo")
    node.start()
    try:
        started = time.perf_counter()
        remote = RemoteAE(node_settings.node.ae_title, "127.0.0.1", node.port)
        results = send_files(files, remote, calling_ae_title=DEMO_SOURCE_AE)
        failed = [r for r in results if not r.delivered]
        if failed:
            console.print(f"[red]{len(failed)} C-STORE failures: {failed[0].message}[/red]")
            return None, []
        timings["C-STORE to the node"] = time.perf_counter() - started
        console.print(f"sent {len(files)} images to {remote.ae_title} on port {node.port}")
        assert node.sessions is not None
        started = time.perf_counter()
        detail = _wait_for_study(node.sessions, uid, timeout_s)
        timings["quiet period + analysis + export"] = time.perf_counter() - started
        console.print(
            f"study state: {detail['state']}"
            + (f" ({detail['state_reason']})" if detail["state_reason"] else "")
        )
        document = _latest_document(node.sessions, uid)
    finally:
        node.stop()
    return document, list(pacs.received)


def _node_settings(settings: Any, analysis: Any, out: Path, pacs: DemoPacs) -> Any:
    """The demo node's settings: loopback, SQLite in ``out``, short assembly waits, and the
    demo modality and PACS as its peers."""
    from cem_node.config import Peer

    node_settings = settings.model_copy(deep=True)
    node_settings.analysis = analysis
    node_settings.storage.root = out  # the demo's database: out/cem-node.db
    node_settings.database.url = ""
    node_settings.node.host = "127.0.0.1"
    node_settings.node.port = 0
    node_settings.http.port = 0
    node_settings.assembly.quiet_period_s = 2.0
    node_settings.assembly.check_interval_s = 0.5
    node_settings.peers = [
        Peer(
            name="demo-modality", ae_title=DEMO_SOURCE_AE, host="127.0.0.1", port=104, role="source"
        ),
        Peer(
            name="demo-pacs",
            ae_title=DEMO_PACS_AE,
            host="127.0.0.1",
            port=pacs.port,
            role="destination",
        ),
    ]
    return node_settings


def _wait_for_study(sessions: Any, uid: str, timeout_s: float) -> dict[str, Any]:
    """The study's detail once it is done, failed or not analysable, or at the timeout."""
    from cem_node.jobs.admin import show_study

    deadline = time.monotonic() + timeout_s
    detail = show_study(sessions, uid)
    with console.status("waiting for the analysis and the export ..."):
        while detail["state"] not in ("done", "failed", "not_analysable"):
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
            detail = show_study(sessions, uid)
    return detail


def _latest_document(sessions: Any, uid: str) -> dict[str, Any] | None:
    """The findings document of the study's current analysis (None when there is none)."""
    from sqlalchemy import select

    from cem_node.store.models import Analysis, Study

    with sessions() as session:
        study_id = session.scalar(select(Study.id).where(Study.study_instance_uid == uid))
        return session.scalar(
            select(Analysis.document)
            .where(Analysis.study_id == study_id, Analysis.superseded_by_id.is_(None))
            .order_by(Analysis.id.desc())
        )


def _report(
    document: dict[str, Any] | None,
    received: list[Path],
    study_dir: Path,
    files: list[Path],
    out: Path,
    timings: dict[str, float],
) -> bool:
    """Print the findings, validate what arrived, write an overlay; True when all is well."""
    from cem_node.contracts.findings import Findings

    if document is None:
        console.print("[red]No analysis result: see the study state above.[/red]")
        return False
    findings = Findings.model_validate(document)
    _print_findings(findings, study_dir)
    kinds = sorted({p.name.split("-", 1)[0] for p in received})
    errors, validated = _validate_received(received, findings.study_instance_uid)
    overlay = _write_overlay(findings, files, out)
    (out / "findings.json").write_text(findings.to_json() + "\n")
    stages = {**timings, **{f"  analysis: {k}": v for k, v in findings.timings_s.items()}}
    for stage, seconds in stages.items():
        console.print(f"  {stage:<40} {seconds:7.2f} s")
    console.print(f"results at the PACS ({out / 'pacs'}): {len(received)} object(s) {kinds}")
    console.print(f"findings: {out / 'findings.json'}")
    if overlay is not None:
        console.print(f"overlay:  {overlay}")
    if not validated:
        console.print("[yellow]dciodvfy is not installed: results not validated[/yellow]")
    expected = {"sr"} | ({"seg", "gsps"} if findings.lesions else set())
    if not expected <= set(kinds):
        console.print(f"[red]missing results at the PACS: {sorted(expected - set(kinds))}[/red]")
        return False
    if errors:
        console.print(f"[red]{errors} validation error(s) in the results[/red]")
        return False
    console.print("[green]demo finished: the results arrived at the PACS and validate[/green]")
    return True


def _print_findings(findings: Any, study_dir: Path) -> None:
    """The lesions found, the patient's label and the phantom's ground truth."""
    table = Table(title=f"Lesions found ({findings.model.name} {findings.model.version})")
    for column in ("lesion", "breast", "view", "area mm²", "DL", "radiomics", "fused", "label"):
        table.add_column(column)
    for les in findings.lesions:
        table.add_row(
            les.lesion_id,
            les.laterality,
            les.view,
            "—" if les.area_mm2 is None else f"{les.area_mm2:.0f}",
            f"{les.dl_probability:.2f}",
            "—" if les.radiomics_probability is None else f"{les.radiomics_probability:.2f}",
            f"{les.fused_probability:.2f}",
            les.fused_label,
        )
    console.print(table if findings.lesions else "No suspicious lesion found.")
    patient = findings.patient
    console.print(
        f"patient: {patient.label}"
        + ("" if patient.score is None else f" (max fused probability {patient.score:.2f})")
    )
    truth = json.loads((study_dir / "ground_truth.json").read_text())
    console.print(
        "ground truth: "
        + (
            ", ".join(
                f"{t['lesion_id']} {t['pathology']} {t['size_mm']:.0f} mm" for t in truth["lesions"]
            )
            or "no lesion"
        )
    )


def _validate_received(received: list[Path], study_uid: str) -> tuple[int, bool]:
    """The errors in the objects the PACS received (another study, dciodvfy's errors) and
    whether dciodvfy could check them."""
    import pydicom

    from cem_node.dicom.validation import ValidatorMissingError, dciodvfy_errors

    errors = 0
    validated = True
    for path in received:
        ds = pydicom.dcmread(path)
        if ds.StudyInstanceUID != study_uid:
            console.print(f"[red]{path.name}: another study[/red]")
            errors += 1
        try:
            errors += len(dciodvfy_errors(path))
        except ValidatorMissingError:
            validated = False
    return errors, validated


def _write_overlay(findings: Any, files: list[Path], out: Path) -> Path | None:
    """An overlay PNG of the first view with a lesion (else the first view) in ``out``."""
    import pydicom

    from cem_node.pipeline.overlay import write_view_overlay
    from cem_node.pipeline.pixels import read_source_image

    overlay = None
    by_uid = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}
    views = [v for v in findings.views if v.lesion_ids] or list(findings.views)
    view = views[0] if views else None
    if view is not None:
        overlay = write_view_overlay(
            findings,
            view.laterality,
            view.view,
            read_source_image(by_uid[view.recombined_sop_instance_uid]).pixels,
            read_source_image(by_uid[view.low_energy_sop_instance_uid]).pixels,
            out / f"overlay-{view.laterality}-{view.view}.png",
        )
    return overlay
