"""Model bundles: the manifest format, verification, writing, the registry.

Bundles are real folders written by :func:`write_bundle` in ``tmp_path`` with
small dummy files (no torch, no xgboost): every check below reads the disk.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cem_node.contracts.findings import ModelIdentity
from cem_node.models import (
    ACTIVE_FILE,
    MANIFEST_NAME,
    Bundle,
    BundleError,
    BundleExistsError,
    BundleManifest,
    BundleRegistry,
    BundleUsageError,
    UnknownBundleError,
    load_bundle,
    manifest_to_toml,
    parse_manifest,
    read_manifest,
    write_bundle,
)

FILES: dict[str, bytes] = {
    "detector.safetensors": b"\x00weights\x01" * 64,
    "radiomics_model.json": b'{"learner": {}}',
    "radiomics_features.json": b'["original_firstorder_Mean"]',
    "radiomics_params.json": b'{"binWidth": 3.0}',
}


def draft(name: str = "cem-demo", **sections: Any) -> dict[str, Any]:
    """A manifest without [files]; `sections` replace (or, with None, drop) whole sections."""
    data: dict[str, Any] = {
        "bundle": {
            "name": name,
            "version": "0.1.0",
            "created": dt.datetime(2025, 1, 6, 8, 0, tzinfo=dt.UTC),
            "description": "Small demo bundle for the tests",
        },
        "intended_use": {
            "statement": "Demonstration of the cem-node pipeline",
            "for_clinical_use": False,
            "disclaimer": "Trained on synthetic phantoms, not for clinical use",
        },
        "training": {
            "description": "Mask R-CNN and XGBoost on synthetic phantoms",
            "synthetic": True,
            "command": "cem-node train detector --seed 7",
            "seed": 7,
            "data": {"studies": 40, "generator": "cem_node.synthetic"},
        },
        "detector": {"backbone": "mobilenet_v3_lite", "fpn_channels": 64, "box_head_width": 128},
        "thresholds": {"dl": 0.4, "radiomics": 0.45, "fused": 0.5, "breast": 0.5, "patient": 0.6},
        "metrics": {"auc_patient": 0.91, "split": "synthetic hold-out"},
    }
    for key, value in sections.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def make_bundle(
    folder: Path, name: str = "cem-demo", files: dict[str, bytes] | None = None, **sections: Any
) -> Bundle:
    """Write a bundle named `name` into ``folder/name``."""
    return write_bundle(folder / name, draft(name, **sections), dict(files or FILES))


def rewrite_manifest(path: Path, old: str, new: str) -> None:
    manifest = path / MANIFEST_NAME
    text = manifest.read_text()
    assert old in text, (old, text)
    manifest.write_text(text.replace(old, new, 1))


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    return make_bundle(tmp_path / "models")


# --------------------------------------------------------------------------- round trip


def test_write_then_load_round_trip(bundle: Bundle) -> None:
    loaded = load_bundle(bundle.path)
    manifest_bytes = (bundle.path / MANIFEST_NAME).read_bytes()
    assert loaded.sha256 == bundle.sha256 == hashlib.sha256(manifest_bytes).hexdigest()
    assert loaded.manifest == bundle.manifest
    m = loaded.manifest
    assert m.format_version == 1
    assert m.bundle.name == "cem-demo"
    assert m.bundle.created == dt.datetime(2025, 1, 6, 8, 0, tzinfo=dt.UTC)
    assert m.detector.backbone == "mobilenet_v3_lite"
    assert m.detector.config().fpn_channels == 64
    assert m.radiomics.settings().bin_width == 3.0
    assert m.thresholds.patient == 0.6
    assert m.metrics == {"auc_patient": 0.91, "split": "synthetic hold-out"}
    assert m.training.data == {"studies": 40, "generator": "cem_node.synthetic"}
    assert m.files == {name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()}
    # the written bytes are what manifest_to_toml gives: deterministic
    assert manifest_to_toml(parse_manifest(manifest_bytes)) == manifest_bytes
    # the folder holds exactly the manifest and the files, no temporary left beside it
    assert sorted(p.name for p in bundle.path.iterdir()) == sorted([MANIFEST_NAME, *FILES])
    assert [p.name for p in bundle.path.parent.iterdir()] == ["cem-demo"]


def test_files_and_identity(bundle: Bundle) -> None:
    weights = bundle.file(bundle.manifest.detector.weights)
    assert weights == bundle.path / "detector.safetensors"
    assert weights.read_bytes() == FILES["detector.safetensors"]
    assert bundle.read_bytes("radiomics_params.json") == FILES["radiomics_params.json"]
    with pytest.raises(BundleError, match="not a file of bundle cem-demo"):
        bundle.file("other.json")
    identity = bundle.identity()
    assert isinstance(identity, ModelIdentity)
    assert identity == ModelIdentity(
        name="cem-demo",
        version="0.1.0",
        sha256=bundle.sha256,
        intended_use="Demonstration of the cem-node pipeline",
        for_clinical_use=False,
        disclaimer="Trained on synthetic phantoms, not for clinical use",
        # no [validation]: the classification counts as not validated
        score_caveat="score not validated",
    )


def test_validation_statements_reach_the_identity(tmp_path: Path) -> None:
    validation = {
        "detection": "Detection validated on real CEM: per-image sensitivity 95% [88, 99].",
        "classification": "Classification not validated: no real benign lesion.",
        "score_caveat": "score not validated",
    }
    identity = make_bundle(tmp_path, validation=validation).identity()
    assert identity.score_caveat == "score not validated"
    assert identity.validation == (
        "Detection validated on real CEM: per-image sensitivity 95% [88, 99]. "
        "Classification not validated: no real benign lesion."
    )
    validated = {
        "classification": "AUC 0.9 on 400 lesions, site B",
        "classification_validated": True,
    }
    assert make_bundle(tmp_path / "v", validation=validated).identity().score_caveat is None
    with pytest.raises(BundleError, match="score_caveat is for a classification that is not"):
        make_bundle(tmp_path / "w", validation={**validated, "score_caveat": "x"})
    with pytest.raises(BundleError, match="score_caveat"):  # too long for a label beside a score
        make_bundle(tmp_path / "x", validation={**validation, "score_caveat": "y" * 25})


def test_read_bytes_rechecks_the_checksum(bundle: Bundle) -> None:
    (bundle.path / "radiomics_model.json").write_bytes(b'{"learner": 1}')
    with pytest.raises(BundleError, match=r"radiomics_model.json: checksum mismatch"):
        bundle.read_bytes("radiomics_model.json")


def test_write_bundle_copies_files_from_paths(tmp_path: Path) -> None:
    sources = {}
    for name, data in FILES.items():
        sources[name] = tmp_path / f"src-{name}"
        sources[name].write_bytes(data)
    sub = b'{"scale": [1.0]}'
    files: dict[str, Path | bytes] = {**sources, "radiomics/scaler.json": sub}
    radiomics = {"scaler": "radiomics/scaler.json"}
    result = write_bundle(tmp_path / "out", draft(radiomics=radiomics), files)
    assert result.file("radiomics/scaler.json").read_bytes() == sub
    assert result.manifest.radiomics.scaler == "radiomics/scaler.json"
    assert result.path.name == "out"  # a staging folder may have any name


def test_write_bundle_refuses_an_existing_folder_unless_overwrite(tmp_path: Path) -> None:
    first = make_bundle(tmp_path)
    with pytest.raises(BundleExistsError, match="already exists"):
        make_bundle(tmp_path)
    again = write_bundle(
        first.path, draft(metrics={"auc_patient": 0.95}), dict(FILES), overwrite=True
    )
    assert again.manifest.metrics == {"auc_patient": 0.95}
    assert again.sha256 != first.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cem-demo"]


def test_write_bundle_leaves_nothing_behind_on_failure(tmp_path: Path) -> None:
    files = {k: v for k, v in FILES.items() if k != "radiomics_params.json"}
    with pytest.raises(BundleError, match=r"radiomics\.params = 'radiomics_params.json'"):
        write_bundle(tmp_path / "cem-demo", draft(), files)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- manifest errors


def test_missing_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "cem-demo"
    folder.mkdir()
    with pytest.raises(BundleError, match=r"no manifest\.toml: not a model bundle"):
        load_bundle(folder)


def test_unparseable_toml_names_the_line(bundle: Bundle) -> None:
    rewrite_manifest(bundle.path, 'version = "0.1.0"', "version = 0.1.0.0")
    with pytest.raises(BundleError, match=r"invalid TOML: .*at line 8, column"):
        load_bundle(bundle.path)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("fpn_channels = 64", "fpn_channels = 8", r"detector\.fpn_channels: .*greater than"),
        ("wavelet = true", 'wavelet = "yes"', r"radiomics\.wavelet: .*valid boolean"),
        ("levels = 256", 'levels = "256"', r"preprocessing\.levels: .*valid integer"),
        ("seed = 7", "seed = 7\nepochs = 3", r"training\.epochs: unknown key"),
        ('name = "cem-demo"', 'name = "Cem Demo"', r"bundle\.name: .*not a valid bundle name"),
        ("patient = 0.6", "patient = 1.5", r"thresholds\.patient: .*less than or equal to 1"),
        ('"background",', '"normal",', r"detector\.classes: must be"),
        (
            "created = 2025-01-06 08:00:00+00:00",
            "created = 2025-01-06T08:00:00+00:00\ncreated_by = 'x'",
            r"bundle\.created_by: unknown key",
        ),
    ],
)
def test_bad_manifest_value_names_the_field(
    bundle: Bundle, old: str, new: str, expected: str
) -> None:
    rewrite_manifest(bundle.path, old, new)
    with pytest.raises(BundleError, match=expected) as info:
        load_bundle(bundle.path)
    assert str(bundle.path / MANIFEST_NAME) in str(info.value)


def test_missing_section_and_format_version(bundle: Bundle) -> None:
    text = (bundle.path / MANIFEST_NAME).read_text()
    start = text.index("[intended_use]")
    end = text.index("[training]")
    with pytest.raises(BundleError, match=r"intended_use: missing \(required\)"):
        parse_manifest((text[:start] + text[end:]).encode())
    with pytest.raises(BundleError, match="format_version = 2 is not supported"):
        parse_manifest(text.replace("format_version = 1", "format_version = 2").encode())
    with pytest.raises(BundleError, match="format_version is missing"):
        parse_manifest(text.replace("format_version = 1", "").encode())


@pytest.mark.parametrize(
    ("intended_use", "training_synthetic", "expected"),
    [
        # synthetic training data without a disclaimer
        ({"statement": "demo", "for_clinical_use": False}, True, "requires a disclaimer"),
        # synthetic and "for clinical use"
        (
            {"statement": "demo", "for_clinical_use": True, "disclaimer": "not for clinical use"},
            True,
            "training.synthetic = true requires",
        ),
        # synthetic, a disclaimer without the words
        (
            {"statement": "demo", "for_clinical_use": False, "disclaimer": "research only"},
            True,
            'containing "not for clinical use"',
        ),
        # real data, not for clinical use, no disclaimer
        (
            {"statement": "demo", "for_clinical_use": False, "disclaimer": " "},
            False,
            "for_clinical_use = false requires a disclaimer",
        ),
    ],
)
def test_intended_use_rules(
    tmp_path: Path, intended_use: dict[str, Any], training_synthetic: bool, expected: str
) -> None:
    training = {**draft()["training"], "synthetic": training_synthetic}
    with pytest.raises(BundleError, match=expected):
        write_bundle(
            tmp_path / "b", draft(intended_use=intended_use, training=training), dict(FILES)
        )
    assert list(tmp_path.iterdir()) == []


def test_a_clinical_bundle_needs_no_disclaimer(tmp_path: Path) -> None:
    use = {"statement": "Second reader for CEM", "for_clinical_use": True}
    training = {**draft()["training"], "synthetic": False, "data": "1200 CEM studies, site A"}
    result = write_bundle(tmp_path / "b", draft(intended_use=use, training=training), FILES)
    assert result.identity().disclaimer is None
    assert result.identity().for_clinical_use is True


@pytest.mark.parametrize(
    "bad", ["../evil.json", "/etc/passwd", "sub/../../x", ".hidden", "a\\b.json", "C:/x", ""]
)
def test_path_traversal_rejected_when_writing(tmp_path: Path, bad: str) -> None:
    with pytest.raises(BundleUsageError, match="files: "):
        write_bundle(tmp_path / "b", draft(), {**FILES, bad: b"x"})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BundleError, match=r"detector\.weights"):
        write_bundle(tmp_path / "b", draft(detector={"weights": bad}), FILES)


def test_path_traversal_rejected_in_a_manifest(bundle: Bundle, tmp_path: Path) -> None:
    outside = tmp_path / "evil.json"
    outside.write_bytes(b"{}")
    digest = hashlib.sha256(b"{}").hexdigest()
    rewrite_manifest(
        bundle.path,
        'params = "radiomics_params.json"',
        'params = "../evil.json"',
    )
    manifest = bundle.path / MANIFEST_NAME
    manifest.write_text(manifest.read_text() + f'"../evil.json" = "{digest}"\n')
    with pytest.raises(BundleError) as info:
        load_bundle(bundle.path)
    message = str(info.value)
    assert "radiomics.params: '../evil.json': must stay inside the bundle" in message
    assert 'files."../evil.json"' in message


def test_manifest_must_list_referenced_files(bundle: Bundle) -> None:
    rewrite_manifest(bundle.path, 'model = "radiomics_model.json"', 'model = "xgb.json"')
    with pytest.raises(BundleError, match=r"not listed in \[files\]: radiomics\.model = 'xgb"):
        load_bundle(bundle.path)


# --------------------------------------------------------------------------- file errors


def test_modified_file_byte_is_a_checksum_error_naming_the_file(bundle: Bundle) -> None:
    path = bundle.path / "detector.safetensors"
    data = bytearray(path.read_bytes())
    data[5] ^= 0x01
    path.write_bytes(bytes(data))
    expected = hashlib.sha256(FILES["detector.safetensors"]).hexdigest()
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(BundleError) as info:
        load_bundle(bundle.path)
    message = str(info.value)
    assert "detector.safetensors: checksum mismatch" in message
    assert f"expected sha256 {expected[:12]}" in message
    assert f"actual {actual[:12]}" in message
    assert info.value.problems == [message.split("failed verification: ", 1)[1]]


def test_deleted_file(bundle: Bundle) -> None:
    (bundle.path / "radiomics_features.json").unlink()
    with pytest.raises(
        BundleError, match=r"radiomics_features\.json: listed in \[files\] but missing"
    ):
        load_bundle(bundle.path)


def test_extra_file_rejected_hidden_files_ignored(bundle: Bundle) -> None:
    (bundle.path / ".DS_Store").write_bytes(b"mac")
    (bundle.path / ".git").mkdir()
    (bundle.path / ".git" / "HEAD").write_text("ref")
    assert load_bundle(bundle.path).sha256 == bundle.sha256
    (bundle.path / "notes").mkdir()
    (bundle.path / "notes" / "todo.txt").write_text("retrain")
    with pytest.raises(BundleError, match=r"notes/todo\.txt: is in the bundle folder but not"):
        load_bundle(bundle.path)


def test_every_problem_is_reported(bundle: Bundle) -> None:
    (bundle.path / "radiomics_features.json").unlink()
    (bundle.path / "radiomics_model.json").write_bytes(b"{}")
    (bundle.path / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match="3 problems") as info:
        load_bundle(bundle.path)
    assert [p.split(":")[0] for p in info.value.problems] == [
        "extra.bin",
        "radiomics_features.json",
        "radiomics_model.json",
    ]


def test_symbolic_links_rejected(bundle: Bundle, tmp_path: Path) -> None:
    target = tmp_path / "weights"
    target.write_bytes(FILES["detector.safetensors"])
    (bundle.path / "detector.safetensors").unlink()
    (bundle.path / "detector.safetensors").symlink_to(target)
    with pytest.raises(BundleError, match=r"detector\.safetensors: is a symbolic link"):
        load_bundle(bundle.path)


def test_folder_and_manifest_name_must_match(bundle: Bundle) -> None:
    moved = bundle.path.with_name("cem-demo-2")
    bundle.path.rename(moved)
    with pytest.raises(BundleError, match=r"folder is named 'cem-demo-2' but .* 'cem-demo'"):
        load_bundle(moved)
    assert load_bundle(moved, check_name=False).name == "cem-demo"
    registry = BundleRegistry(moved.parent)
    with pytest.raises(BundleError, match="folder is named"):
        registry.load("cem-demo-2")


# --------------------------------------------------------------------------- registry


@pytest.fixture
def registry(tmp_path: Path) -> BundleRegistry:
    models = tmp_path / "models"
    make_bundle(models, "alpha")
    make_bundle(models, "beta", detector={"backbone": "resnet50_fpn_v2"})
    (models / "README.md").write_text("not a bundle")
    return BundleRegistry(models)


def test_names_and_load(registry: BundleRegistry) -> None:
    assert registry.names() == ["alpha", "beta"]
    assert registry.load("beta").manifest.detector.backbone == "resnet50_fpn_v2"
    assert registry.verify("alpha").name == "alpha"
    with pytest.raises(UnknownBundleError, match=r"no model bundle named 'gamma'.*alpha, beta"):
        registry.load("gamma")
    with pytest.raises(UnknownBundleError, match="not a valid bundle name"):
        registry.load("../alpha")
    assert BundleRegistry(registry.models_dir / "nowhere").names() == []


def test_load_verifies_checksums_every_time(registry: BundleRegistry) -> None:
    registry.load("alpha")
    (registry.models_dir / "alpha" / "radiomics_params.json").write_bytes(b"{}")
    with pytest.raises(BundleError, match=r"radiomics_params\.json: checksum mismatch"):
        registry.load("alpha")


def test_activate_and_resolve_order(registry: BundleRegistry) -> None:
    assert registry.active() is None
    assert registry.active_name("alpha") == "alpha"
    assert registry.active_name() is None
    assert registry.resolve(None, "alpha").name == "alpha"  # config default
    with pytest.raises(UnknownBundleError, match="no model bundle chosen"):
        registry.resolve()

    record = registry.activate("beta", actor="admin:test")
    assert record.name == "beta"
    assert record.sha256 == registry.load("beta").sha256
    assert record.activated_at.tzinfo is not None
    assert (registry.models_dir / ACTIVE_FILE).is_file()
    assert not [p for p in registry.models_dir.iterdir() if p.name.startswith(".")]
    assert registry.active() == record  # read back from the file
    assert registry.active_name("alpha") == "beta"
    assert registry.resolve(None, "alpha").name == "beta"  # active beats the default
    assert registry.resolve("alpha", "alpha").name == "alpha"  # explicit beats active

    with pytest.raises(UnknownBundleError, match=r"'gamma' \(requested\).*alpha, beta"):
        registry.resolve("gamma", "alpha")
    with pytest.raises(UnknownBundleError, match=r"'gamma' \(the config's analysis\.model\)"):
        BundleRegistry(registry.models_dir.parent / "empty").resolve(None, "gamma")


def test_active_bundle_modified_after_activation_is_refused(registry: BundleRegistry) -> None:
    registry.activate("alpha")
    path = registry.models_dir / "alpha"
    # a consistent change (the manifest itself): checksums pass, the hash differs
    rewrite_manifest(path, "auc_patient = 0.91", "auc_patient = 0.99")
    assert load_bundle(path).manifest.metrics["auc_patient"] == 0.99
    for call in (lambda: registry.load("alpha"), lambda: registry.resolve(None, "beta")):
        with pytest.raises(BundleError, match="alpha was modified after it was activated") as e:
            call()
        assert "cem-node models activate alpha" in str(e.value)
    assert registry.load("beta").name == "beta"  # others are not affected
    summary = {s.name: s for s in registry.list()}["alpha"]
    assert not summary.valid
    assert summary.active
    assert "modified after it was activated" in (summary.error or "")

    registry.activate("alpha")  # accepting the change
    assert registry.load("alpha").manifest.metrics["auc_patient"] == 0.99


def test_activate_refuses_an_invalid_bundle(registry: BundleRegistry) -> None:
    registry.activate("alpha")
    (registry.models_dir / "beta" / "detector.safetensors").write_bytes(b"x")
    with pytest.raises(BundleError, match="checksum mismatch"):
        registry.activate("beta")
    assert registry.active_name() == "alpha"
    with pytest.raises(UnknownBundleError):
        registry.activate("gamma")


def test_corrupt_active_file(registry: BundleRegistry) -> None:
    (registry.models_dir / ACTIVE_FILE).write_text('name = "alpha"\nsha256 = 3\n')
    with pytest.raises(BundleError, match=r"active\.toml: invalid .*activate a bundle again"):
        registry.resolve(None, "alpha")
    assert [s.active for s in registry.list()] == [False, False]  # listing does not raise
    registry.activate("alpha")
    assert registry.resolve(None, "beta").name == "alpha"


def test_list_shows_broken_bundles_without_raising(registry: BundleRegistry) -> None:
    models = registry.models_dir
    (models / "beta" / "stray.txt").write_text("x")
    (models / "empty").mkdir()
    make_bundle(models, "gamma")
    (models / "gamma" / MANIFEST_NAME).write_text("format_version = 1\n[bundle\n")
    (models / ".import-tmp").mkdir()  # hidden: ignored
    registry.activate("alpha")
    summaries = {s.name: s for s in registry.list()}
    assert list(summaries) == ["alpha", "beta", "empty", "gamma"]
    assert summaries["alpha"].valid
    assert summaries["alpha"].active
    assert summaries["alpha"].sha256 == registry.load("alpha").sha256
    assert summaries["alpha"].for_clinical_use is False
    beta = summaries["beta"]
    assert (beta.valid, beta.active, beta.version, beta.sha256) == (False, False, "0.1.0", None)
    assert "stray.txt" in (beta.error or "")
    assert "no manifest.toml" in (summaries["empty"].error or "")
    assert summaries["empty"].version is None
    assert "invalid TOML" in (summaries["gamma"].error or "")
    assert summaries["gamma"].to_dict()["path"] == str(models / "gamma")


# --------------------------------------------------------------------------- import


def test_import_new_then_refuse_then_force(tmp_path: Path) -> None:
    staging = write_bundle(tmp_path / "download" / "whatever", draft(), FILES)
    (staging.path / ".DS_Store").write_bytes(b"mac")
    registry = BundleRegistry(tmp_path / "models")  # created on import
    imported = registry.import_bundle(staging.path)
    assert imported.path == registry.models_dir / "cem-demo"
    assert imported.sha256 == staging.sha256  # byte for byte
    assert sorted(p.name for p in imported.path.iterdir()) == sorted([MANIFEST_NAME, *FILES])
    assert registry.names() == ["cem-demo"]

    newer = write_bundle(
        tmp_path / "download" / "newer", draft(metrics={"auc_patient": 0.97}), FILES
    )
    with pytest.raises(BundleExistsError, match=r"already in .*--force"):
        registry.import_bundle(newer.path)
    assert registry.load("cem-demo").sha256 == staging.sha256  # untouched

    registry.activate("cem-demo")
    replaced = registry.import_bundle(newer.path, force=True)
    assert replaced.sha256 == newer.sha256
    assert not [p for p in registry.models_dir.iterdir() if p.name.startswith(".")]
    # replacing the active bundle by other content: refused until activated again
    with pytest.raises(BundleError, match="modified after it was activated"):
        registry.load("cem-demo")
    registry.activate("cem-demo")
    assert registry.load("cem-demo").manifest.metrics == {"auc_patient": 0.97}


def test_import_under_another_name_rewrites_the_manifest(tmp_path: Path) -> None:
    staging = write_bundle(tmp_path / "staging", draft(), FILES)
    registry = BundleRegistry(tmp_path / "models")
    renamed = registry.import_bundle(staging.path, name="cem-demo-v2")
    assert renamed.name == "cem-demo-v2"
    assert renamed.path.name == "cem-demo-v2"
    assert renamed.sha256 != staging.sha256
    assert renamed.manifest.files == staging.manifest.files
    assert renamed.manifest.model_copy(update={"bundle": staging.manifest.bundle}) == (
        staging.manifest
    )
    assert read_manifest(staging.path).bundle.name == "cem-demo"  # the source is untouched
    with pytest.raises(BundleUsageError, match="not a valid bundle name"):
        registry.import_bundle(staging.path, name="Bad Name")


def test_import_refuses_a_broken_source(tmp_path: Path) -> None:
    staging = write_bundle(tmp_path / "staging", draft(), FILES)
    (staging.path / "radiomics_model.json").write_bytes(b"{}")
    registry = BundleRegistry(tmp_path / "models")
    with pytest.raises(BundleError, match=r"radiomics_model\.json: checksum mismatch") as info:
        registry.import_bundle(staging.path)
    assert not isinstance(info.value, BundleUsageError)
    assert registry.names() == []
    with pytest.raises(UnknownBundleError, match="no such folder"):
        registry.import_bundle(tmp_path / "nowhere")


def test_import_of_a_registry_bundle_into_itself(tmp_path: Path) -> None:
    registry = BundleRegistry(tmp_path / "models")
    make_bundle(registry.models_dir)
    with pytest.raises(BundleUsageError, match="nothing to import"):
        registry.import_bundle(registry.models_dir / "cem-demo", force=True)
    assert registry.load("cem-demo")


# --------------------------------------------------------------------------- the package


def test_manifest_model_is_strict_python_side() -> None:
    data = copy.deepcopy(draft())
    data["files"] = {n: hashlib.sha256(b).hexdigest() for n, b in FILES.items()}
    data["files"]["detector.safetensors"] = "ABC"
    with pytest.raises(ValueError, match="String should match pattern"):
        BundleManifest.model_validate(data)


def test_the_models_package_imports_neither_torch_nor_xgboost() -> None:
    code = (
        "import sys, cem_node.models, cem_node.cli.models_cmd;"
        "bad = [m for m in ('torch', 'xgboost', 'torchvision') if m in sys.modules];"
        "assert not bad, bad"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CEM_NODE_")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
