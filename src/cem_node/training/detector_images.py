"""The detector's training images: samples preprocessed as inference does, and their batches.

:func:`prepare_sample` gives the network image and every lesion mask through
``geometry.mask_to_network``, so training and inference share one crop and
one resize rule; :class:`ImageSet` serves them (augmented for training) to
the training loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cem_node.contracts.params import PreprocessParams
from cem_node.pipeline.preprocess import PreprocessError, preprocess_pair
from cem_node.training.datasets import Sample
from cem_node.training.detector_augment import (
    AugmentConfig,
    AugmentParams,
    augment,
    boxes_from_masks,
    sample_augment_params,
)

__all__ = [
    "LABEL_IDS",
    "ImageSet",
    "PreparedImage",
    "batch_iterator",
    "collate",
    "prepare_all",
    "prepare_sample",
]

LABEL_IDS = {"benign": 1, "malignant": 2}


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """One sample, preprocessed: the network image (uint8, 3 x H x W) and its lesion masks."""

    key: str
    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray

    def tensors(self, params: AugmentParams | None = None) -> tuple[torch.Tensor, dict]:
        """The network input (float32 in [0, 1]) and its torchvision target, augmented."""
        image = self.image.astype(np.float32) / np.float32(255.0)
        masks, labels = self.masks, self.labels
        if params is not None:
            image, masks = augment(image, masks, params)
            keep = masks.any(axis=(1, 2))
            masks, labels = masks[keep], labels[keep]
        rows, cols = image.shape[1:]
        target = {
            "boxes": torch.from_numpy(boxes_from_masks(masks)).reshape(-1, 4),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "masks": torch.from_numpy(masks.astype(np.uint8)).reshape(-1, rows, cols),
        }
        return torch.from_numpy(np.ascontiguousarray(image)), target


def prepare_sample(sample: Sample, preprocess: PreprocessParams) -> PreparedImage:
    """Preprocess a sample as inference does and bring its lesion masks to the network image.

    Lesions whose mask leaves nothing on the network image (outside the
    breast crop, or thinner than a pixel after the resize) are dropped.

    Raises
    ------
    DatasetError
        When the sample's files cannot be read or their shapes do not match.
    PreprocessError
        When the pair cannot be preprocessed (no breast found ...).
    """
    loaded = sample.load()
    pair = preprocess_pair(loaded.low_energy, loaded.recombined, preprocess, sample.laterality)
    masks, labels = [], []
    for lesion in loaded.lesions:
        mask = pair.geometry.mask_to_network(lesion.mask)
        if mask.any():
            masks.append(mask)
            labels.append(LABEL_IDS[lesion.label])
    rows, cols = pair.geometry.network_shape
    image = np.clip(np.rint(pair.image * 255.0), 0, 255).astype(np.uint8)
    return PreparedImage(
        key=sample.key,
        image=image,
        masks=np.stack(masks) if masks else np.zeros((0, rows, cols), dtype=bool),
        labels=np.asarray(labels, dtype=np.int64),
    )


class ImageSet(torch.utils.data.Dataset):
    """The prepared images of one part; training items augmented from (seed, epoch, index)."""

    def __init__(
        self, images: list[PreparedImage], augment_config: AugmentConfig | None, seed: int
    ):
        self.images = images
        self.augment_config = augment_config
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, dict]:
        # item = index + draw * len: the draw-th repeat of an image within an epoch (hard-example
        # sampling) gets its own augmentation; the first keeps the stream of unweighted runs
        draw, index = divmod(item, len(self.images))
        params = None
        if self.augment_config is not None:
            key = [self.seed, self.epoch, index] + ([draw] if draw else [])
            channels = self.images[index].image.shape[0]
            params = sample_augment_params(
                np.random.default_rng(key), self.augment_config, channels
            )
        return self.images[index].tensors(params)


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list, list]:
    """A batch of (image, target) pairs as the lists torchvision's detector takes."""
    return [b[0] for b in batch], [b[1] for b in batch]


def batch_iterator(
    dataset: ImageSet, batches: list[list[int]], num_workers: int
) -> Any:  # an iterable of (images, targets)
    """The (images, targets) of each batch of item indices, in order (``num_workers``
    DataLoader processes, or none)."""
    if num_workers == 0:
        return (collate([dataset[i] for i in batch]) for batch in batches)
    # its own generator: the workers' seeds must not draw from torch's global generator,
    # whose stream the proposal sampling uses (runs with and without workers stay equal)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(dataset.seed),
    )


def prepare_all(
    samples: Sequence[Sample],
    preprocess: PreprocessParams,
    part: str,
    skipped: list[str],
    advance: Callable[[], None],
) -> list[PreparedImage]:
    """The usable images of one part (``part``: its name in the reasons added to ``skipped``):
    a pair that cannot be preprocessed, or a lesion image whose lesions all vanish on the
    network image, is skipped; ``advance()`` is called once per sample."""
    prepared = []
    for sample in samples:
        try:
            image = prepare_sample(sample, preprocess)
        except PreprocessError as exc:
            skipped.append(f"{part}: {sample.key}: cannot preprocess: {exc}")
            advance()
            continue
        if sample.label != "normal" and len(image.labels) == 0:
            skipped.append(
                f"{part}: {sample.key}: labelled {sample.label} but no lesion mask "
                "on the network image"
            )
        else:
            prepared.append(image)
        advance()
    return prepared
