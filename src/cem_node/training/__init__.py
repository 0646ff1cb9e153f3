"""Training: fitting the models a bundle holds, and their evaluation.

* :mod:`cem_node.training.datasets`: dataset specs (``synthetic:N[:SEED[:SIZE]]``,
  ``cdd-cesm:PATH``, ``manifest:CSV``), lazily loaded samples, patient-level splits;
* :mod:`cem_node.training.detector_training`: Mask R-CNN training (presets,
  augmentation, validation loss, best checkpoint, resume);
* :mod:`cem_node.training.radiomics_model`: feature selection and the XGBoost
  radiomics classifier (PAPER.md "Radiomics classifier"); its result is a
  :class:`cem_node.pipeline.classifier.RadiomicsClassifier`;
* :mod:`cem_node.training.metrics`, :mod:`~cem_node.training.evaluation`,
  :mod:`~cem_node.training.report`: the paper's Tables 2 and 3 with bootstrap
  confidence intervals, and the report.

The submodules import torch, scikit-learn and XGBoost (the ``ml`` extra), so
this package imports nothing by itself.
"""
