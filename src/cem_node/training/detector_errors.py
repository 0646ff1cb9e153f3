"""The error of detector training, shared by its modules (loop, checkpoints, operating point)."""

from __future__ import annotations

__all__ = ["TrainingError"]


class TrainingError(RuntimeError):
    """Training cannot go on (loss not finite, checkpoint unusable, no usable image)."""
