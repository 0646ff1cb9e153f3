"""Classify mammography images as CEM low-energy, recombined, high-energy or
other, and pair low-energy with recombined images per breast and view.

Pure functions over DICOM headers (read without pixel data) and the
configured :class:`~cem_node.config.SelectionSection` rules. Every decision
carries a reason in plain words, so an administrator can see why an image
was or was not analysed (``cem-node studies show``). The vendor facts the
rules rest on, with their sources, are in ``docs/VENDORS.md``.

Precedence of the signals (the first that decides wins):

1. the SOP class: only the mammography image classes can hold a CEM image;
2. explicit DICOM markers: Image Type values 4 and 5 (the standard's
   SUBTRACTION, LOW_ENERGY, HIGH_ENERGY, PS3.3 C.8.11.7.1.4, and the terms of
   the vendor preset matching the Manufacturer), the derivation code
   "Multi-energy proportional weighting" (113097, DCM), the vendor
   processing codes of the preset and the configured private-tag rules;
3. heuristics: a DERIVED image whose description says recombined or
   subtracted; the exposure technique (kVp, filter, contrast agent); the
   Series Description alone.

A DERIVED image is not an exposure: its technique attributes are copied from
the images it was computed from, so a low kVp never makes it low energy.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
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
#: The For Processing ones (raw detector data, before the vendor's processing).
FOR_PROCESSING_SOP_CLASSES = frozenset(
    {"1.2.840.10008.5.1.4.1.1.1.2.1", "1.2.840.10008.5.1.4.1.1.13.1.5"}
)
#: The views the model was trained on.
MODEL_VIEWS = ("CC", "MLO")


@dataclass(frozen=True)
class MammoView:
    """A view of PS3.16 CID 4014 "View for Mammography"."""

    abbreviation: str  # the ACR MQCM 1999 equivalent, also used as View Position
    meaning: str
    sct: str
    srt: str  # the SNOMED-RT code of editions before SCT (coding scheme SRT)


#: CID 4014 "View for Mammography" with the SNOMED-RT codes of older editions.
MAMMOGRAPHY_VIEWS: tuple[MammoView, ...] = (
    MammoView("ML", "medio-lateral", "399260004", "R-10224"),
    MammoView("MLO", "medio-lateral oblique", "399368009", "R-10226"),
    MammoView("LM", "latero-medial", "399352003", "R-10228"),
    MammoView("LMO", "latero-medial oblique", "399099002", "R-10230"),
    MammoView("CC", "cranio-caudal", "399162004", "R-10242"),
    MammoView("FB", "caudo-cranial (from below)", "399196006", "R-10244"),
    MammoView("SIO", "superolateral to inferomedial oblique", "399188001", "R-102D0"),
    MammoView("ISO", "inferomedial to superolateral oblique", "441555000", "R-40AAA"),
    MammoView("XCCL", "cranio-caudal exaggerated laterally", "399192008", "R-1024A"),
    MammoView("XCCM", "cranio-caudal exaggerated medially", "399101009", "R-1024B"),
    MammoView("SPECIMEN", "tissue specimen from breast", "127457009", "G-8310"),
)
#: Code value -> view abbreviation: SCT, SNOMED-RT, and the two codes an early
#: edition of CID 4014 gave XCCL and XCCM (Y-X1770, Y-X1771; deprecated there).
VIEW_CODES: dict[str, str] = {
    **{v.sct: v.abbreviation for v in MAMMOGRAPHY_VIEWS},
    **{v.srt: v.abbreviation for v in MAMMOGRAPHY_VIEWS},
    "Y-X1770": "XCCL",
    "Y-X1771": "XCCM",
}
_VIEW_NAMES = {v.abbreviation for v in MAMMOGRAPHY_VIEWS}
#: "Multi-energy proportional weighting" (PS3.16 CID 7203 Image Derivation).
MULTI_ENERGY_DERIVATION = ("113097", "DCM")


@dataclass(frozen=True)
class VendorPreset:
    """What one manufacturer writes beyond the standard (docs/VENDORS.md).

    Only values a public source confirms are listed; a vendor without any
    keeps the standard's values only.
    """

    name: str
    label: str
    manufacturer: re.Pattern[str]
    image_type_values: Mapping[str, frozenset[str]] = field(default_factory=dict)
    processing_codes: Mapping[str, str] = field(default_factory=dict)


#: One preset per vendor; the keys are the names of ``selection.vendor_presets``.
VENDOR_PRESETS: dict[str, VendorPreset] = {
    p.name: p
    for p in (
        VendorPreset(
            "ge",
            "GE",
            re.compile(r"(?i)^\s*(GE\b|GENERAL ELECTRIC)"),
            # SenoBright writes the energy into value 4: ORIGINAL\PRIMARY\\LOW_ENERGY,
            # DERIVED\PRIMARY\\RECOMBINED, ORIGINAL\PRIMARY\\HIGH_ENERGY
            image_type_values={
                "recombined": frozenset({"RECOMBINED"}),
                "low_energy": frozenset({"LOW_ENERGY"}),
                "high_energy": frozenset({"HIGH_ENERGY"}),
            },
            # GEMS_FFDM_PV marks low-energy and plain 2D images alike: not a role
            processing_codes={"GEMS_CESM_1": "recombined"},
        ),
        VendorPreset("hologic", "Hologic", re.compile(r"(?i)\b(HOLOGIC|LORAD)\b")),
        VendorPreset("siemens", "Siemens", re.compile(r"(?i)\bSIEMENS\b")),
        VendorPreset("fujifilm", "Fujifilm", re.compile(r"(?i)\bFUJI")),
    )
}


@dataclass(frozen=True)
class Classification:
    """The role of one image and why."""

    sop_instance_uid: str
    role: Role
    reason: str
    laterality: str | None
    view: str | None
    acquisition_time: str | None
    for_processing: bool = False


@dataclass(frozen=True)
class Pairing:
    """A low-energy/recombined pair of one breast and view, or an unpaired image.

    The reason names the breast and view (when known) once.
    """

    laterality: str | None
    view: str | None
    low_energy: str | None  # SOP Instance UID
    recombined: str | None
    reason: str

    @property
    def complete(self) -> bool:
        return self.low_energy is not None and self.recombined is not None


# --------------------------------------------------------------------------- header values


def image_laterality(ds: Dataset) -> str | None:
    """The breast, ``"L"`` or ``"R"``: Image Laterality, else (Series) Laterality."""
    value = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "").upper()
    return value if value in {"L", "R"} else None


def _coded_view(ds: Dataset) -> tuple[str, str] | None:
    """The view of the View Code Sequence and the code it came from."""
    for item in ds.get("ViewCodeSequence", []) or []:
        value = str(item.get("CodeValue", "") or "").strip()
        if value in VIEW_CODES:
            scheme = str(item.get("CodingSchemeDesignator", "") or "?")
            return VIEW_CODES[value], f"({value}, {scheme})"
    return None


def _position_view(ds: Dataset) -> str | None:
    position = str(ds.get("ViewPosition", "") or "").strip().upper()
    if not position:
        return None
    if position in _VIEW_NAMES:
        return position
    # some modalities prefix the laterality: LCC, RMLO
    if position[:1] in {"L", "R"} and position[1:] in _VIEW_NAMES:
        return position[1:]
    return position[:16]  # a view the node does not know: reported as it is


def image_view(ds: Dataset) -> str | None:
    """The view: the View Code Sequence (CID 4014, SCT or SNOMED-RT), else View Position."""
    coded = _coded_view(ds)
    return coded[0] if coded else _position_view(ds)


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


def is_for_processing(ds: Dataset) -> bool:
    """Whether an image is a For Processing (raw) one: its SOP class or its
    Presentation Intent Type says so."""
    if str(ds.get("SOPClassUID", "")) in FOR_PROCESSING_SOP_CLASSES:
        return True
    return str(ds.get("PresentationIntentType", "") or "").strip().upper() == "FOR PROCESSING"


def vendor_presets_for(ds: Dataset, rules: SelectionSection) -> list[VendorPreset]:
    """The enabled presets of the image's Manufacturer (all of them if it has none)."""
    enabled = [VENDOR_PRESETS[name] for name in rules.vendor_presets]
    manufacturer = str(ds.get("Manufacturer", "") or "").strip()
    if not manufacturer:
        return enabled
    return [p for p in enabled if p.manufacturer.search(manufacturer)]


