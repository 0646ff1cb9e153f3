"""Flip test-time augmentation of the detector (PostprocessParams.flip_tta)."""

from __future__ import annotations

import numpy as np
import torch

from cem_node.contracts.params import DetectorConfig, PostprocessParams, PreprocessParams
from cem_node.pipeline.detector import _merge_flips, _mirrored, build_detector, detect


def _out(boxes: list[list[float]], scores: list[list[float]], masks: np.ndarray) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.full((len(boxes),), 2),
        "masks": torch.from_numpy(masks).float(),
    }


def test_mirrored_detections_map_back_onto_the_image() -> None:
    mask = np.zeros((1, 1, 4, 10), np.float32)
    mask[0, 0, :, 7:9] = 1.0  # columns 7-8 of the mirror are columns 1-2 of the image
    back = _mirrored(_out([[7.0, 0.0, 9.0, 4.0]], [[0.9, 0.1, 0.8]], mask), width=10)
    assert back["boxes"].tolist() == [[1.0, 0.0, 3.0, 4.0]]
    assert back["masks"][0, 0, 0].nonzero().flatten().tolist() == [1, 2]


def test_a_lesion_seen_twice_is_averaged_and_one_seen_once_is_halved() -> None:
    masks = np.zeros((2, 1, 8, 8), np.float32)
    masks[0, 0, 2:4, 2:4] = 0.8
    masks[1, 0, 5:7, 5:7] = 0.9
    plain = _out([[2, 2, 4, 4], [5, 5, 7, 7]], [[0.8, 0.2, 0.6], [0.6, 0.3, 0.3]], masks)
    other = np.zeros((1, 1, 8, 8), np.float32)
    other[0, 0, 2:4, 2:5] = 0.4
    mirror = _out([[2, 2, 4.2, 4]], [[0.4, 0.1, 0.3]], other)
    merged = _merge_flips(plain, mirror, iou=0.5)
    # both passes' detections, the agnostic NMS keeps one per lesion
    assert merged["boxes"].shape[0] == 3
    scores = merged["scores"][:, 0].tolist()
    assert np.allclose(scores, [0.6, 0.3, 0.6])  # (0.8 + 0.4) / 2, 0.6 / 2, (0.4 + 0.8) / 2
    assert np.isclose(float(merged["masks"][0, 0, 2, 2]), 0.6)
    # a lesion seen once keeps its mask: only its score is halved
    assert np.isclose(float(merged["masks"][1, 0, 5, 5]), 0.9)


def test_detect_with_flip_tta_runs_and_stays_within_the_limits() -> None:
    torch.manual_seed(0)
    model = build_detector(
        DetectorConfig(backbone="mobilenet_v3_lite"), PreprocessParams(short_side=128)
    )
    image = np.random.default_rng(0).random((3, 128, 96), dtype=np.float32)
    post = PostprocessParams(score_threshold=0.0, keep_score=0.0, max_lesions=3, flip_tta=True)
    (found,) = detect(model, [image], post)
    assert len(found) <= 3
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    assert all(d.mask_probability.shape == (128, 96) for d in found)
