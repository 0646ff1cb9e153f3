"""Classify mammography images as CEM low-energy, recombined, high-energy or
other, and pair low-energy with recombined images per breast and view.

Pure functions over DICOM headers (read without pixel data) and the
configured :class:`~cem_node.config.SelectionSection` rules. Every decision
carries a reason in plain words, so an administrator can see why an image
was or was not analysed (``cem-node studies show``, issue #3).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydicom import Dataset

from cem_node.config import SelectionSection

Role = Literal["low_energy", "recombined", "high_energy", "other"]

#: Mammography SOP classes that can carry a CEM image.
MAMMOGRAPHY_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.13.1.4": "Breast Projection X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.13.1.5": "Breast Projection X-Ray Image Storage - For Processing",
}
#: View codes (SCT) -> view position.
VIEW_CODES = {"399162004": "CC", "399368009": "MLO"}
#: GE's processing code of a recombined SenoBright image.
GE_RECOMBINED_PROCESSING_CODES = {"GEMS_CESM_1"}


@dataclass(frozen=True)
class Classification:
    """The role of one image and why."""

    sop_instance_uid: str
    role: Role
    reason: str
    laterality: str | None
    view: str | None
    acquisition_time: str | None


@dataclass(frozen=True)
class Pairing:
    """A low-energy/recombined pair of one breast and view, or an unpaired image."""

    laterality: str | None
    view: str | None
    low_energy: str | None  # SOP Instance UID
    recombined: str | None
    reason: str

    @property
    def complete(self) -> bool:
        return self.low_energy is not None and self.recombined is not None


def _laterality(ds: Dataset) -> str | None:
    value = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "").upper()
    return value if value in {"L", "R"} else None


def _view(ds: Dataset) -> str | None:
    position = str(ds.get("ViewPosition", "") or "").upper()
    if position in {"CC", "MLO"}:
        return position
    for item in ds.get("ViewCodeSequence", []) or []:
        view = VIEW_CODES.get(str(item.get("CodeValue", "")))
        if view:
            return view
    return None


def _safe_get(ds: Dataset, keyword: str) -> object:
    # pydicom converts DS/IS values when they are read: a malformed one raises
    try:
        return ds.get(keyword)
    except (ValueError, TypeError):
        return None


def _float(value: object) -> float | None:
    # a malformed DS from a modality must not stop the classification
    try:
        return float(value) if value not in (None, "") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _values(value: object) -> list[object]:
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes):
        return [value]
    try:
        return list(value)  # type: ignore[call-overload]
    except TypeError:
        return [value]


def _private_value(ds: Dataset, group: str, creator: str, element: str) -> str | None:
    try:
        block = ds.private_block(int(group, 16), creator)
        item = block[int(element, 16)]
    except (KeyError, ValueError):
        return None
    value = item.value
    if isinstance(value, bytes):
        return value.decode("latin-1", "replace")
    return "\\".join(map(str, value)) if isinstance(value, list) else str(value)


def _matches(patterns: Sequence[str], text: str) -> str | None:
    return next((p for p in patterns if re.search(p, text)), None)


def classify_image(ds: Dataset, rules: SelectionSection) -> Classification:
    """Decide the CEM role of one image from its header.

    Signals in order: the SOP class; Image Type values 4 and later (PS3.3
    C.8.11.7.1.4; GE also writes RECOMBINED there); the vendor processing
    code; kVp together with a recorded contrast agent; SeriesDescription.
    """

    def result(role: Role, reason: str) -> Classification:
        return Classification(
            sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
            role=role,
            reason=reason,
            laterality=_laterality(ds),
            view=_view(ds),
            acquisition_time=str(ds.get("AcquisitionTime", "") or "") or None,
        )

    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in MAMMOGRAPHY_SOP_CLASSES:
        return result("other", f"SOP class {sop_class or '(none)'} is not a mammography image")
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    shown_type = "\\".join(image_type) or "(none)"
    extra = image_type[3:]
    for role, values in (
        ("recombined", rules.recombined_image_type_values),
        ("low_energy", rules.low_energy_image_type_values),
        ("high_energy", rules.high_energy_image_type_values),
    ):
        hit = next((v for v in extra if v in {x.upper() for x in values}), None)
        if hit:
            return result(role, f"ImageType contains {hit} ({shown_type})")  # type: ignore[arg-type]
    processing = str(ds.get("AcquisitionDeviceProcessingCode", "") or "").upper()
    if rules.use_private_tags and processing in GE_RECOMBINED_PROCESSING_CODES:
        return result("recombined", f"GE processing code {processing}")
    if rules.use_private_tags:
        for rule in rules.private_tag_rules:
            value = _private_value(ds, rule.group, rule.private_creator, rule.element)
            if value is not None and re.search(rule.pattern, value):
                return result(
                    rule.role,
                    f"private tag ({rule.group},xx{rule.element}) of {rule.private_creator} "
                    f"{value[:40]!r} matches {rule.pattern!r}",
                )
    contrast = bool(ds.get("ContrastBolusAgent") or ds.get("ContrastBolusAgentSequence"))
    kvp = _float(_safe_get(ds, "KVP"))
    filters = {str(v).upper() for v in _values(ds.get("FilterMaterial"))}
    high_filter = filters & {m.upper() for m in rules.high_energy_filter_materials}
    if high_filter and kvp is not None and kvp >= rules.high_energy_kvp_min:
        role: Role = "recombined" if "DERIVED" in image_type[:1] else "high_energy"
        return result(
            role,
            f"{'/'.join(sorted(high_filter))} filter and kVp {kvp:g} >= "
            f"{rules.high_energy_kvp_min:g}, {'DERIVED' if role == 'recombined' else 'ORIGINAL'}"
            " image",
        )
    if contrast and kvp is not None:
        if kvp <= rules.low_energy_kvp_max:
            return result(
                "low_energy",
                f"contrast agent recorded and kVp {kvp:g} <= {rules.low_energy_kvp_max:g}",
            )
        if kvp >= rules.high_energy_kvp_min:
            role = "recombined" if "DERIVED" in image_type[:1] else "high_energy"
            return result(
                role,
                f"contrast agent recorded, kVp {kvp:g} >= {rules.high_energy_kvp_min:g}"
                f" and {'DERIVED' if role == 'recombined' else 'ORIGINAL'} image",
            )
    description = str(ds.get("SeriesDescription", "") or "")
    for role, patterns in (
        ("recombined", rules.recombined_series_description_patterns),
        ("low_energy", rules.low_energy_series_description_patterns),
        ("high_energy", rules.high_energy_series_description_patterns),
    ):
        pattern = _matches(patterns, description)
        if pattern:
            return result(role, f"SeriesDescription {description!r} matches {pattern!r}")  # type: ignore[arg-type]
    return result(
        "other",
        "no CEM signal: ImageType "
        f"{shown_type}, kVp {kvp if kvp is not None else '(none)'}, "
        f"{'a' if contrast else 'no'} contrast agent, SeriesDescription {description!r}",
    )


def pair_images(images: Iterable[Classification]) -> list[Pairing]:
    """Pair low-energy with recombined images per laterality and view.

    When several candidates exist for one breast and view, the images closest
    in AcquisitionTime are paired; everything left over is reported unpaired
    with its reason. High-energy and other images are not paired.
    """
    groups: dict[tuple[str | None, str | None], dict[str, list[Classification]]] = defaultdict(
        lambda: {"low_energy": [], "recombined": []}
    )
    pairings: list[Pairing] = []
    for image in images:
        if image.role not in ("low_energy", "recombined"):
            continue
        if image.laterality is None or image.view is None:
            missing = "laterality" if image.laterality is None else "view (CC/MLO)"
            pairings.append(
                Pairing(
                    image.laterality,
                    image.view,
                    image.sop_instance_uid if image.role == "low_energy" else None,
                    image.sop_instance_uid if image.role == "recombined" else None,
                    f"{image.role.replace('_', '-')} image without a {missing}: cannot pair",
                )
            )
            continue
        groups[(image.laterality, image.view)][image.role].append(image)
    for (lat, view), byrole in sorted(groups.items()):
        les = sorted(byrole["low_energy"], key=lambda c: c.acquisition_time or "")
        rcs = sorted(byrole["recombined"], key=lambda c: c.acquisition_time or "")
        while les and rcs:
            le = les.pop(0)
            rc = min(rcs, key=lambda c: _time_gap(le.acquisition_time, c.acquisition_time))
            rcs.remove(rc)
            pairings.append(
                Pairing(
                    lat,
                    view,
                    le.sop_instance_uid,
                    rc.sop_instance_uid,
                    f"{lat} {view}: low-energy and recombined of the same breast and view",
                )
            )
        for le in les:
            pairings.append(
                Pairing(lat, view, le.sop_instance_uid, None, f"{lat} {view}: no recombined image")
            )
        for rc in rcs:
            pairings.append(
                Pairing(lat, view, None, rc.sop_instance_uid, f"{lat} {view}: no low-energy image")
            )
    return pairings


def _seconds(value: str | None) -> float | None:
    if not value or len(value) < 6 or not value[:6].isdigit():
        return None
    return int(value[:2]) * 3600 + int(value[2:4]) * 60 + float(value[4:] or 0)


def _time_gap(a: str | None, b: str | None) -> float:
    sa, sb = _seconds(a), _seconds(b)
    return abs(sa - sb) if sa is not None and sb is not None else float("inf")
