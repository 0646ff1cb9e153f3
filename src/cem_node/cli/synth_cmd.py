"""``cem-node synth``: write synthetic CEM studies with ground truth."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


class TransferSyntax(StrEnum):
    explicit = "explicit"
    jpeg2000 = "jpeg2000"
    jpegls = "jpegls"
    rle = "rle"


class EdgeCaseOption(StrEnum):
    one_breast = "one-breast"
    missing_rc = "missing-rc"
    extra_non_cem = "extra-non-cem"
    for_processing = "for-processing"
    split_series = "split-series"
    old_view_codes = "old-view-codes"


class VendorOption(StrEnum):
    standard = "standard"
    ge = "ge"
    hologic = "hologic"
    siemens = "siemens"
    fujifilm = "fujifilm"


def synth(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (one sub-folder per study).")
    ],
    studies: Annotated[
        int, typer.Option("--studies", "-n", min=1, max=10000, help="Number of studies.")
    ] = 1,
    seed: Annotated[
        int,
        typer.Option(
            "--seed", "-s", min=0, help="Random seed: the same seed gives the same bytes."
        ),
    ] = 0,
    size: Annotated[
        str,
        typer.Option(
            "--size",
            help="Image size: 'full' (2294 rows x 1914 columns at 0.1 mm, a Pristina "
            "detector), 'small' (573 x 478 at 0.4 mm, for fast tests) or WxH (columns x rows, "
            "same field of view).",
        ),
    ] = "full",
    transfer_syntax: Annotated[
        TransferSyntax,
        typer.Option(
            "--transfer-syntax", "-t", help="DICOM encoding (compressed ones are lossless)."
        ),
    ] = TransferSyntax.explicit,
    edge_case: Annotated[
        list[EdgeCaseOption] | None,
        typer.Option(
            "--edge-case",
            help="Make every study deviate (repeatable): one-breast, missing-rc (one view's "
            "recombined image is not written), extra-non-cem (an extra conventional 2D image), "
            "for-processing (a For Processing copy of each low-energy image), split-series "
            "(every image in a series of its own), old-view-codes (SNOMED-RT view codes "
            "R-10242/R-10226 only, no View Position).",
        ),
    ] = None,
    vendor: Annotated[
        VendorOption,
        typer.Option(
            "--vendor",
            help="Header style: standard (the DICOM standard's CEM Image Type values, GE "
            "equipment names), or ge, hologic, siemens, fujifilm: that vendor's names and the "
            "CEM markers docs/VENDORS.md confirms from public sources.",
        ),
    ] = VendorOption.standard,
) -> None:
    """Write synthetic CEM studies: DICOM files, ground truth and a contact sheet.

    Each study has one patient, both breasts, CC and MLO views, each a
    low-energy and a recombined image (8 DICOM files, Digital Mammography
    For Presentation, headers like a GE Senographe Pristina with SenoBright,
    or another vendor's with --vendor),
    ground_truth.json (lesions: pathology, morphology, enhancement, size,
    mask PNG per view) and contact_sheet.png. Synthetic phantoms: not
    patient data, not for clinical use.
    """
    from cem_node.synthetic import SynthOptions, generate_studies, grid_for_size

    try:
        grid = grid_for_size(size)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    options = SynthOptions(
        size=size,
        transfer_syntax=transfer_syntax.value,
        edge_cases=frozenset(e.value for e in edge_case or []),
        vendor=vendor.value,
    )
    console.print(
        f"writing {studies} synthetic stud{'y' if studies == 1 else 'ies'} to {out} "
        f"({grid.cols} x {grid.rows} px at {grid.pixel_mm} mm, "
        f"{transfer_syntax.value}, {vendor.value} headers, seed {seed})"
    )
    started = time.perf_counter()
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("studies", total=studies)
            for path in generate_studies(out, studies, seed, options):
                progress.update(task, advance=1, description=path.name)
    except OSError as exc:
        console.print(f"[red]error:[/red] cannot write to {out}: {exc.strerror or exc}")
        raise typer.Exit(1) from None
    console.print(f"done in {time.perf_counter() - started:.1f} s")
