"""Hard-example mining for a fine-tuning run: the training images on which the starting
detector misses a lesion (the evaluation's hit rule), drawn more often while training.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cem_node.contracts.params import PostprocessParams
from cem_node.training.detector_errors import TrainingError
from cem_node.training.detector_images import PreparedImage
from cem_node.training.metrics import iou_matrix
from cem_node.training.operating_point import HIT_IOU, all_found, detections_per_image
from cem_node.training.run_files import HARD_EXAMPLES

if TYPE_CHECKING:
    from cem_node.training.detector_training import TrainConfig

__all__ = ["find_hard_examples", "mine_hard_examples"]

# the training run's logger: its log lines read as before this module was split out
log = logging.getLogger("cem_node.training.detector_training")


def find_hard_examples(
    model: nn.Module,
    images: Sequence[PreparedImage],
    postprocess: PostprocessParams,
    device: torch.device,
    advance: Callable[[int], None] = lambda done: None,
) -> list[str]:
    """The keys of the images on which ``model`` misses at least one lesion.

    The model detects as inference does (:func:`~cem_node.pipeline.detector.detect`
    with ``postprocess``: its score threshold, class-agnostic NMS, keep score);
    a lesion is found when a detection's mask (thresholded at the mask
    threshold) overlaps it with IoU >= 0.1, the evaluation's hit rule. The
    images are the un-augmented network images; an image without lesions is
    never hard. ``advance(n)`` is called after each batch of ``n`` images.
    """
    found = detections_per_image(model, images, postprocess, device, advance)
    return [
        image.key
        for image, detections in zip(images, found, strict=True)
        if not all_found(iou_matrix([mask for _, mask in detections], image.masks))
    ]


def mine_hard_examples(
    out_dir: Path,
    model: nn.Module,
    train_images: list[PreparedImage],
    cfg: TrainConfig,
    postprocess: PostprocessParams | None,
    device: torch.device,
    resumed: bool,
    bar: Any,
) -> list[str]:
    """Mine the hard training images with the starting weights, once per run (kept for resume)."""
    path = out_dir / HARD_EXAMPLES
    if resumed:
        if not path.is_file():
            raise TrainingError(f"{path} is missing: cannot resume a hard-example run")
        return list(json.loads(path.read_text())["hard"])
    if cfg.pretrained is None:
        raise TrainingError(
            "hard-example weighting needs a starting detector: give pretrained weights "
            "(a trained detector's best.safetensors) to mine its misses"
        )
    post = postprocess or PostprocessParams()
    task = bar.add_task("finding hard examples", total=len(train_images), info="")
    hard = find_hard_examples(
        model, train_images, post, device, lambda done: bar.advance(task, done)
    )
    bar.remove_task(task)
    document = {
        "rule": (
            f"a lesion without a detection scored above {post.keep_score} whose mask has IoU >= "
            f"{HIT_IOU} with it, for the starting weights {cfg.pretrained}"
        ),
        "weight": cfg.hard_example_weight,
        "train_images": len(train_images),
        "hard": hard,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    log.info("hard examples: %d of %d training images", len(hard), len(train_images))
    return hard