def _multi_energy_derivation(ds: Dataset) -> bool:
    for item in ds.get("DerivationCodeSequence", []) or []:
        code = (str(item.get("CodeValue", "")), str(item.get("CodingSchemeDesignator", "")))
        if code == MULTI_ENERGY_DERIVATION:
            return True
    return False


# --------------------------------------------------------------------------- classification


class _Header:
    """The header values the classification rules read, each read once when
    a rule first needs it (a rule that decides early leaves the rest unread)."""

    def __init__(self, ds: Dataset, rules: SelectionSection) -> None:
        self.ds = ds
        self.rules = rules

    @cached_property
    def image_type(self) -> list[str]:
        return [str(v).strip().upper() for v in (self.ds.get("ImageType") or [])]

    @cached_property
    def shown_type(self) -> str:
        return "\\".join(self.image_type) or "(none)"

    @cached_property
    def derived(self) -> bool:
        return self.image_type[:1] == ["DERIVED"]

    @cached_property
    def presets(self) -> list[VendorPreset]:
        return vendor_presets_for(self.ds, self.rules)

    @cached_property
    def configured(self) -> dict[str, set[str]]:
        """The configured Image Type terms of each role."""
        return {
            "recombined": {v.upper() for v in self.rules.recombined_image_type_values},
            "low_energy": {v.upper() for v in self.rules.low_energy_image_type_values},
            "high_energy": {v.upper() for v in self.rules.high_energy_image_type_values},
        }

    @cached_property
    def description(self) -> str:
        return str(self.ds.get("SeriesDescription", "") or "")

    @cached_property
    def contrast(self) -> bool:
        return bool(self.ds.get("ContrastBolusAgent") or self.ds.get("ContrastBolusAgentSequence"))

    @cached_property
    def kvp(self) -> float | None:
        return _float(_safe_get(self.ds, "KVP"))


