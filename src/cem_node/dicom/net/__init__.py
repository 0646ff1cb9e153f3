"""The DICOM network layer: associations in and out.

:mod:`.scp` receives C-STORE and C-ECHO (streaming each dataset to the
store), :mod:`.admission` bounds what a peer may cost before it is known,
:mod:`.access` decides who may connect, :mod:`.tls` wraps sockets,
:mod:`.scu` sends results to the destinations, and
:mod:`.pynetdicom_internals` holds the parts of pynetdicom the SCP uses
beyond its public API, with the version they were written for.
"""
