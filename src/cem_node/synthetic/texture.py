"""Random fields for the phantom: power-law (1/f^beta) textures.

Mammographic parenchyma has a power spectrum close to 1/f^beta with beta
about 3 (Burgess et al., Med Phys 2001); filtering white noise in the Fourier
domain reproduces it. All functions are pure: the caller passes the generator.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from PIL import Image


def power_law_noise(
    shape: tuple[int, int],
    beta: float,
    rng: np.random.Generator,
    *,
    pixel_mm: float = 1.0,
    min_period_mm: float | None = None,
) -> np.ndarray:
    """Gaussian random field with a 1/f^beta power spectrum.

    Parameters
    ----------
    shape
        (rows, columns) of the field.
    beta
        Spectral exponent (power ~ 1/f^beta); 3 for breast parenchyma.
    rng
        Source of randomness.
    pixel_mm
        Pixel size, so that ``min_period_mm`` is physical.
    min_period_mm
        Optional high-frequency roll-off: structure finer than this period is
        attenuated (mimics the detector MTF and keeps fields smooth).

    Returns
    -------
    numpy.ndarray
        float32 field with zero mean and unit standard deviation.
    """
    rows, cols = shape
    white = rng.standard_normal(shape, dtype=np.float32)
    spectrum = scipy.fft.rfft2(white, workers=1)
    fy = scipy.fft.fftfreq(rows).astype(np.float32)[:, None]
    fx = scipy.fft.rfftfreq(cols).astype(np.float32)[None, :]
    f2 = fy * fy + fx * fx
    f2[0, 0] = np.inf  # no DC: the field has zero mean
    # amplitude ~ f^(-beta/2) gives power ~ f^(-beta)
    gain = f2 ** np.float32(-beta / 4.0)
    if min_period_mm is not None:
        fc = pixel_mm / min_period_mm  # cycles per pixel
        gain *= np.exp(-f2 / np.float32(fc * fc))
    spectrum *= gain
    field = scipy.fft.irfft2(spectrum, s=shape, workers=1).astype(np.float32, copy=False)
    std = float(field.std())
    if std > 0:
        field /= np.float32(std)
    return field


def resize_field(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float field to ``shape`` (rows, columns)."""
    if field.shape == shape:
        return field.astype(np.float32, copy=False)
    image = Image.fromarray(np.ascontiguousarray(field, dtype=np.float32), mode="F")
    return np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def smoothstep(x: np.ndarray) -> np.ndarray:
    """Cubic smoothstep of ``x`` clipped to [0, 1] (C1-continuous ramp)."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)
