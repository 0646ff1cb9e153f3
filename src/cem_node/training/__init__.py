"""Training: fitting the models a bundle holds, and their evaluation.

* :mod:`cem_node.training.radiomics_model`: feature selection and the XGBoost
  radiomics classifier (PAPER.md "Radiomics classifier"); its result is a
  :class:`cem_node.pipeline.classifier.RadiomicsClassifier`.

The submodules import scikit-learn and XGBoost (the ``ml`` extra), so this
package imports nothing by itself.
"""
