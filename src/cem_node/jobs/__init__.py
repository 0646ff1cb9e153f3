"""Everything after receipt: assembly, the worker, the exporter, retention, the scheduler.

Each step reads its work from the database and writes its result there, so
a node killed at any moment resumes where it stopped.
"""
