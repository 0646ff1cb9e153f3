"""DICOM, by layer.

* :mod:`.selection`: what arrives, read from headers: CEM roles, pairing per
  breast and view, the analysis request of a study (pure functions).
* :mod:`.identifiers`: checks of received identifiers and header values.
* :mod:`.objects`: what the node writes: SEG, the analysis SR, GSPS, the
  not-analysable SR, and their shared toolkit (:mod:`.objects.common`).
* :mod:`.net`: associations: the C-STORE SCP with its admission and access
  control, the SCU that exports, TLS, and pynetdicom's internals the SCP
  relies on (in one module that checks their version).
* :mod:`.validation`: dciodvfy and PixelMed, the validators of what we write.
"""
