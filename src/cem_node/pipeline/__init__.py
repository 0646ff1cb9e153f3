"""The analysis of a CEM study (the method of Beuque et al., Radiology 2023).

One module per stage, pure functions where possible:

- :mod:`~cem_node.pipeline.pixels`: decode a DICOM image (any transfer syntax,
  MONOCHROME1/2, 8-16 bit) into a :class:`~cem_node.pipeline.pixels.SourceImage`;
- :mod:`~cem_node.pipeline.preprocess`: breast mask, crop, clip, requantise,
  CLAHE, three channels, the one resize rule, and the exact inverse mapping;
- :mod:`~cem_node.pipeline.detector`: Mask R-CNN (three backbones) and the
  paper's post-processing;
- :mod:`~cem_node.pipeline.radiomics`: pyradiomics features of a lesion on the
  original LE and RC images;
- :mod:`~cem_node.pipeline.classifier`: the radiomics XGBoost model of a bundle;
- :mod:`~cem_node.pipeline.fusion`: DL probability, fusion, Youden thresholds,
  per-lesion, per-breast and per-patient decisions;
- :mod:`~cem_node.pipeline.analyse`: one study, end to end, into
  :class:`~cem_node.contracts.findings.Findings`;
- :mod:`~cem_node.pipeline.service`: the node's analyser and ``cem-node analyse``;
- :mod:`~cem_node.pipeline.overlay`: overlay PNGs for people.
"""
