"""Synthetic contrast-enhanced mammography studies (phantoms) with ground truth.

No real CEM DICOM study can be shipped; these phantoms stand in for the
modality's output in the demo, the tests and the demo model's training.
"""

from cem_node.synthetic.study import (
    DISCLAIMER,
    GROUND_TRUTH_SCHEMA,
    PHANTOM_VERSION,
    SynthOptions,
    generate_studies,
    generate_study,
    grid_for_size,
)

__all__ = [
    "DISCLAIMER",
    "GROUND_TRUTH_SCHEMA",
    "PHANTOM_VERSION",
    "SynthOptions",
    "generate_studies",
    "generate_study",
    "grid_for_size",
]
