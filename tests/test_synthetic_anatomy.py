"""The phantom's building blocks behave as the realism claims say."""

from __future__ import annotations

import numpy as np
import pytest

from cem_node.synthetic.anatomy import (
    Grid,
    breast_mask,
    fibroglandular_density,
    glandular_envelope,
    sample_breast_shapes,
    skin_distance_mm,
)
from cem_node.synthetic.phantom import BreastSpec, render_view
from cem_node.synthetic.texture import power_law_noise


@pytest.mark.parametrize("beta", [2.0, 3.0])
def test_texture_has_a_power_law_spectrum(beta: float) -> None:
    field = power_law_noise((512, 512), beta, np.random.default_rng(0))
    assert abs(field.mean()) < 1e-3 and abs(field.std() - 1) < 1e-3
    power = np.abs(np.fft.fft2(field)) ** 2
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(512), np.fft.fftfreq(512), indexing="ij"))
    band = (f > 0.01) & (f < 0.3)
    slope = np.polyfit(np.log(f[band]), np.log(power[band]), 1)[0]
    assert slope == pytest.approx(-beta, abs=0.2)


def _shapes(seed: int = 1):
    return sample_breast_shapes(np.random.default_rng(seed), 229.4, 191.4)


def test_density_categories_are_ordered() -> None:
    grid = Grid(573, 478, 0.4)
    shape = _shapes()["CC"]
    inside = breast_mask(shape, grid)
    envelope = glandular_envelope(shape, grid, skin_distance_mm(shape, grid))
    fractions = []
    for category in "ABCD":
        dense = fibroglandular_density(envelope, inside, category, np.random.default_rng(5), 0.4)
        fractions.append(float((dense[inside] > 0.5).mean()))
    assert fractions == sorted(fractions)
    assert fractions[0] < 0.25 and fractions[-1] > 0.5


def test_mlo_has_a_pectoral_muscle_and_cc_has_none() -> None:
    shapes = _shapes()
    y = np.array([1.0, 20.0], dtype=np.float32)
    assert (shapes["MLO"].pectoral_depth(y) > 10).all()
    assert (shapes["CC"].pectoral_depth(y) == 0).all()
    # the MLO silhouette reaches the top edge (axilla), the CC one does not
    assert shapes["MLO"].depth(np.array([0.5], dtype=np.float32))[0] > 20
    assert shapes["CC"].depth(np.array([0.5], dtype=np.float32))[0] == 0


def _mean_rc(bpe: str) -> float:
    grid = Grid(573, 478, 0.4)
    breast = BreastSpec("L", _shapes(3), 55.0, "C", bpe, (), (), False)  # type: ignore[arg-type]
    view = render_view(breast, "CC", grid, np.random.default_rng(9))
    return float(view.rc[view.breast].mean())


def test_background_parenchymal_enhancement_levels_are_ordered() -> None:
    means = [_mean_rc(level) for level in ("minimal", "mild", "moderate", "marked")]
    assert means == sorted(means)
    assert means[-1] - means[0] > 0.01
