"""Detector training: presets, augmentation geometry, a tiny run, resume, determinism, CLI."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from cem_node.contracts.params import (
    DetectorConfig,
    PostprocessParams,
    PreprocessParams,
)
from cem_node.pipeline.detector import DetectorError, build_detector, detect, load_detector
from cem_node.pipeline.preprocess import resize_shape
from cem_node.training.datasets import load_dataset, split
from cem_node.training.detector_training import (
    KEEP_SCORE_GRID,
    AugmentConfig,
    AugmentParams,
    KeepScoreRow,
    PreparedImage,
    TrainConfig,
    TrainingError,
    augment,
    boxes_from_masks,
    choose_operating_point,
    epoch_order,
    find_hard_examples,
    keep_score_sweep,
    learning_rate,
    load_pretrained_weights,
    prepare_sample,
    sample_augment_params,
    scaled_preprocess,
    train_detector,
    transform_boxes,
)
from cem_node.training.radiomics_training import RadiomicsTrainingError, detector_postprocess

TINY = DetectorConfig(
    backbone="mobilenet_v3_lite", fpn_channels=32, box_head_width=64, mask_head_channels=32
)
SMALL_INPUT = PreprocessParams(short_side=128, max_long_side=256)


@pytest.fixture(autouse=True)
def one_thread():
    """One CPU thread: quick on a shared machine, and the results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dataset-cache")


@pytest.fixture(scope="module")
def parts(cache: Path):
    data = load_dataset("synthetic:2:0:small", cache_dir=cache)
    return split(data, (0.5, 0.5, 0.0), seed=0)


def _config(epochs: int, **kw) -> TrainConfig:
    return TrainConfig(
        preset="fast", epochs=epochs, seed=3, device="cpu", max_steps_per_epoch=2, **kw
    )


# --- configuration ----------------------------------------------------------------------------


def test_presets() -> None:
    paper = TrainConfig()
    assert (paper.lr, paper.batch_size, paper.epochs, paper.warmup_steps) == (1e-5, 1, 30, 0)
    assert paper.augment == AugmentConfig(vertical_flip_p=0.5, shear_rad=0.1, scale=(0.9, 1.1))
    fast = TrainConfig(preset="fast")
    assert 1e-4 <= fast.lr <= 3e-4 and fast.batch_size == 2 and fast.epochs <= 10
    mixed = TrainConfig(preset="fast", lr=5e-5, epochs=None)
    assert (mixed.lr, mixed.epochs, mixed.batch_size) == (5e-5, fast.epochs, 2)
    assert paper.lr_schedule == "constant" and fast.lr_schedule == "cosine"
    with pytest.raises(ValueError, match="scale range"):
        AugmentConfig(scale=(1.1, 0.9))


def test_learning_rate_warmup_then_schedule() -> None:
    constant = TrainConfig(lr=1e-3, warmup_steps=4, lr_schedule="constant")
    assert [learning_rate(constant, s, 100) for s in (0, 1, 3)] == pytest.approx(
        [2.5e-4, 5e-4, 1e-3]
    )
    assert learning_rate(constant, 99, 100) == pytest.approx(1e-3)
    cosine = TrainConfig(lr=1e-3, warmup_steps=4, lr_schedule="cosine")
    assert learning_rate(cosine, 3, 104) == pytest.approx(1e-3 / 4 * 4)
    assert learning_rate(cosine, 4, 104) == pytest.approx(1e-3)  # the top of the curve
    assert learning_rate(cosine, 54, 104) == pytest.approx((1e-3 + 1e-5) / 2)  # half way
    assert learning_rate(cosine, 104, 104) == pytest.approx(1e-5)  # 1% at the end
    rates = [learning_rate(cosine, s, 104) for s in range(4, 105)]
    assert all(a >= b for a, b in itertools.pairwise(rates))


# --- augmentation -----------------------------------------------------------------------------


def test_augment_params_ranges() -> None:
    rng = np.random.default_rng(0)
    draws = [sample_augment_params(rng, AugmentConfig()) for _ in range(400)]
    assert 0.4 < np.mean([d.flip for d in draws]) < 0.6
    assert max(abs(d.shear_rad) for d in draws) <= 0.1
    assert min(d.scale for d in draws) >= 0.9 and max(d.scale for d in draws) <= 1.1
    assert sample_augment_params(rng, AugmentConfig(enabled=False)) == AugmentParams()


