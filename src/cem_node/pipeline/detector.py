"""The lesion detector: a torchvision Mask R-CNN with classes benign and malignant.

Three backbones (:data:`~cem_node.contracts.params.BackboneName`): the paper's
ResNet-101-FPN, torchvision's ResNet-50-FPN-v2, and ``mobilenet_v3_lite``, a
MobileNetV3-Large with a narrow FPN and narrow heads, small enough for a demo
bundle and quick on a CPU.

Post-processing follows the paper: per-class score > 0.05 and NMS 0.5
(inside torchvision's RoI heads), then a class-agnostic NMS keeping at most
5 boxes, then score > 0.1. The probability of malignancy of a detection is
the softmax of the two lesion classes at its proposal, renormalised without
background: P(malignant) = p_malignant / (p_benign + p_malignant).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from torchvision.models import mobilenet_v3_large, resnet101
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import MultiScaleRoIAlign, batched_nms, box_iou, nms
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from cem_node.contracts.params import (
    CLASS_NAMES,
    DetectorConfig,
    PostprocessParams,
    PreprocessParams,
)

__all__ = [
    "Detection",
    "DetectorError",
    "build_detector",
    "detect",
    "load_detector",
    "save_detector_weights",
    "select_device",
]

log = logging.getLogger(__name__)


class DetectorError(RuntimeError):
    """The detector cannot be built or loaded (weights do not match the architecture ...)."""


@dataclass(frozen=True, slots=True)
class Detection:
    """One detected lesion, in the network image's pixel coordinates."""

    box: tuple[float, float, float, float]
    """x0, y0, x1, y1 (box edges)."""
    score: float
    """The detector's score of its class (the paper's score)."""
    label: str
    """``benign`` or ``malignant``: the detector's class."""
    p_benign: float
    p_malignant: float
    mask_probability: np.ndarray
    """Mask probability (float32, the network image's shape), pasted into the box."""

    @property
    def dl_probability(self) -> float:
        """P(malignant) among the two lesion classes."""
        total = self.p_benign + self.p_malignant
        return 0.5 if total <= 0 else self.p_malignant / total


