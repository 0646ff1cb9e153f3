"""DICOM layer of cem-node: validation of what it writes (the SCP, the
exporter, CEM selection and pairing, SEG, SR and GSPS come with #3 and #5)."""