def test_rotation_and_jitter_leave_a_paper_configuration_stream_unchanged() -> None:
    # the extra draws come after the paper's three and only when asked for: a run that does
    # not ask for them trains on the same images as before they existed
    paper = [sample_augment_params(np.random.default_rng(k), AugmentConfig()) for k in range(50)]
    for k, params in enumerate(paper):
        flip, shear, scale = np.random.default_rng(k).random(3)
        assert params.flip == bool(flip < 0.5)
        assert params.shear_rad == pytest.approx((2 * shear - 1) * 0.1)
        assert params.scale == pytest.approx(0.9 + scale * 0.2)
        assert params.rotation_rad == 0.0 and params.channel_jitter == ()
    mammo = AugmentConfig(rotation_deg=15.0, intensity_jitter=0.2)
    draws = [sample_augment_params(np.random.default_rng(k), mammo) for k in range(50)]
    assert [(d.flip, d.shear_rad, d.scale) for d in draws] == [
        (p.flip, p.shear_rad, p.scale) for p in paper
    ]
    rotations = np.degrees([d.rotation_rad for d in draws])
    assert np.abs(rotations).max() <= 15.0 and np.abs(rotations).max() > 10.0
    contrasts = np.array([[c for c, _ in d.channel_jitter] for d in draws])
    gammas = np.array([[g for _, g in d.channel_jitter] for d in draws])
    assert contrasts.shape == (50, 3)
    assert contrasts.min() >= 0.8 and contrasts.max() <= 1.2
    assert gammas.min() >= np.exp(-0.2) and gammas.max() <= np.exp(0.2)
    # the channels (low-energy, recombined) are jittered apart
    assert not np.allclose(contrasts[:, 0], contrasts[:, 1])
    with pytest.raises(ValueError):
        AugmentConfig(rotation_deg=60.0)


def test_intensity_jitter_keeps_black_black_and_stays_in_range() -> None:
    rng = np.random.default_rng(3)
    image = rng.random((3, 40, 30), dtype=np.float32)
    image[:, :, :5] = 0.0  # background outside the breast
    masks = np.zeros((1, 40, 30), dtype=bool)
    masks[0, 10:20, 10:20] = True
    params = AugmentParams(channel_jitter=((1.3, 0.8), (1.0, 1.0), (0.7, 1.25)))
    out, out_masks = augment(image, masks, params)
    assert np.array_equal(out_masks, masks)  # intensity alone moves no pixel
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
    assert not out[:, :, :5].any()
    assert np.array_equal(out[1], image[1])
    np.testing.assert_allclose(out[2], 0.7 * image[2] ** 1.25, rtol=1e-5)
    np.testing.assert_allclose(out[0], np.clip(1.3 * image[0] ** 0.8, 0, 1), rtol=1e-5)
    with pytest.raises(ValueError, match="float image"):
        augment((image * 255).astype(np.uint8), masks, params)
    with pytest.raises(ValueError, match="2 channel jitters"):
        augment(image, masks, AugmentParams(channel_jitter=((1.0, 1.0), (1.0, 1.0))))


@pytest.mark.parametrize("degrees", [-15.0, 7.5, 30.0])
def test_rotation_moves_the_image_its_masks_and_boxes_together(degrees: float) -> None:
    rows, cols = 90, 70
    boxes = np.array([[20, 25, 38, 49], [40, 55, 52, 70]], dtype=np.float64)
    masks = np.zeros((2, rows, cols), dtype=bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.astype(int), strict=True):
        mask[y0:y1, x0:x1] = True
    image = np.zeros((3, rows, cols), dtype=np.float32)
    image[0], image[2] = masks[0], masks[1]
    params = AugmentParams(rotation_rad=float(np.radians(degrees)))
    out_image, out_masks = augment(image, masks, params)
    # a rotation keeps the area (up to the edge pixels) and moves the image with the masks
    for channel, before, after in ((0, masks[0], out_masks[0]), (2, masks[1], out_masks[1])):
        assert abs(int(after.sum()) - int(before.sum())) <= 0.1 * before.sum()
        painted = out_image[channel] >= 0.5
        assert (painted & after).sum() / (painted | after).sum() > 0.95
    # the box of the rotated rectangle's corners bounds the rotated mask
    expected = transform_boxes(boxes, params, (rows, cols))
    assert np.abs(boxes_from_masks(out_masks) - expected).max() <= 1.5
    # the centre of a centred square stays put
    centred = np.zeros((1, rows, cols), dtype=bool)
    centred[0, 35:55, 25:45] = True
    turned = augment(image, centred, params)[1][0]
    ys, xs = np.nonzero(turned)
    assert abs(ys.mean() - 44.5) < 0.6 and abs(xs.mean() - 34.5) < 0.6