class _CemRoIHeads(RoIHeads):
    """torchvision's RoI heads, keeping each detection's class probabilities.

    torchvision returns only the winning class's score. We need both lesion
    classes' softmax scores at the detection's proposal, so this override
    returns, in place of the scores, a (N, 1 + C) tensor: the score followed
    by the class probabilities. ``RoIHeads.forward`` and the transform's
    postprocess pass the scores through untouched; :func:`detect` splits them.
    """

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        device = class_logits.device
        num_classes = class_logits.shape[-1]
        boxes_per_image = [p.shape[0] for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals)
        pred_scores = F.softmax(class_logits, -1)

        all_boxes, all_scores, all_labels = [], [], []
        for boxes, probs, image_shape in zip(
            pred_boxes.split(boxes_per_image, 0),
            pred_scores.split(boxes_per_image, 0),
            image_shapes,
            strict=True,
        ):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            n = probs.shape[0]
            labels = torch.arange(num_classes, device=device).view(1, -1).expand(n, -1)
            rows = torch.arange(n, device=device).view(-1, 1).expand(n, num_classes)
            # one candidate per (proposal, lesion class), background dropped
            boxes = boxes[:, 1:].reshape(-1, 4)
            scores = probs[:, 1:].reshape(-1)
            labels = labels[:, 1:].reshape(-1)
            rows = rows[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels, rows = boxes[keep], scores[keep], labels[keep], rows[keep]
            keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels, rows = boxes[keep], scores[keep], labels[keep], rows[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            boxes, scores, labels, rows = boxes[keep], scores[keep], labels[keep], rows[keep]
            all_boxes.append(boxes)
            all_scores.append(torch.cat([scores[:, None], probs[rows]], dim=1))
            all_labels.append(labels)
        return all_boxes, all_scores, all_labels


def _mobilenet_lite_backbone(config: DetectorConfig) -> BackboneWithFPN:
    features = mobilenet_v3_large(weights=None).features
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)]
    stages.append(len(features) - 1)
    # the strides 8, 16 and 32 stages: small lesions need the stride-8 map
    returned = [len(stages) - 3, len(stages) - 2, len(stages) - 1]
    return_layers = {str(stages[k]): str(v) for v, k in enumerate(returned)}
    in_channels = [features[stages[k]].out_channels for k in returned]
    return BackboneWithFPN(
        features,
        return_layers,
        in_channels,
        config.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def _resnet101_backbone(config: DetectorConfig) -> BackboneWithFPN:
    # BatchNorm (not torchvision's frozen BN): the detector is trained from scratch here
    body = resnet101(weights=None, norm_layer=nn.BatchNorm2d)
    return_layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
    in_channels = [256, 512, 1024, 2048]
    return BackboneWithFPN(
        body, return_layers, in_channels, config.fpn_channels, extra_blocks=LastLevelMaxPool()
    )


def build_detector(
    config: DetectorConfig,
    preprocess: PreprocessParams,
    postprocess: PostprocessParams | None = None,
) -> MaskRCNN:
    """Build an untrained Mask R-CNN as ``config`` describes.

    The network's own resize uses the preprocessing's resize rule, so the
    images :func:`~cem_node.pipeline.preprocess.preprocess_pair` makes pass
    through at their size.
    """
    post = postprocess or PostprocessParams()
    common = {
        "min_size": preprocess.short_side,
        "max_size": preprocess.max_long_side,
        "box_score_thresh": post.score_threshold,
        "box_nms_thresh": post.nms_iou,
        "box_detections_per_img": 100,
    }
    if config.backbone == "resnet50_fpn_v2":
        fixed = (
            config.fpn_channels,
            config.box_head_width,
            config.mask_head_channels,
            config.mask_roi_size,
        )
        if fixed != (256, 1024, 256, 14):
            raise DetectorError(
                "resnet50_fpn_v2 has torchvision's fixed widths: fpn_channels 256, "
                "box_head_width 1024, mask_head_channels 256, mask_roi_size 14"
            )
        model = maskrcnn_resnet50_fpn_v2(
            weights=None, weights_backbone=None, num_classes=len(CLASS_NAMES), **common
        )
    else:
        if config.backbone == "resnet101_fpn":
            backbone = _resnet101_backbone(config)
        else:
            backbone = _mobilenet_lite_backbone(config)
        names = ["0", "1", "2", "3"] if config.backbone == "resnet101_fpn" else ["0", "1", "2"]
        levels = len(names) + 1  # plus the max-pool level
        sizes = (16, 32, 64, 128, 256, 512)[:levels]
        anchors = AnchorGenerator(
            sizes=tuple((s,) for s in sizes), aspect_ratios=((0.5, 1.0, 2.0),) * levels
        )
        channels = config.fpn_channels
        model = MaskRCNN(
            backbone,
            rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(names, 7, 2),
            box_head=TwoMLPHead(channels * 7 * 7, config.box_head_width),
            box_predictor=FastRCNNPredictor(config.box_head_width, len(CLASS_NAMES)),
            mask_roi_pool=MultiScaleRoIAlign(names, config.mask_roi_size, 2),
            mask_head=MaskRCNNHeads(channels, [config.mask_head_channels] * 4, 1),
            mask_predictor=MaskRCNNPredictor(
                config.mask_head_channels, config.mask_head_channels, len(CLASS_NAMES)
            ),
            **common,
        )
    model.roi_heads.__class__ = _CemRoIHeads
    return model


def select_device(preference: str = "auto") -> tuple[torch.device, str]:
    """The torch device for ``preference`` (auto, cpu, cuda) and a description of it."""
    if preference not in ("auto", "cpu", "cuda"):
        raise DetectorError(f'unknown device {preference!r}: use "auto", "cpu" or "cuda"')
    if preference == "cuda" and not torch.cuda.is_available():
        raise DetectorError('device "cuda" was asked for but no CUDA GPU is available')
    if preference != "cpu" and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
        return device, f"{device} ({torch.cuda.get_device_name(device)})"
    return torch.device("cpu"), f"cpu ({torch.get_num_threads()} threads)"


def save_detector_weights(model: nn.Module, path: Path, dtype: str = "float32") -> None:
    """Write the model's state as safetensors (floating tensors stored as ``dtype``)."""
    from safetensors.torch import save_file

    target = torch.float16 if dtype == "float16" else torch.float32
    state = {
        name: (t.detach().to("cpu", target) if t.is_floating_point() else t.detach().cpu())
        .contiguous()
        .clone()
        for name, t in model.state_dict().items()
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "dtype": dtype})
    tmp.replace(path)