#: A rule's decision: the role and the reason, or None when the rule does not decide.
_Decision = tuple[Role, str] | None


def _standard_image_type(h: _Header) -> _Decision:
    """Image Type values 4 and 5 holding the standard's terms where the standard puts them."""
    standard_value = {"recombined": 4, "low_energy": 5, "high_energy": 5}
    standard_term = {"recombined": "SUBTRACTION", "low_energy": "LOW_ENERGY"}
    standard_term["high_energy"] = "HIGH_ENERGY"
    for role, number in standard_value.items():
        value = h.image_type[number - 1] if len(h.image_type) >= number else ""
        # the standard is cited for its own terms only; others are a preset's or configured
        if value and value == standard_term[role] and value in h.configured[role]:
            return (
                role,  # type: ignore[return-value]
                f"ImageType contains {value} in value {number} (PS3.3 C.8.11.7.1.4): "
                f"{h.shown_type}",
            )
    return None


def _vendor_image_type(h: _Header) -> _Decision:
    """Each vendor preset's Image Type terms, then the configured ones, anywhere from value 4."""
    sources = [
        *((f"{p.label} preset", p.image_type_values) for p in h.presets),
        ("configured ImageType values", h.configured),
    ]
    for source, terms in sources:
        for role in ("recombined", "low_energy", "high_energy"):
            found = [(n, v) for n, v in enumerate(h.image_type[3:], 4) if v in terms.get(role, ())]
            if found:
                number, value = found[0]
                return (
                    role,  # type: ignore[return-value]
                    f"ImageType contains {value} in value {number} ({source}): {h.shown_type}",
                )
    return None


def _derivation_code(h: _Header) -> _Decision:
    if h.derived and _multi_energy_derivation(h.ds):
        return (
            "recombined",
            "DERIVED image with derivation code (113097, DCM) "
            '"Multi-energy proportional weighting"',
        )
    return None


def _vendor_processing_code(h: _Header) -> _Decision:
    if not h.rules.use_private_tags:
        return None
    processing = str(h.ds.get("AcquisitionDeviceProcessingCode", "") or "").strip().upper()
    for preset in h.presets:
        code_role = preset.processing_codes.get(processing)
        if code_role:
            return (
                code_role,  # type: ignore[return-value]
                f"{preset.label} processing code {processing} ({preset.label} preset)",
            )
    return None


def _private_tags(h: _Header) -> _Decision:
    if not h.rules.use_private_tags:
        return None
    for rule in h.rules.private_tag_rules:
        value = _private_value(h.ds, rule.group, rule.private_creator, rule.element)
        if value is not None and re.search(rule.pattern, value):
            return (
                rule.role,
                f"private tag ({rule.group},xx{rule.element}) of {rule.private_creator} "
                f"{value[:40]!r} matches {rule.pattern!r}",
            )
    return None