@pytest.mark.parametrize("seed", range(6))
def test_augmentation_keeps_image_masks_and_boxes_consistent(seed: int) -> None:
    rows, cols = 90, 70
    boxes = np.array([[12, 20, 30, 44], [40, 55, 61, 80]], dtype=np.float64)  # edges
    masks = np.zeros((2, rows, cols), dtype=bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.astype(int), strict=True):
        mask[y0:y1, x0:x1] = True
    image = np.zeros((3, rows, cols), dtype=np.float32)
    image[0] = masks[0]
    image[2] = masks[1]
    params = sample_augment_params(np.random.default_rng(seed), AugmentConfig())
    if seed == 0:
        params = AugmentParams(flip=True, shear_rad=0.1, scale=1.1)  # the extremes
    out_image, out_masks = augment(image, masks, params)
    assert out_image.shape == image.shape and out_masks.shape == masks.shape
    from_masks = boxes_from_masks(out_masks)
    expected = transform_boxes(boxes, params, (rows, cols))
    assert np.abs(from_masks - expected).max() <= 1.0, (params, from_masks, expected)
    # the image moved with its masks
    for channel, mask in ((0, out_masks[0]), (2, out_masks[1])):
        painted = out_image[channel] >= 0.5
        iou = (painted & mask).sum() / (painted | mask).sum()
        assert iou > 0.95
    # a flip alone is exact
    flipped_image, flipped = augment(image, masks, AugmentParams(flip=True))
    assert np.array_equal(flipped, masks[:, ::-1, :])
    assert np.array_equal(flipped_image, image[:, ::-1, :])


def test_prepare_sample_shares_the_inference_geometry(parts) -> None:
    sample = next(s for s in parts.train if s.label != "normal")
    prepared = prepare_sample(sample, SMALL_INPUT)
    assert prepared.image.dtype == np.uint8 and prepared.image.shape[0] == 3
    network = prepared.image.shape[1:]
    assert min(network) == 128 or max(network) == 256
    assert prepared.masks.shape == (len(prepared.labels), *network)
    assert set(prepared.labels.tolist()) <= {1, 2} and len(prepared.labels) >= 1
    image, target = prepared.tensors(AugmentParams(flip=True, shear_rad=-0.05, scale=0.95))
    assert image.dtype == torch.float32 and float(image.max()) <= 1.0
    assert target["boxes"].shape == (len(target["labels"]), 4)
    assert target["masks"].dtype == torch.uint8
    loaded = sample.load()
    from cem_node.pipeline.preprocess import preprocess_pair

    geometry = preprocess_pair(
        loaded.low_energy, loaded.recombined, SMALL_INPUT, sample.laterality
    ).geometry
    assert geometry.network_shape == tuple(network)
    assert resize_shape(geometry.crop_shape, SMALL_INPUT) == tuple(network)
    assert np.array_equal(prepared.masks[0], geometry.mask_to_network(loaded.lesions[0].mask))


def test_images_without_lesions_give_empty_targets() -> None:
    empty = PreparedImage(
        key="normal",
        image=np.full((3, 128, 100), 80, np.uint8),
        masks=np.zeros((0, 128, 100), bool),
        labels=np.zeros(0, np.int64),
    )
    image, target = empty.tensors(AugmentParams(flip=True, shear_rad=0.05, scale=1.05))
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 128, 100)
    torch.manual_seed(0)
    model = build_detector(TINY, SMALL_INPUT)
    model.train()
    losses = model([image], [target])
    assert all(torch.isfinite(v) for v in losses.values())


# --- training ---------------------------------------------------------------------------------