def load_detector(
    weights: Path,
    config: DetectorConfig,
    preprocess: PreprocessParams,
    postprocess: PostprocessParams | None = None,
    device: torch.device | None = None,
) -> MaskRCNN:
    """Build the detector and load its safetensors weights; eval mode, on ``device``.

    Raises
    ------
    DetectorError
        When the file cannot be read or its tensors do not match the architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model = build_detector(config, preprocess, postprocess)
    try:
        state = load_file(str(weights))
    except (OSError, SafetensorError) as exc:
        raise DetectorError(f"cannot read detector weights {weights}: {exc}") from exc
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise DetectorError(
            f"detector weights {weights.name} do not match the {config.backbone} architecture "
            f"of the manifest: {' '.join(first)}"
        ) from exc
    model.eval()
    if device is not None:
        model.to(device)
    return model


def _agnostic_filter(boxes: Tensor, scores: Tensor, post: PostprocessParams) -> Tensor:
    """Class-agnostic NMS keeping at most ``max_lesions``, then the final score cut."""
    keep = nms(boxes, scores, post.agnostic_nms_iou)[: post.max_lesions]
    return keep[scores[keep] > post.keep_score]


def _mirrored(out: dict[str, Tensor], width: int) -> dict[str, Tensor]:
    """Detections on a left-right mirrored image, mapped back onto the image."""
    boxes = out["boxes"].clone()
    boxes[:, 0], boxes[:, 2] = width - out["boxes"][:, 2], width - out["boxes"][:, 0]
    return {**out, "boxes": boxes, "masks": out["masks"].flip(-1)}


def _merge_flips(
    out: dict[str, Tensor], mirrored: dict[str, Tensor], iou: float
) -> dict[str, Tensor]:
    """Average each detection with its counterpart on the mirrored image.

    A detection of either pass whose box overlaps one of the other pass by at
    least ``iou`` is the same lesion: its score, class table and mask become the
    mean of the two. A lesion found on one pass only keeps its mask and half its
    score (the other pass gave it none), so that a finding seen once ranks below
    one seen twice. Both passes' detections are returned; the agnostic NMS that follows
    keeps one per lesion.
    """
    merged: dict[str, list[Tensor]] = {"boxes": [], "scores": [], "labels": [], "masks": []}
    for first, second in ((out, mirrored), (mirrored, out)):
        overlap = box_iou(first["boxes"], second["boxes"])
        for i in range(first["boxes"].shape[0]):
            match = (
                int(overlap[i].argmax())
                if overlap.shape[1] and float(overlap[i].max()) >= iou
                else None
            )
            if match is None:
                scores, mask = first["scores"][i] / 2, first["masks"][i]
            else:
                scores = (first["scores"][i] + second["scores"][match]) / 2
                mask = (first["masks"][i] + second["masks"][match]) / 2
            merged["boxes"].append(first["boxes"][i])
            merged["scores"].append(scores)
            merged["labels"].append(first["labels"][i])
            merged["masks"].append(mask)
    if not merged["boxes"]:
        return out
    return {key: torch.stack(values) for key, values in merged.items()}


@torch.inference_mode()
def detect(
    model: MaskRCNN,
    images: Sequence[np.ndarray],
    postprocess: PostprocessParams,
    device: torch.device | None = None,
    batch_size: int = 4,
) -> list[list[Detection]]:
    """Detect lesions in preprocessed images ((3, H, W) float32 in [0, 1]).

    Runs in batches; on CUDA with fp16 autocast. With ``postprocess.flip_tta``
    each image is also detected mirrored and the two passes are averaged
    (:func:`_merge_flips`). Returns, per image, the detections sorted by score
    (highest first).
    """
    device = device or next(model.parameters()).device
    model.eval()
    model.roi_heads.score_thresh = postprocess.score_threshold
    model.roi_heads.nms_thresh = postprocess.nms_iou
    results: list[list[Detection]] = []
    for start in range(0, len(images), batch_size):
        batch = [
            torch.from_numpy(np.ascontiguousarray(im)).to(device)
            for im in images[start : start + batch_size]
        ]
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            outputs = model(batch)
            if postprocess.flip_tta:
                mirrored = model([im.flip(-1) for im in batch])
                outputs = [
                    _merge_flips(out, _mirrored(mirror, im.shape[-1]), postprocess.agnostic_nms_iou)
                    for out, mirror, im in zip(outputs, mirrored, batch, strict=True)
                ]
        for out in outputs:
            boxes = out["boxes"].float()
            table = out["scores"].float()
            scores, probs = table[:, 0], table[:, 1:]
            order = scores.argsort(descending=True)  # NMS keeps the first of equals
            keep = order[_agnostic_filter(boxes[order], scores[order], postprocess)]
            masks = out["masks"][keep, 0].float().cpu().numpy()
            found = []
            for j, i in enumerate(keep.tolist()):
                label = CLASS_NAMES[int(out["labels"][i])]
                found.append(
                    Detection(
                        box=tuple(float(v) for v in boxes[i].tolist()),  # type: ignore[arg-type]
                        score=float(scores[i]),
                        label=label,
                        p_benign=float(probs[i, 1]),
                        p_malignant=float(probs[i, 2]),
                        mask_probability=masks[j],
                    )
                )
            results.append(found)
    return results
