"""The DICOM objects the node writes for a study round.

:mod:`.results` turns a findings document into the round's objects with
deterministic UIDs and series numbers (:func:`.results.encode_results`, and
:func:`.results.encode_not_analysable` for a study the AI did not read);
:mod:`.seg`, :mod:`.sr`, :mod:`.gsps` and :mod:`.not_analysable` build one
object each; :mod:`.predecessors` makes a report name the earlier reports
it replaces; :mod:`.common` is what they share.
"""
