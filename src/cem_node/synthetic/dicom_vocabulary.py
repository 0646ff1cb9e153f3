"""The fixed vocabulary of the synthetic mammography header.

SOP Class and implementation UIDs, the (clearly synthetic) equipment
identity, the contrast agent, the coded concepts, Image Type and processing
codes per image kind, the anode and filter terms, and the vendor styles of
``cem-node synth --vendor``. :mod:`cem_node.synthetic.dicom_writer` explains
the choices and re-exports the public names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydicom.uid import UID

from cem_node import __version__

#: Digital Mammography X-Ray Image Storage - For Presentation.
DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.2")
#: Digital Mammography X-Ray Image Storage - For Processing.
DIGITAL_MAMMOGRAPHY_FOR_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.2.1")
#: Fixed UID under pydicom's root, made once from the entropy "cem-node" and
#: "ImplementationClassUID" (a constant keeps the files deterministic).
IMPLEMENTATION_CLASS_UID = UID("1.2.826.0.1.3680043.8.498.74066020914533676164413809874428842274")
#: "CEM_NODE_010" for version 0.1.0 (SH: at most 16 characters).
IMPLEMENTATION_VERSION_NAME = ("CEM_NODE_" + re.sub(r"[^0-9A-Za-z]", "", __version__))[:16]
DISCLAIMER = "SYNTHETIC PHANTOM - NOT PATIENT DATA"

# Equipment identity (clearly synthetic where it identifies a site)
_MANUFACTURER = "GE Healthcare"
_MODEL = "Senographe Pristina"
_INSTITUTION = "SYNTHETIC PHANTOM HOSPITAL"
_STATION = "SYNTHMAMMO01"
_DEVICE_SERIAL = "SYN000001"
_DETECTOR_ID = "SYNDET0001"
_SOFTWARE_VERSIONS = ["SYNTH_SENOBRIGHT_1.0", f"cem-node {__version__}"]
_SOURCE_TO_DETECTOR_MM = 660.0
_FOCAL_SPOT_MM = 0.3
_PRIVATE_CREATOR = "GEMS_SENO_02"

# Contrast agent (Iohexol 350 mgI/ml, 1.5 ml/kg IV, one injection per study)
_AGENT_NAME = "IOHEXOL 350 MGI/ML"
_AGENT_CONCENTRATION_MG_PER_ML = 350
_AGENT_DOSE_ML_PER_KG = 1.5
_AGENT_MAX_ML = 150.0

# (code value, coding scheme, code meaning)
_CodeTuple = tuple[str, str, str]
_VIEW_CODES: dict[str, _CodeTuple] = {
    "CC": ("399162004", "SCT", "cranio-caudal"),
    "MLO": ("399368009", "SCT", "medio-lateral oblique"),
}
# the SNOMED-RT codes of the same views in editions of PS3.16 before SCT
_OLD_VIEW_CODES: dict[str, _CodeTuple] = {
    "CC": ("R-10242", "SRT", "cranio-caudal"),
    "MLO": ("R-10226", "SRT", "medio-lateral oblique"),
}
_BREAST: _CodeTuple = ("76752008", "SCT", "Breast")
_IOHEXOL: _CodeTuple = ("109218004", "SCT", "Iohexol")
_INTRAVENOUS: _CodeTuple = ("47625008", "SCT", "Intravenous route")
_MULTI_ENERGY: _CodeTuple = ("113097", "DCM", "Multi-energy proportional weighting")

_ORIENTATIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("L", "CC"): ("A", "R"),
    ("R", "CC"): ("P", "L"),
    ("L", "MLO"): ("A", "F"),
    ("R", "MLO"): ("P", "F"),
}
_IMAGE_TYPES: dict[str, tuple[str, ...]] = {
    "low_energy": ("ORIGINAL", "PRIMARY", "", "", "LOW_ENERGY"),
    "recombined": ("DERIVED", "PRIMARY", "", "SUBTRACTION", ""),
    "non_contrast": ("ORIGINAL", "PRIMARY", ""),
}
# Acquisition Device Processing Code of GE images (seen in real SenoBright data)
_PROCESSING_CODES = {
    "low_energy": "GEMS_FFDM_PV",
    "recombined": "GEMS_CESM_1",
    "non_contrast": "GEMS_FFDM_PV",
}

# DICOM Defined Terms (PS3.3 C.8.7.8/C.8.7.10), plus SILVER and TITANIUM: Ag
# filters are used for low-energy CEM exposures, Ti for Siemens' high-energy
# ones (TiCEM), and neither is a Defined Term.
_ANODES = frozenset({"TUNGSTEN", "MOLYBDENUM", "RHODIUM"})
_FILTERS = frozenset(
    {
        "MOLYBDENUM",
        "ALUMINUM",
        "COPPER",
        "RHODIUM",
        "NIOBIUM",
        "EUROPIUM",
        "LEAD",
        "SILVER",
        "TITANIUM",
    }
)
#: Filters of a high-energy exposure.
HIGH_ENERGY_FILTERS = frozenset({"COPPER", "TITANIUM"})
# nominal filter thicknesses of a mammography unit, in mm
_FILTER_THICKNESS_MM = {
    "MOLYBDENUM": 0.03,
    "RHODIUM": 0.025,
    "SILVER": 0.03,
    "ALUMINUM": 0.5,
    "COPPER": 0.3,
    "TITANIUM": 0.3,
}
_HIGH_ENERGY_MIN_KVP = 40.0

VendorName = Literal["standard", "ge", "hologic", "siemens", "fujifilm"]
_STANDARD_IMAGE_TYPES = _IMAGE_TYPES


@dataclass(frozen=True)
class VendorStyle:
    """How one vendor's CEM images look, as far as docs/VENDORS.md confirms it.

    Parameters
    ----------
    name: str
        ``standard``, ``ge``, ``hologic``, ``siemens`` or ``fujifilm``.
    manufacturer, model: str
        Manufacturer and Manufacturer's Model Name.
    image_types: Mapping[str, tuple[str, ...]]
        Image Type (0008,0008) per image kind.
    processing_codes: Mapping[str, str]
        Acquisition Device Processing Code per image kind (none when absent).
    gems_block: bool
        Write GE's private block GEMS_SENO_02 (group 0045).
    high_energy_filter: str
        Filter of the high-energy exposure a recombined image records.
    source_to_detector_mm: float
        Distance Source to Detector.
    detector_type: str
        Detector Type (DIRECT or SCINTILLATOR).
    series_layout: {"by_kind", "one_series"}
        One series per image kind, or the low-energy and recombined images of
        the examination in one series (a synthetic choice, not a vendor fact).
    """

    name: str
    manufacturer: str
    model: str
    software_versions: tuple[str, ...]
    image_types: Mapping[str, tuple[str, ...]]
    processing_codes: Mapping[str, str] = field(default_factory=dict)
    gems_block: bool = False
    high_energy_filter: str = "COPPER"
    source_to_detector_mm: float = _SOURCE_TO_DETECTOR_MM
    detector_type: str = "SCINTILLATOR"
    series_layout: Literal["by_kind", "one_series"] = "by_kind"


_SYNTH_VERSION = f"cem-node {__version__}"
#: The styles of ``cem-node synth --vendor`` (docs/VENDORS.md gives the sources).
VENDOR_STYLES: dict[str, VendorStyle] = {
    s.name: s
    for s in (
        # the phantom's original style: the standard's Image Type values, GE names
        VendorStyle(
            "standard",
            _MANUFACTURER,
            _MODEL,
            tuple(_SOFTWARE_VERSIONS),
            _STANDARD_IMAGE_TYPES,
            _PROCESSING_CODES,
            gems_block=True,
        ),
        # GE SenoBright: energy in Image Type value 4, GEMS processing codes
        VendorStyle(
            "ge",
            "GE MEDICAL SYSTEMS",
            "Senographe Pristina",
            ("SYNTH_SENOBRIGHT_1.0", _SYNTH_VERSION),
            {
                "low_energy": ("ORIGINAL", "PRIMARY", "", "LOW_ENERGY"),
                "recombined": ("DERIVED", "PRIMARY", "", "RECOMBINED"),
                "non_contrast": ("ORIGINAL", "PRIMARY", ""),
            },
            _PROCESSING_CODES,
            gems_block=True,
        ),
        VendorStyle(
            "hologic",
            "HOLOGIC, Inc.",
            "Selenia Dimensions",
            ("SYNTH_AWS_1.0", _SYNTH_VERSION),
            _STANDARD_IMAGE_TYPES,
            source_to_detector_mm=700.0,
            detector_type="DIRECT",
            series_layout="one_series",
        ),
        VendorStyle(
            "siemens",
            "SIEMENS",
            "MAMMOMAT Revelation",
            ("SYNTH_VB_1.0", _SYNTH_VERSION),
            _STANDARD_IMAGE_TYPES,
            high_energy_filter="TITANIUM",
            # a-Se, direct conversion (Siemens' MAMMOMAT detector, docs/VENDORS.md)
            detector_type="DIRECT",
        ),
        VendorStyle(
            "fujifilm",
            "FUJIFILM Corporation",
            "AMULET Innovality",
            ("SYNTH_AWS_1.0", _SYNTH_VERSION),
            _STANDARD_IMAGE_TYPES,
            # a-Se, direct conversion with optical readout (AMULET, docs/VENDORS.md)
            detector_type="DIRECT",
            series_layout="one_series",
        ),
    )
}
