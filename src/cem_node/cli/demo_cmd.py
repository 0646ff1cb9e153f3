"""``cem-node demo``: the main job on the embedded defaults.

The full demo (a node receiving a study by C-STORE, analysing it and sending
SEG/SR/GSPS to a PACS) comes with issue #7. Until then it runs the parts that
exist and says so: settings, database migration, a synthetic full-size CEM
study, decoding and DICOM validation of every file, then a node on loopback
that receives the study by C-STORE, assembles it and pairs its images.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()

NOT_YET = (
    "the analysis (#4), SEG/SR/GSPS (#5), the trained demo model (#6) and the end-to-end "
    "demo with a PACS and a viewer (#7) are not implemented yet"
)


def demo(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo's files.")] = Path(
        "demo-out"
    ),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic study.")] = 2026,
    size: Annotated[str, typer.Option(help="Image size: full, small or WxH.")] = "full",
) -> None:
    """Run the demo on the embedded defaults (what exists so far; it says what does not)."""
    import pydicom

    from cem_node.dicom.validation import ValidatorMissingError, dciodvfy_errors
    from cem_node.store.migrate import upgrade
    from cem_node.synthetic import SynthOptions, generate_study

    console.rule("[bold]cem-node demo")
    console.print(f"[yellow]Partial demo:[/yellow] {NOT_YET}. It runs the parts that exist.")
    timings: dict[str, float] = {}

    started = time.perf_counter()
    settings = ctx.obj.settings()
    out.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{(out / 'cem-node.db').resolve()}"
    upgrade(db_url)
    timings["settings + database migration"] = time.perf_counter() - started
    console.print(
        f"node AE title {settings.node.ae_title!r}, port {settings.node.port}; database {db_url}"
    )

    started = time.perf_counter()
    study_dir = generate_study(out, seed, 1, SynthOptions(size=size))
    timings["synthetic study (8 images)"] = time.perf_counter() - started

    started = time.perf_counter()
    table = Table(title=f"Synthetic CEM study {study_dir}")
    for column in ("file", "laterality", "view", "image type", "size", "bits", "dciodvfy errors"):
        table.add_column(column)
    failures = 0
    validated = True
    for path in sorted((study_dir / "dicom").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        try:
            errors: list[str] | None = dciodvfy_errors(path)
        except ValidatorMissingError:
            errors, validated = None, False
        failures += len(errors or [])
        table.add_row(
            path.name,
            ds.ImageLaterality,
            ds.ViewPosition,
            "\\".join(ds.ImageType),
            f"{pixels.shape[1]} x {pixels.shape[0]}",
            str(ds.BitsStored),
            "n/a" if errors is None else str(len(errors)),
        )
    timings["decode + validate"] = time.perf_counter() - started
    console.print(table)

    started = time.perf_counter()
    received = _receive_by_c_store(settings, out, study_dir)
    timings["C-STORE, assembly, pairing"] = time.perf_counter() - started
    console.print(received)

    truth = json.loads((study_dir / "ground_truth.json").read_text())
    lesions = Table(title="Ground truth lesions")
    for column in ("lesion", "breast", "pathology", "morphology", "enhancement", "size mm"):
        lesions.add_column(column)
    for lesion in truth["lesions"]:
        lesions.add_row(
            lesion["lesion_id"],
            lesion["laterality"],
            lesion["pathology"],
            lesion["morphology"],
            lesion["enhancement"],
            f"{lesion['size_mm']:.1f}",
        )
    console.print(lesions if truth["lesions"] else "Ground truth: no lesion in this study.")
    for stage, seconds in timings.items():
        console.print(f"  {stage:<32} {seconds:6.2f} s")
    console.print(f"contact sheet: {study_dir / 'contact_sheet.png'}")
    console.print(f"ground truth:  {study_dir / 'ground_truth.json'}")
    if not validated:
        console.print(
            "[yellow]dciodvfy is not installed: DICOM validation skipped "
            "(run scripts/setup.sh)[/yellow]"
        )
    if failures:
        console.print(f"[red]{failures} dciodvfy errors[/red]")
        raise typer.Exit(1)
    console.print(f"[yellow]Not run yet:[/yellow] {NOT_YET}.")
    console.print("[green]demo finished: the parts that exist work[/green]")


def _receive_by_c_store(settings: object, out: Path, study_dir: Path) -> Table:
    """Run a node on loopback, send it the study as a modality would, show its decisions."""
    import pydicom

    from cem_node.config import Peer, Settings
    from cem_node.dicom.scu import RemoteAE, send_files
    from cem_node.jobs.admin import show_study
    from cem_node.node import Node

    assert isinstance(settings, Settings)
    node_settings = settings.model_copy(deep=True)
    node_settings.storage.root = out  # the demo's database: out/cem-node.db
    node_settings.database.url = ""
    node_settings.node.host = "127.0.0.1"
    node_settings.node.port = 0
    node_settings.assembly.quiet_period_s = 2.0
    node_settings.assembly.check_interval_s = 0.5
    node_settings.peers = [
        Peer(name="demo-modality", ae_title="DEMO_SENO", host="127.0.0.1", port=104, role="source")
    ]
    node = Node(node_settings, node_id="demo")
    node.start()
    try:
        files = sorted((study_dir / "dicom").glob("*.dcm"))
        remote = RemoteAE(node_settings.node.ae_title, "127.0.0.1", node.port)
        results = send_files(files, remote, calling_ae_title="DEMO_SENO")
        failed = [r for r in results if not r.delivered]
        if failed:
            console.print(f"[red]{len(failed)} C-STORE failures: {failed[0].message}[/red]")
            raise typer.Exit(1)
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        assert node.sessions is not None
        deadline = time.monotonic() + 60
        detail = show_study(node.sessions, uid)
        while detail["state"] in ("receiving", "complete", "processing"):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
            detail = show_study(node.sessions, uid)
    finally:
        node.stop()
    table = Table(title=f"Received by C-STORE: study state {detail['state']}")
    for column in ("image", "CEM role", "why", "breast", "view"):
        table.add_column(column)
    for item in detail["instances"]:
        table.add_row(
            f"series {item['series_number']} #{item['instance_number']}",
            item["role"] or "?",
            item["role_reason"] or "",
            item["laterality"] or "",
            item["view"] or "",
        )
    for pair in detail["pairings"]:
        table.add_row("pairing", "paired" if pair["paired"] else "unpaired", pair["reason"], "", "")
    if detail["state_reason"]:
        table.caption = detail["state_reason"]
    return table