def _derived_description(h: _Header) -> _Decision:
    """A DERIVED image whose Series or Derivation Description says recombined."""
    if not h.derived:
        return None
    texts = [("SeriesDescription", h.description)]
    texts.append(("DerivationDescription", str(h.ds.get("DerivationDescription", "") or "")))
    for name, text in texts:
        pattern = _matches(h.rules.recombined_series_description_patterns, text)
        if pattern:
            return (
                "recombined",
                f"DERIVED image whose {name} {text[:64]!r} matches {pattern!r}",
            )
    return None


def _high_energy_technique(h: _Header) -> _Decision:
    """A high kVp with a high-energy filter or a contrast agent recorded."""
    rules, kvp = h.rules, h.kvp
    filters = {str(v).upper() for v in _values(h.ds.get("FilterMaterial"))}
    high_filter = filters & {m.upper() for m in rules.high_energy_filter_materials}
    kind = "DERIVED" if h.derived else "ORIGINAL"
    if kvp is not None and kvp >= rules.high_energy_kvp_min and (high_filter or h.contrast):
        signal = (
            f"{'/'.join(sorted(high_filter))} filter" if high_filter else "contrast agent recorded"
        )
        return (
            "recombined" if h.derived else "high_energy",
            f"{signal} and kVp {kvp:g} >= {rules.high_energy_kvp_min:g}: {kind} image",
        )
    return None


def _low_energy_technique(h: _Header) -> _Decision:
    """A low kVp with a contrast agent recorded, of an exposure (not a DERIVED image)."""
    kvp = h.kvp
    if h.contrast and kvp is not None and kvp <= h.rules.low_energy_kvp_max and not h.derived:
        return (
            "low_energy",
            f"contrast agent recorded and kVp {kvp:g} <= {h.rules.low_energy_kvp_max:g}: "
            "ORIGINAL image",
        )
    return None


def _series_description(h: _Header) -> _Decision:
    for role, patterns in (
        ("recombined", h.rules.recombined_series_description_patterns),
        ("low_energy", h.rules.low_energy_series_description_patterns),
        ("high_energy", h.rules.high_energy_series_description_patterns),
    ):
        pattern = _matches(patterns, h.description)
        if pattern:
            return role, f"SeriesDescription {h.description!r} matches {pattern!r}"  # type: ignore[return-value]
    return None


#: The classification rules in their precedence (module documentation): explicit
#: markers first, then the heuristics. The first rule that decides wins.
_RULES = (
    # 1. Image Type values 4 and later
    _standard_image_type,
    _vendor_image_type,
    # 2. derivation code and vendor codes
    _derivation_code,
    _vendor_processing_code,
    _private_tags,
    # 3. heuristics
    _derived_description,
    _high_energy_technique,
    _low_energy_technique,
    _series_description,
)


def _no_signal(h: _Header) -> tuple[Role, str]:
    """The decision when no rule decides, with what the header held."""
    kvp = h.kvp
    derived_note = (
        " (a DERIVED image's technique is copied from its sources: kVp alone does not decide)"
        if h.derived and h.contrast
        else ""
    )
    return (
        "other",
        "no CEM signal: ImageType "
        f"{h.shown_type}, kVp {kvp if kvp is not None else '(none)'}, "
        f"{'a' if h.contrast else 'no'} contrast agent, SeriesDescription {h.description!r}"
        f"{derived_note}",
    )


def _decide(ds: Dataset, rules: SelectionSection) -> tuple[Role, str]:
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in MAMMOGRAPHY_SOP_CLASSES:
        return "other", f"SOP class {sop_class or '(none)'} is not a mammography image"
    header = _Header(ds, rules)
    for rule in _RULES:
        decision = rule(header)
        if decision is not None:
            return decision
    return _no_signal(header)


def classify_image(ds: Dataset, rules: SelectionSection) -> Classification:
    """Decide the CEM role of one image from its header.

    The signals are tried in the order of the module documentation: the SOP
    class, explicit markers (Image Type, derivation code, vendor codes and
    private tags), then heuristics (description of a DERIVED image, technique,
    description). The reason names the signal that decided.
    """
    role, reason = _decide(ds, rules)
    return Classification(
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        role=role,
        reason=reason,
        laterality=image_laterality(ds),
        view=image_view(ds),
        acquisition_time=str(ds.get("AcquisitionTime", "") or "") or None,
        for_processing=is_for_processing(ds),
    )


# --------------------------------------------------------------------------- pairing


def _role_word(role: str) -> str:
    return role.replace("_", "-")


