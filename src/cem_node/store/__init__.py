"""The node's persistent store: database models, engines, migrations and files.

Typical start-up::

    engine = make_engine(settings.database_url())
    check_schema_current(engine)  # or upgrade(engine) when allowed
    sessions = session_factory(engine)
    with sessions.begin() as session:
        ...
"""

from cem_node.store.engine import make_engine, session_factory
from cem_node.store.instance_files import InstanceFileStore, StoredFile, UnsafePathError
from cem_node.store.migrate import (
    SchemaOutdatedError,
    check_schema_current,
    current_revision,
    head_revision,
    upgrade,
)
from cem_node.store.models import (
    Analysis,
    AuditEvent,
    Base,
    Export,
    ExportState,
    Finding,
    ImageRole,
    Instance,
    Job,
    JobKind,
    JobState,
    LesionLabel,
    ModelBundle,
    PairingRecord,
    Peer,
    PeerRole,
    Study,
    StudyState,
    utcnow,
)

__all__ = [
    "Analysis",
    "AuditEvent",
    "Base",
    "Export",
    "ExportState",
    "Finding",
    "ImageRole",
    "Instance",
    "InstanceFileStore",
    "Job",
    "JobKind",
    "JobState",
    "LesionLabel",
    "ModelBundle",
    "PairingRecord",
    "Peer",
    "PeerRole",
    "SchemaOutdatedError",
    "StoredFile",
    "Study",
    "StudyState",
    "UnsafePathError",
    "check_schema_current",
    "current_revision",
    "head_revision",
    "make_engine",
    "session_factory",
    "upgrade",
    "utcnow",
]