def test_tiny_training_run_resume_and_determinism(parts, tmp_path: Path) -> None:
    first = train_detector(
        parts.train, parts.val, TINY, SMALL_INPUT, _config(2), tmp_path / "a", progress=False
    )
    assert first.epochs_completed == 2 and first.selected_by == "val_loss"
    assert first.train_images == len(parts.train) and first.val_images == len(parts.val)
    history = json.loads((tmp_path / "a" / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    for entry in history["epochs"]:
        assert entry["steps"] == 2 and np.isfinite(entry["train_loss"])
        assert np.isfinite(entry["val_loss"]) and set(entry["val_losses"]) >= {"loss_mask", "loss"}
    assert history["best_epoch"] == first.best_epoch
    assert first.best_loss == min(e["val_loss"] for e in history["epochs"])

    # the best weights load with the pipeline's loader and detect
    model = load_detector(first.best_weights, TINY, SMALL_INPUT)
    prepared = prepare_sample(parts.val[0], SMALL_INPUT)
    found = detect(model, [prepared.image.astype(np.float32) / 255], PostprocessParams())
    assert len(found) == 1

    # same seed, same weights (CPU)
    second = train_detector(
        parts.train, parts.val, TINY, SMALL_INPUT, _config(2), tmp_path / "b", progress=False
    )
    a, b = load_file(str(first.checkpoint)), load_file(str(second.checkpoint))
    model_keys = [k for k in a if k.startswith("model/")]
    assert all(torch.equal(a[k], b[k]) for k in model_keys)
    assert [e["val_loss"] for e in first.history] == [e["val_loss"] for e in second.history]

    # 1 epoch, then resume to 2: the same as 2 epochs in one go
    out = tmp_path / "c"
    one = train_detector(parts.train, parts.val, TINY, SMALL_INPUT, _config(1), out, False)
    assert one.epochs_completed == 1 and (out / "best.safetensors").is_file()
    resumed = train_detector(
        parts.train, parts.val, TINY, SMALL_INPUT, _config(2), out, False, resume=True
    )
    assert resumed.resumed_from == 1 and resumed.epochs_completed == 2
    assert [e["epoch"] for e in resumed.history] == [1, 2]
    c = load_file(str(resumed.checkpoint))
    assert all(torch.equal(a[k], c[k]) for k in model_keys)

    # a checkpoint holds tensors and JSON only, and refuses another architecture
    record = json.loads((out / "last.json").read_text())
    assert record["epoch"] == 2 and record["detector"] == TINY.model_dump(mode="json")
    wider = TINY.model_copy(update={"fpn_channels": 48})
    with pytest.raises(TrainingError, match="other detector settings"):
        train_detector(
            parts.train, parts.val, wider, SMALL_INPUT, _config(3), out, False, resume=True
        )


def test_pretrained_weights(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_detector(TINY, SMALL_INPUT)
    full = tmp_path / "detector.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(full))
    torch.manual_seed(2)
    target = build_detector(TINY, SMALL_INPUT)
    loaded, total = load_pretrained_weights(target, full)
    assert loaded == total == len(source.state_dict())
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in source.state_dict().items())

    # a classification backbone's state_dict (torchvision naming, "features." prefix)
    from torchvision.models import mobilenet_v3_large

    torch.manual_seed(3)
    backbone = mobilenet_v3_large(weights=None)
    pth = tmp_path / "mobilenet.pth"
    torch.save({"state_dict": backbone.state_dict()}, pth)
    fresh = build_detector(TINY, SMALL_INPUT)
    loaded, total = load_pretrained_weights(fresh, pth)
    assert loaded >= 0.9 * len([k for k in backbone.state_dict() if k.startswith("features.")])
    assert torch.equal(
        fresh.state_dict()["backbone.body.0.0.weight"], backbone.state_dict()["features.0.0.weight"]
    )

    junk = tmp_path / "junk.safetensors"
    save_file({"nothing.like.it": torch.zeros(3)}, str(junk))
    with pytest.raises(TrainingError, match=r"no tensor of junk\.safetensors fits"):
        load_pretrained_weights(fresh, junk)
    with pytest.raises(TrainingError, match="not found"):
        load_pretrained_weights(fresh, tmp_path / "absent.pth")


def test_a_larger_mask_roi_gives_finer_masks_and_trains() -> None:
    # 28 x 28 masks are coarse for 10 px lesions: mask_roi_size 28 gives 56 x 56 ones, with the
    # same weights (the mask head's convolutions do not depend on the RoI size)
    fine = TINY.model_copy(update={"mask_roi_size": 28})
    torch.manual_seed(0)
    coarse_model, fine_model = build_detector(TINY, SMALL_INPUT), build_detector(fine, SMALL_INPUT)
    assert coarse_model.roi_heads.mask_roi_pool.output_size == (14, 14)
    assert fine_model.roi_heads.mask_roi_pool.output_size == (28, 28)
    fine_model.load_state_dict(coarse_model.state_dict())
    features = torch.rand(2, TINY.fpn_channels, 28, 28)
    assert coarse_model.roi_heads.mask_predictor(
        coarse_model.roi_heads.mask_head(features[:, :, :14, :14])
    ).shape[-2:] == (28, 28)
    assert fine_model.roi_heads.mask_predictor(fine_model.roi_heads.mask_head(features)).shape[
        -2:
    ] == (56, 56)
    # a training step: the mask loss projects the truth onto the 56 x 56 grid
    fine_model.train()
    image = torch.rand(3, 128, 160)
    mask = torch.zeros(1, 128, 160, dtype=torch.uint8)
    mask[0, 40:60, 50:75] = 1
    target = {"boxes": torch.tensor([[50.0, 40, 75, 60]]), "labels": torch.tensor([2])}
    losses = fine_model([image], [{**target, "masks": mask}])
    assert torch.isfinite(losses["loss_mask"]) and losses["loss_mask"] > 0
    with pytest.raises(ValueError):
        DetectorConfig(backbone="mobilenet_v3_lite", mask_roi_size=40)
    with pytest.raises(DetectorError, match="mask_roi_size 14"):
        build_detector(DetectorConfig(backbone="resnet50_fpn_v2", mask_roi_size=28), SMALL_INPUT)


# --- the command ------------------------------------------------------------------------------


def test_cli_train_detector_records_the_mask_roi_and_the_augmentation(
    cache: Path, tmp_path: Path, parts
) -> None:
    from cem_node.cli import app

    out = tmp_path / "run"
    args = [
        "train", "detector", "--dataset", "synthetic:2:0:small", "--out", str(out),
        "--preset", "fast", "--short-side", "128", "--fpn-channels", "32",
        "--box-head-width", "64", "--mask-head-channels", "32", "--mask-roi-size", "20",
        "--rotate-deg", "12", "--intensity-jitter", "0.15", "--val-fraction", "0.5",
        "--max-steps", "1", "--epochs", "1", "--device", "cpu", "--cache-dir", str(cache),
        "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "detector_config.json").read_text())
    detector = DetectorConfig.model_validate(record["detector"])
    assert detector.mask_roi_size == 20
    augment_record = record["training"]["train_config"]["augment"]
    assert (augment_record["rotation_deg"], augment_record["intensity_jitter"]) == (12.0, 0.15)
    model = load_detector(out / "detector.safetensors", detector, SMALL_INPUT)
    assert model.roi_heads.mask_roi_pool.output_size == (20, 20)
    # a resumed run keeps its architecture
    resumed = CliRunner().invoke(
        app, [*args[:-5], "--epochs", "2", "--resume", "--mask-roi-size", "14", *args[-3:]]
    )
    assert resumed.exit_code == 2 and "--mask-roi-size 14 differs" in resumed.output


def test_cli_train_detector(
    cache: Path, tmp_path: Path, parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cem_node.cli import app

    runner = CliRunner()
    out = tmp_path / "run"
    base = [
        "train",
        "detector",
        "--dataset",
        "synthetic:2:0:small",
        "--out",
        str(out),
        "--preset",
        "fast",
        "--short-side",
        "128",
        "--fpn-channels",
        "32",
        "--box-head-width",
        "64",
        "--mask-head-channels",
        "32",
        "--val-fraction",
        "0.5",
        "--max-steps",
        "1",
        "--device",
        "cpu",
        "--cache-dir",
        str(cache),
        "--no-progress",
    ]
    result = runner.invoke(app, [*base, "--epochs", "1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["best_epoch"] == 1 and summary["backbone"] == "mobilenet_v3_lite"
    for name in ("detector.safetensors", "detector_config.json", "history.json", "split.json"):
        assert (out / name).is_file()
    record = json.loads((out / "detector_config.json").read_text())
    detector = DetectorConfig.model_validate(record["detector"])
    preprocess = PreprocessParams.model_validate(record["preprocessing"])
    assert (detector, preprocess.short_side) == (TINY, 128)
    load_detector(out / "detector.safetensors", detector, preprocess)
    split_record = json.loads((out / "split.json").read_text())
    assert not set(split_record["train"]["patients"]) & set(split_record["val"]["patients"])

    again = runner.invoke(app, [*base, "--epochs", "2"])
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(app, [*base, "--epochs", "2", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert len(json.loads((out / "history.json").read_text())["epochs"]) == 2
    # on the finished run, --choose-keep-score only chooses the keep score on the validation
    # images and records it where radiomics training and packing read it
    first_command = json.loads((out / "detector_config.json").read_text())["training"]["command"]
    again_args = [*base, "--epochs", "2", "--resume", "--choose-keep-score"]
    monkeypatch.setattr("sys.argv", ["cem-node", *again_args])  # what the record quotes
    chosen = runner.invoke(app, again_args)
    assert chosen.exit_code == 0, chosen.output
    assert len(json.loads((out / "history.json").read_text())["epochs"]) == 2
    sweep = json.loads((out / "operating_point.json").read_text())
    assert [row["keep_score"] for row in sweep["rows"]] == list(KEEP_SCORE_GRID)
    assert {row["short_side"] for row in sweep["rows"]} == {128}
    assert sweep["rule"] == "sensitivity"
    assert (sweep["keep_score"], sweep["short_side"]) == _sensitivity_first(sweep["rows"])
    record = json.loads((out / "detector_config.json").read_text())
    assert record["postprocessing"] == {"keep_score": sweep["keep_score"]}
    assert record["result"]["keep_score"] == sweep["keep_score"]
    # a resumed run is still described by the command that started it
    assert record["training"]["command"] == first_command
    assert record["training"]["resumed_with"] == " ".join(["cem-node", *again_args])
    assert detector_postprocess(record).keep_score == sweep["keep_score"]
    with pytest.raises(RadiomicsTrainingError, match="invalid postprocessing"):
        detector_postprocess({"postprocessing": {"keep_score": 2.0}})

    # the input size too, by the standalone command: inference may use another short side
    # than training; the trained one stays where --resume reads it
    bad_sides = runner.invoke(
        app, ["train", "operating-point", "--detector", str(out), "--choose-short-side", "9,x"]
    )
    assert bad_sides.exit_code == 2 and "comma-separated" in bad_sides.output
    op_args = [
        "train",
        "operating-point",
        "--detector",
        str(out),
        "--choose-short-side",
        "96,128,160",
        "--device",
        "cpu",
        "--cache-dir",
        str(cache),
        "--no-progress",
        "--json",
    ]
    monkeypatch.setattr("sys.argv", ["cem-node", *op_args])
    chosen = runner.invoke(app, op_args)
    assert chosen.exit_code == 0, chosen.output
    picked = json.loads(chosen.stdout[chosen.stdout.index("{") :])
    sweep = json.loads((out / "operating_point.json").read_text())
    assert sweep["short_sides"] == [96, 128, 160] and sweep["trained_short_side"] == 128
    assert len(sweep["rows"]) == 3 * len(KEEP_SCORE_GRID)
    assert (picked["keep_score"], picked["short_side"]) == _sensitivity_first(sweep["rows"])
    record = json.loads((out / "detector_config.json").read_text())
    assert record["preprocessing"]["short_side"] == picked["short_side"]
    assert record["preprocessing"]["max_long_side"] == sweep["max_long_side"]
    assert record["training"]["preprocessing"]["short_side"] == 128
    assert record["result"]["trained_short_side"] == 128
    assert record["postprocessing"] == {"keep_score": picked["keep_score"]}
    assert record["training"]["operating_point_command"].startswith("cem-node train operating")
    # the training's own options still resume it
    monkeypatch.setattr("sys.argv", ["cem-node", *base, "--epochs", "2", "--resume"])
    again = runner.invoke(app, [*base, "--epochs", "2", "--resume", "--choose-short-side", "128"])
    assert again.exit_code == 0, again.output
    record = json.loads((out / "detector_config.json").read_text())
    assert record["preprocessing"]["short_side"] == 128
    assert record["result"]["short_sides_tried"] == [128]
    no_dir = runner.invoke(app, ["train", "operating-point", "--detector", str(tmp_path)])
    assert no_dir.exit_code == 2 and "detector_config.json: missing" in no_dir.output

    other = ["--out", str(tmp_path / "other"), "--epochs", "1"]
    bad = runner.invoke(app, [*base[:3], "synthetic:zero", *base[4:], *other])
    assert bad.exit_code == 2 and "must be a whole number" in bad.output
    spec = f"manifest:{tmp_path / 'none.csv'}"
    missing = runner.invoke(app, [*base[:3], spec, *base[4:], *other])
    assert missing.exit_code == 2 and "none.csv" in missing.output
    unmined = runner.invoke(app, [*base, *other, "--hard-example-weight", "3"])
    assert unmined.exit_code == 2 and "--pretrained" in unmined.output


def _sensitivity_first(rows: list[dict]) -> tuple[float, int]:
    """The (keep score, short side) that the default operating rule should pick from rows."""
    most = max(row["images_all_found"] for row in rows)
    best = max(round(row["mean_dice"], 3) for row in rows if row["images_all_found"] == most)
    return min(
        (row["keep_score"], row["short_side"])
        for row in rows
        if row["images_all_found"] == most and round(row["mean_dice"], 3) == best
    )


# --- hard-example mining ----------------------------------------------------------------------


def test_epoch_order_unweighted_is_the_seeded_permutation() -> None:
    expected = np.random.default_rng([5, 2]).permutation(10)
    assert np.array_equal(epoch_order(10, 5, 2), expected)
    assert np.array_equal(epoch_order(10, 5, 2, np.full(10, 3.0)), expected)


def test_epoch_order_draws_hard_images_as_often_as_weighted() -> None:
    weights = np.ones(10)
    weights[[2, 7]] = 4.0  # 2 hard images: each drawn with probability 4/16 per draw
    counts = np.zeros(10)
    for epoch in range(400):
        items = epoch_order(10, 1, epoch, weights)
        assert len(items) == 10 and len(set(items.tolist())) == 10  # repeats are told apart
        indices, draws = items % 10, items // 10
        for index in set(indices.tolist()):  # the k-th repeat of an image is draw k
            assert sorted(draws[indices == index].tolist()) == list(range((indices == index).sum()))
        counts += np.bincount(indices, minlength=10)
    per_draw = counts / counts.sum()
    assert per_draw[[2, 7]] == pytest.approx([0.25, 0.25], abs=0.02)
    assert per_draw[[0, 1, 3]] == pytest.approx([1 / 16] * 3, abs=0.01)
    assert np.array_equal(epoch_order(10, 1, 3, weights), epoch_order(10, 1, 3, weights))
    with pytest.raises(ValueError, match="positive"):
        epoch_order(3, 0, 0, np.array([1.0, 0.0, 2.0]))


class _FixedDetections(torch.nn.Module):
    """Stands in for the detector in eval mode: the same detections for every image, in the
    output format of :class:`cem_node.pipeline.detector._CemRoIHeads` (score, then the
    class probabilities)."""

    def __init__(self, scores: list[float], masks: np.ndarray):
        super().__init__()
        self.roi_heads = torch.nn.Module()
        self.scores = torch.tensor([[s, 1 - s, 0.0, s] for s in scores])
        self.masks = torch.from_numpy(masks.astype(np.float32))[:, None]
        self.boxes = torch.from_numpy(boxes_from_masks(masks))

    def forward(self, images):
        assert not self.training
        labels = torch.full((len(self.scores),), 2)
        out = {"boxes": self.boxes, "scores": self.scores, "labels": labels, "masks": self.masks}
        return [out for _ in images]


def _lesion(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((32, 32), dtype=bool)
    mask[rows, cols] = True
    return mask


def test_find_hard_examples_uses_the_hit_rule_and_the_keep_score() -> None:
    upper, lower = _lesion(slice(2, 10), slice(2, 10)), _lesion(slice(20, 30), slice(20, 30))
    # a confident detection on the upper lesion; a weak one (below the keep score) on the lower
    model = _FixedDetections([0.9, 0.05], np.stack([upper, lower]))
    image = np.zeros((3, 32, 32), dtype=np.uint8)

    def prepared(key: str, *masks: np.ndarray) -> PreparedImage:
        stacked = np.stack(masks) if masks else np.zeros((0, 32, 32), dtype=bool)
        return PreparedImage(key, image, stacked, np.ones(len(masks), dtype=np.int64))

    # IoU of the upper detection with this lesion: 64 / 100 (hit); with a far lesion: 0
    shifted = _lesion(slice(2, 10), slice(4, 12))
    images = [
        prepared("found", upper),
        prepared("found-shifted", shifted),
        prepared("weak-only", lower),
        prepared("one-of-two-missed", upper, lower),
        prepared("no-lesion"),
    ]
    model.train()
    cpu = torch.device("cpu")
    post = PostprocessParams(score_threshold=0.01, keep_score=0.1)
    hard = find_hard_examples(model, images, post, cpu)
    assert hard == ["weak-only", "one-of-two-missed"]
    assert model.training  # the mode is restored
    lenient = post.model_copy(update={"keep_score": 0.01})
    assert find_hard_examples(model, images, lenient, cpu) == []
    # a detection whose mask overlaps a lesion with IoU < 0.1 does not find it
    sliver = _lesion(slice(20, 30), slice(29, 30))  # IoU with the lower mask: 10 / 100
    assert find_hard_examples(model, [prepared("sliver", sliver)], lenient, cpu) == []
    thinner = _lesion(slice(20, 29), slice(29, 30))  # 9 / 100 < 0.1
    assert find_hard_examples(model, [prepared("thin", thinner)], lenient, cpu) == ["thin"]


def test_hard_example_fine_tuning_run(parts, tmp_path: Path) -> None:
    start = train_detector(
        parts.train, parts.val, TINY, SMALL_INPUT, _config(1), tmp_path / "start", False
    )
    with pytest.raises(TrainingError, match="needs a starting detector"):
        train_detector(
            parts.train,
            parts.val,
            TINY,
            SMALL_INPUT,
            _config(1, hard_example_weight=3.0),
            tmp_path / "no-start",
            False,
        )
    tuned_config = _config(1, hard_example_weight=3.0, pretrained=start.best_weights)
    out = tmp_path / "tuned"
    tuned = train_detector(parts.train, parts.val, TINY, SMALL_INPUT, tuned_config, out, False)
    record = json.loads((out / "hard_examples.json").read_text())
    assert record["weight"] == 3.0 and record["train_images"] == len(parts.train)
    assert tuned.hard_examples == len(record["hard"]) and tuned.pretrained is not None
    # the hard list is what the starting weights miss, and a resumed run keeps it
    model = load_detector(start.best_weights, TINY, SMALL_INPUT)
    images = [prepare_sample(s, SMALL_INPUT) for s in parts.train]
    expected = find_hard_examples(model, images, PostprocessParams(), torch.device("cpu"))
    assert record["hard"] == expected
    resumed = train_detector(
        parts.train,
        parts.val,
        TINY,
        SMALL_INPUT,
        _config(2, hard_example_weight=3.0, pretrained=start.best_weights),
        out,
        False,
        resume=True,
    )
    assert resumed.epochs_completed == 2 and resumed.hard_examples == len(expected)


# --- the keep score, chosen on validation images ----------------------------------------------


def test_keep_score_sweep_counts_hits_false_positives_and_dice() -> None:
    small = _lesion(slice(2, 10), slice(2, 10))  # 64 px
    large = _lesion(slice(20, 30), slice(20, 30))  # 100 px
    speck = _lesion(slice(0, 4), slice(28, 32))  # 16 px
    lesions = [[small], [large], []]
    detections = [
        [(0.9, small), (0.3, large)],  # the lesion, and a false positive elsewhere
        [(0.2, large)],  # a weak hit
        [(0.5, speck), (0.4, speck)],  # a lesion-free image: false positives
    ]
    rows = keep_score_sweep(lesions, detections, (0.1, 0.25, 0.4))
    assert [r.keep_score for r in rows] == [0.1, 0.25, 0.4]
    assert [r.images_all_found for r in rows] == [2, 1, 1]
    assert [r.false_positives for r in rows] == [3, 3, 1]  # a score equal to the cut is dropped
    assert all((r.images, r.images_with_lesion) == (3, 2) for r in rows)
    with_false_positive = 2 * 64 / (64 + 164)
    assert [r.mean_dice for r in rows] == pytest.approx(
        [(with_false_positive + 1) / 2, with_false_positive / 2, 0.5]
    )
    assert rows[0].image_sensitivity == 1.0 and rows[2].false_positives_per_image == 1 / 3
    assert choose_operating_point(rows).keep_score == 0.1
    with pytest.raises(ValueError, match="no image with a lesion"):
        keep_score_sweep([[]], [[(0.5, speck)]])
    with pytest.raises(ValueError, match="2 lesion lists for 1"):
        keep_score_sweep(lesions[:2], detections[:1])


def test_choose_operating_point_by_dice_prefers_the_lower_score_then_the_smaller_side() -> None:
    def row(keep: float, dice: float, side: int | None = None) -> KeepScoreRow:
        return KeepScoreRow(keep, 10, 5, 5, 0, dice, side)

    def by_dice(rows: list[KeepScoreRow]) -> KeepScoreRow:
        return choose_operating_point(rows, "dice")

    assert by_dice([row(0.1, 0.80), row(0.4, 0.85), row(0.5, 0.85)]).keep_score == 0.4
    assert by_dice([row(0.2, 0.8501), row(0.3, 0.8503)]).keep_score == 0.2
    sides = [row(0.3, 0.90, 384), row(0.3, 0.9004, 320), row(0.2, 0.88, 512), row(0.4, 0.90, 320)]
    assert (by_dice(sides).short_side, by_dice(sides).keep_score) == (320, 0.3)
    assert by_dice([row(0.3, 0.87, 320), row(0.4, 0.91, 512), row(0.2, 0.9, 448)]).short_side == 512
    with pytest.raises(ValueError, match="no operating point"):
        by_dice([])
    with pytest.raises(ValueError, match="unknown operating rule 'f1'"):
        choose_operating_point([row(0.1, 0.8)], "f1")  # type: ignore[arg-type]


def test_choose_operating_point_by_sensitivity_finds_most_then_best_dice() -> None:
    def row(keep: float, found: int, dice: float, side: int = 320) -> KeepScoreRow:
        return KeepScoreRow(keep, 20, 10, found, 0, dice, side)

    # the demo detector's shape: a higher keep score has the best Dice but misses one more
    rows = [row(0.1, 10, 0.86), row(0.3, 10, 0.91, 512), row(0.55, 9, 0.92, 512)]
    assert choose_operating_point(rows).keep_score == 0.3
    assert choose_operating_point(rows, "dice").keep_score == 0.55
    # among equally sensitive points Dice decides, then the lower score, then the smaller side
    tied = [row(0.2, 10, 0.9001, 448), row(0.2, 10, 0.9003, 384), row(0.3, 10, 0.90, 320)]
    assert choose_operating_point(tied).short_side == 384


def test_scaled_preprocess_keeps_the_aspect_cap() -> None:
    trained = PreprocessParams(short_side=320, max_long_side=533)
    assert scaled_preprocess(trained, 512).model_dump() == {
        **trained.model_dump(),
        "short_side": 512,
        "max_long_side": 853,
    }
    assert scaled_preprocess(trained, 320) == trained
    square = PreprocessParams(short_side=100, max_long_side=100)
    assert scaled_preprocess(square, 64).max_long_side == 64