def _choose(
    images: list[Classification], policy: str, where: str, role: str
) -> tuple[list[Classification], list[Pairing], str]:
    """Split one role's candidates of a breast and view by presentation intent.

    Returns the candidates to pair, the pairings of those left out (with
    why), and a note for the pairs made of For Processing images.
    """
    presentation = [c for c in images if not c.for_processing]
    processing = [c for c in images if c.for_processing]
    word = _role_word(role)
    setting = f'selection.for_processing = "{policy}"'

    def left_out(c: Classification, why: str) -> Pairing:
        return Pairing(
            c.laterality,
            c.view,
            c.sop_instance_uid if role == "low_energy" else None,
            c.sop_instance_uid if role == "recombined" else None,
            f"{where}: {why}",
        )

    if policy == "exclude":
        why = f"For Processing {word} image not used ({setting})"
        rows = [left_out(c, why) for c in processing]
        return presentation, rows, ""
    if policy == "prefer":
        preferred, other, other_name = processing, presentation, "For Presentation"
        first, second = "For Processing", "For Presentation"
    else:
        preferred, other, other_name = presentation, processing, "For Processing"
        first, second = "For Presentation", "For Processing"
    if preferred:
        rows = [
            left_out(c, f"{other_name} {word} image not paired: a {first} one is ({setting})")
            for c in other
        ]
        return preferred, rows, ""
    note = f" ({second} {word} image: no {first} one received)" if other else ""
    return other, [], note


def pair_images(
    images: Iterable[Classification], rules: SelectionSection | None = None
) -> list[Pairing]:
    """Pair low-energy with recombined images per laterality and view.

    Only the views the model uses (CC, MLO) are paired; images of other views,
    or without a laterality or view, get a pairing of their own that says why.
    For Presentation images are paired before For Processing ones (as
    ``rules.for_processing`` says). When several candidates remain for one
    breast and view, the images closest in AcquisitionTime are paired;
    everything left over is reported unpaired with its reason. High-energy and
    other images are not paired.
    """
    policy = (rules or SelectionSection()).for_processing
    groups: dict[tuple[str, str], dict[str, list[Classification]]] = defaultdict(
        lambda: {"low_energy": [], "recombined": []}
    )
    pairings: list[Pairing] = []
    for image in images:
        if image.role not in ("low_energy", "recombined"):
            continue
        le = image.sop_instance_uid if image.role == "low_energy" else None
        rc = image.sop_instance_uid if image.role == "recombined" else None
        word = _role_word(image.role)
        if image.laterality is None:
            where = f"{image.view}: " if image.view else ""
            why = f"{where}{word} image without a laterality (Image Laterality): cannot pair"
            pairings.append(Pairing(None, image.view, le, rc, why))
        elif image.view is None:
            why = (
                f"{image.laterality}: {word} image without a view (no View Code Sequence code "
                "of CID 4014, no View Position): cannot pair"
            )
            pairings.append(Pairing(image.laterality, None, le, rc, why))
        elif image.view not in MODEL_VIEWS:
            why = (
                f"{image.laterality}: {word} image not paired, view {image.view}: "
                f"the model uses {' and '.join(MODEL_VIEWS)} only"
            )
            pairings.append(Pairing(image.laterality, image.view, le, rc, why))
        else:
            groups[(image.laterality, image.view)][image.role].append(image)
    for (lat, view), byrole in sorted(groups.items()):
        where = f"{lat} {view}"
        les, le_rows, le_note = _choose(byrole["low_energy"], policy, where, "low_energy")
        rcs, rc_rows, rc_note = _choose(byrole["recombined"], policy, where, "recombined")
        les = sorted(les, key=lambda c: c.acquisition_time or "")
        rcs = sorted(rcs, key=lambda c: c.acquisition_time or "")
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
                    f"{where}: low-energy and recombined of the same breast and view"
                    f"{le_note}{rc_note}",
                )
            )
        for le in les:
            pairings.append(
                Pairing(lat, view, le.sop_instance_uid, None, f"{where}: no recombined image")
            )
        for rc in rcs:
            pairings.append(
                Pairing(lat, view, None, rc.sop_instance_uid, f"{where}: no low-energy image")
            )
        pairings.extend(le_rows + rc_rows)
    return pairings


def _seconds(value: str | None) -> float | None:
    if not value or len(value) < 6 or not value[:6].isdigit():
        return None
    return int(value[:2]) * 3600 + int(value[2:4]) * 60 + float(value[4:] or 0)


def _time_gap(a: str | None, b: str | None) -> float:
    sa, sb = _seconds(a), _seconds(b)
    return abs(sa - sb) if sa is not None and sb is not None else float("inf")
