"""Model bundles: the format (:mod:`.manifest`) and the folder of bundles (:mod:`.registry`).

A bundle is a folder holding ``manifest.toml`` and exactly the files its
``[files]`` table lists with their SHA-256 (detector weights as
safetensors, the radiomics model as XGBoost JSON, the radiomics parameter
and feature files as JSON; no pickles). The SHA-256 of ``manifest.toml`` is
the bundle's hash, carried by every result (:meth:`Bundle.identity`).
The format is described in ``models/README.md``.

This package never imports torch or xgboost: it finds and verifies the
files, the analysis loads them.

Examples
--------
>>> from cem_node.models import BundleRegistry
>>> registry = BundleRegistry(settings.analysis.bundles_dir)  # doctest: +SKIP
>>> bundle = registry.resolve(None, default=settings.analysis.model)  # doctest: +SKIP
>>> weights = bundle.file(bundle.manifest.detector.weights)  # doctest: +SKIP
"""

from cem_node.models.manifest import (
    BUNDLE_NAME_PATTERN,
    FORMAT_VERSION,
    MANIFEST_NAME,
    BundleError,
    BundleExistsError,
    BundleInfo,
    BundleManifest,
    BundleUsageError,
    DetectorSection,
    IntendedUse,
    ManifestDraft,
    RadiomicsSection,
    TrainingInfo,
    UnknownBundleError,
    manifest_to_toml,
    parse_manifest,
)
from cem_node.models.registry import (
    ACTIVE_FILE,
    ActiveRecord,
    Bundle,
    BundleRegistry,
    BundleSummary,
    load_bundle,
    read_manifest,
    sha256_file,
    write_bundle,
)

__all__ = [
    "ACTIVE_FILE",
    "BUNDLE_NAME_PATTERN",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "ActiveRecord",
    "Bundle",
    "BundleError",
    "BundleExistsError",
    "BundleInfo",
    "BundleManifest",
    "BundleRegistry",
    "BundleSummary",
    "BundleUsageError",
    "DetectorSection",
    "IntendedUse",
    "ManifestDraft",
    "RadiomicsSection",
    "TrainingInfo",
    "UnknownBundleError",
    "load_bundle",
    "manifest_to_toml",
    "parse_manifest",
    "read_manifest",
    "sha256_file",
    "write_bundle",
]
