"""The contracts every stage shares, on the ground floor of the package.

:mod:`.findings` is the findings document (what the analysis found, per
lesion, and the model that found it); :mod:`.analysis` is what the worker
hands to an analysis and what comes back (the request, its image pairs, the
result objects); :mod:`.params` is the bundle's parameter schema (the
preprocessing, postprocessing, radiomics and decision parameters a model
bundle carries). This package imports nothing else of ``cem_node``, so
every stage can depend on it (``tests/test_layering.py``).
"""
