"""cem-node: an AI node for contrast-enhanced mammography (CEM).

Receives CEM studies by DICOM C-STORE, detects and outlines lesions, classifies
them benign vs malignant (deep learning fused with handcrafted radiomics) and
sends back DICOM SEG, TID 1500 SR and GSPS objects.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
