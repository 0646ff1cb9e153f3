"""Weights files of detector training: pretrained weights to start from, and the checkpoint
of the last finished epoch (``last.safetensors`` + ``last.json``) that a resumed run reads.

The checkpoint holds the model, optimizer, AMP scaler and RNG state: tensors in
safetensors, everything else as JSON, no pickles.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cem_node.training.detector_errors import TrainingError
from cem_node.training.run_files import CHECKPOINT_JSON, CHECKPOINT_TENSORS

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "load_pretrained_weights", "save_checkpoint"]

CHECKPOINT_FORMAT = "cem-node/detector-checkpoint/v1"


# --- pretrained weights ---------------------------------------------------------------------


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise TrainingError(f"pretrained weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError, OSError
            raise TrainingError(f"cannot read pretrained weights {path}: {exc}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors: the file holds more than tensors
        raise TrainingError(
            f"cannot read pretrained weights {path} with weights_only=True "
            f"(a plain state_dict of tensors is expected): {exc}"
        ) from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise TrainingError(f"{path}: expected a state_dict (a mapping of tensors)")
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_pretrained_weights(model: nn.Module, path: Path) -> tuple[int, int]:
    """Copy matching tensors from a local file into the detector; returns (loaded, in the file).

    Keys are matched as they are (a detector checkpoint), under
    ``backbone.body.`` (a classification backbone such as torchvision's
    ImageNet ResNet or MobileNetV3, ``features.`` stripped), with
    ``module.`` prefixes removed; only tensors of the same shape are copied.

    Raises
    ------
    TrainingError
        When the file cannot be read or no tensor of it fits the detector.
    """
    source = _read_state(path)
    target = model.state_dict()
    update: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        name = key.removeprefix("module.")
        for candidate in (
            name,
            f"backbone.body.{name}",
            f"backbone.body.{name.removeprefix('features.')}",
            f"backbone.{name}",
        ):
            if candidate in target and target[candidate].shape == tensor.shape:
                update[candidate] = tensor.to(target[candidate].dtype)
                break
    if not update:
        raise TrainingError(
            f"no tensor of {path.name} fits the detector's architecture "
            f"(file keys such as {', '.join(list(source)[:3]) or '(none)'})"
        )
    model.load_state_dict(update, strict=False)
    return len(update), len(source)


# --- checkpoints ------------------------------------------------------------------------------
def save_checkpoint(
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: dict[str, Any],
) -> None:
    """Write the checkpoint (``state``: epoch, history, settings ...) to ``out_dir``: both
    files to temporary names first, so an interruption leaves the last complete one."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        tensors[f"model/{name}"] = value.detach().cpu().contiguous().clone()
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in opt["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["rng/torch"] = torch.get_rng_state().clone()
    if torch.cuda.is_available():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = rng.clone()
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].numpy().tobytes())
    record = {
        "format": CHECKPOINT_FORMAT,
        **state,
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "tensors_sha256": digest.hexdigest(),
    }
    tensor_path, json_path = out_dir / CHECKPOINT_TENSORS, out_dir / CHECKPOINT_JSON
    tmp_tensors = tensor_path.with_name(tensor_path.name + ".tmp")
    tmp_json = json_path.with_name(json_path.name + ".tmp")
    save_file(tensors, str(tmp_tensors), metadata={"format": CHECKPOINT_FORMAT})
    tmp_json.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
    tmp_tensors.replace(tensor_path)
    tmp_json.replace(json_path)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def load_checkpoint(
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    expected: dict[str, Any],
) -> dict[str, Any]:
    """Restore model, optimizer, scaler and RNG state from ``out_dir``'s checkpoint and
    return its record; its detector and preprocessing settings must be ``expected``'s."""
    from safetensors.torch import load_file

    json_path, tensor_path = out_dir / CHECKPOINT_JSON, out_dir / CHECKPOINT_TENSORS
    try:
        record = json.loads(json_path.read_text())
        tensors = load_file(str(tensor_path))
    except Exception as exc:
        raise TrainingError(f"cannot read the checkpoint in {out_dir}: {exc}") from None
    if record.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{json_path}: not a {CHECKPOINT_FORMAT} checkpoint")
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].numpy().tobytes())
    if digest.hexdigest() != record.get("tensors_sha256"):
        raise TrainingError(
            f"{tensor_path.name} and {json_path.name} in {out_dir} do not belong together "
            "(interrupted while saving?): start afresh without resume"
        )
    for part in ("detector", "preprocessing"):
        if record.get(part) != expected[part]:
            raise TrainingError(
                f"the checkpoint in {out_dir} was made with other {part} settings "
                f"({record.get(part)}); resume with the same settings or use another folder"
            )
    model.load_state_dict(
        {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    )
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            opt_state.setdefault(int(index), {})[name] = value
    for index, values in record["optimizer"].get("scalars", {}).items():
        opt_state.setdefault(int(index), {}).update(values)
    groups = record["optimizer"]["param_groups"]
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    if record.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(record["scaler"])
    torch.set_rng_state(tensors["rng/torch"])
    cuda_states = [tensors[f"rng/cuda/{i}"] for i in range(64) if f"rng/cuda/{i}" in tensors]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    return record
