"""``cem-node synth``: write synthetic CEM studies with ground truth."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from cem_node.synthetic.dicom_writer import TransferSyntaxName

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
    from_cdd: Annotated[
        str | None,
        typer.Option(
            "--from-cdd",
            metavar="PATIENT",
            help="Instead of phantoms, wrap one real CDD-CESM patient (e.g. P2) of the 512-px "
            "subset in --cdd-dir as a CEM DICOM study (GE headers, 12-bit lossless copy of the "
            "8-bit pixels, assumed 0.6 mm spacing) into OUT/CDD-P<id>/dicom, with its lesion "
            "masks in OUT/CDD-P<id>/masks. Data: CC BY 4.0, cite CDD-CESM (see the dataset's "
            "README).",
        ),
    ] = None,
    cdd_dir: Annotated[
        Path | None,
        typer.Option(
            "--cdd-dir", help="The CDD-CESM 512-px folder (with pairs.csv), for --from-cdd."
        ),
    ] = None,
    cdd_view: Annotated[
        list[str] | None,
        typer.Option(
            "--cdd-view",
            help="With --from-cdd: write only this view, e.g. LCC or R-MLO (repeatable; "
            "default: all the patient's views).",
        ),
    ] = None,
) -> None:
    """Write synthetic CEM studies: DICOM files, ground truth and a contact sheet.

    Each study has one patient, both breasts, CC and MLO views, each a
    low-energy and a recombined image (8 DICOM files, Digital Mammography
    For Presentation, headers like a GE Senographe Pristina with SenoBright,
    or another vendor's with --vendor),
    ground_truth.json (lesions: pathology, morphology, enhancement, size,
    mask PNG per view) and contact_sheet.png. Synthetic phantoms: not
    patient data, not for clinical use.

    With --from-cdd PATIENT --cdd-dir DIR: one real CDD-CESM patient instead
    (see cem_node.training.real_pairs): its low-energy / recombined pairs as
    one study, and a mask PNG per view; the phantom options are not used.
    """
    if from_cdd is not None or cdd_dir is not None or cdd_view:
        _from_cdd(out, from_cdd, cdd_dir, cdd_view or [], transfer_syntax.value)  # type: ignore[arg-type]
        return
    from cem_node.synthetic import SynthOptions, grid_for_size

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
    _write_studies(out, studies, seed, options)


def _write_studies(out: Path, studies: int, seed: int, options: Any) -> None:
    """Generate the phantom studies with a progress bar (exit 1 when out is not writable)."""
    from cem_node.synthetic import generate_studies

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


def _parse_view(text: str) -> tuple[str, str]:
    compact = text.strip().upper().replace("-", "").replace(" ", "").replace("_", "")
    if len(compact) < 3 or compact[0] not in "LR" or compact[1:] not in ("CC", "MLO"):
        raise ValueError(
            f"--cdd-view must be L or R then CC or MLO (e.g. LCC, R-MLO), got {text!r}"
        )
    return compact[0], compact[1:]


def _from_cdd(
    out: Path,
    patient: str | None,
    cdd_dir: Path | None,
    views: list[str],
    syntax: TransferSyntaxName,
) -> None:
    """``synth --from-cdd``: one real CDD-CESM patient as a DICOM study, with its masks."""
    import numpy as np
    from PIL import Image

    from cem_node.training.real_pairs import RealPairError, cdd_patient_id, write_cdd_study

    if patient is None or cdd_dir is None:
        console.print("[red]error:[/red] --from-cdd PATIENT and --cdd-dir DIR go together")
        raise typer.Exit(2)
    try:
        chosen = [_parse_view(v) for v in views] or None
        folder = out / f"CDD-{cdd_patient_id(patient)}"
        study = write_cdd_study(
            cdd_dir, patient, folder / "dicom", views=chosen, transfer_syntax=syntax
        )
        (folder / "masks").mkdir(exist_ok=True)
        for (lat, view), mask in study.masks.items():
            Image.fromarray(mask.astype(np.uint8) * 255).save(
                folder / "masks" / f"RC_{lat}{view}.png"
            )
    except (RealPairError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    except OSError as exc:
        console.print(f"[red]error:[/red] cannot write to {out}: {exc.strerror or exc}")
        raise typer.Exit(1) from None
    outlined = sum(bool(m.any()) for m in study.masks.values())
    console.print(
        f"wrote {len(study.files)} images of {study.patient_id} ({len(study.masks)} view(s), "
        f"{outlined} outlined) to {folder}/dicom, masks in {folder}/masks; "
        "real CDD-CESM data (CC BY 4.0), not for clinical use"
    )
