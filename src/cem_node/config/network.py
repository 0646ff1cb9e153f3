"""The network sections: ``[node]``, ``[tls]``, ``[export]``, ``[http]`` and the peers.

The node's DICOM service and its roles, DICOM TLS, the remote DICOM nodes,
what is sent to them and how it is retried, and the HTTP endpoint.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from cem_node.config.base import (
    AETitle,
    ExportObject,
    OptionalPath,
    OptionalSecret,
    PeerName,
    Port,
    _Section,
    _unique,
)
from cem_node.contracts.analysis import RESULT_TYPES

Role = Literal["receiver", "worker", "exporter", "scheduler"]
#: The parts of a node, in the order ``serve`` starts them.
ROLES: tuple[Role, ...] = ("receiver", "worker", "exporter", "scheduler")


class NodeSection(_Section):
    """DICOM network service of this node (the SCP that receives studies) and its roles."""

    ae_title: AETitle = Field(
        "CEM_NODE",
        description=(
            "Application Entity title of this node: 1 to 16 printable ASCII characters, "
            "no backslash. Peers must send to this title."
        ),
    )
    host: str = Field(
        "0.0.0.0",
        min_length=1,
        description="Address to listen on for DICOM associations (0.0.0.0: all interfaces).",
    )
    port: int = Field(
        11112,
        ge=0,
        le=65535,
        description="TCP port to listen on for DICOM associations (0: any free port).",
    )
    max_associations: int = Field(
        10, ge=1, description="Maximum number of simultaneous associations (per process)."
    )
    receiver_processes: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "Processes receiving associations on the port (SO_REUSEPORT, the kernel "
            "spreads the associations): one per expected concurrent sender lets them use "
            "every core (4 senders on 2 cores: 4 processes, as fast as dcmtk storescp "
            "--fork). The first process also runs the scheduler, the worker and the "
            "exporter."
        ),
    )
    max_pdu_size: int = Field(
        131072,
        le=16 * 1024 * 1024,
        description=(
            "Maximum length in bytes of the P-DATA-TF PDUs this node receives (announced to "
            "every sender). A PDU announced longer is refused with an A-ABORT and never "
            "allocated. 131072 is the largest dcmtk sends, and as fast as unlimited."
        ),
    )
    max_association_pdu_size: int = Field(
        1024 * 1024,
        ge=4096,
        le=64 * 1024 * 1024,
        description=(
            "Maximum length in bytes of an A-ASSOCIATE-RQ PDU (read before the sender is "
            "authenticated). A real request with every storage SOP class stays far below "
            "the default of 1 MiB; a larger one is refused with an A-ABORT."
        ),
    )
    artim_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description=(
            "Seconds a new connection has, from TCP accept, to complete the TLS handshake "
            "and send its A-ASSOCIATE-RQ (the ARTIM timer, PS3.8 9.1.5); then it is closed."
        ),
    )
    max_pending_connections: int = Field(
        32,
        ge=1,
        description=(
            "Connections that have not yet sent an A-ASSOCIATE-RQ, in total (per process); "
            "more are closed at accept, so idle sockets cannot take the association slots."
        ),
    )
    max_pending_per_address: int = Field(
        4,
        ge=1,
        description="The same limit for the connections from one address.",
    )
    acse_timeout_s: float = Field(
        30.0, gt=0, description="Seconds to wait for association messages (ACSE)."
    )
    dimse_timeout_s: float = Field(
        60.0, gt=0, description="Seconds to wait for DIMSE messages (C-ECHO, C-STORE ...)."
    )
    network_timeout_s: float = Field(
        60.0, gt=0, description="Seconds without network activity before an association is aborted."
    )
    require_called_ae_title: bool = Field(
        True,
        description=(
            "Reject associations whose called AE title is not ae_title. "
            "Set to false to accept any called AE title."
        ),
    )
    accept_unknown_sources: bool = Field(
        False,
        description=(
            "Accept associations from any calling AE title and address, not only from the "
            "source peers. For a test bench only: never on a hospital network."
        ),
    )
    accept_unknown_sop_classes: Literal["ignore", "refuse"] = Field(
        "ignore",
        description=(
            "What to do with objects that are not CEM images (dose reports, secondary "
            'captures ...): "ignore" accepts and discards them (a PACS forwarding a whole '
            'study then sees success), "refuse" rejects them.'
        ),
    )

    roles: list[Role] = Field(
        default_factory=lambda: list(ROLES),
        description=(
            "What this node runs (`serve --role` overrides): receiver (the DICOM listener, "
            "its extra receiver processes and the hasher; no torch, no GPU), worker (the "
            "analysis), exporter (sends the results), scheduler (study assembly, lease "
            "recovery, retention). Every role serves /healthz and /metrics when [http] is "
            "enabled. Nodes with different roles share one PostgreSQL database and one store."
        ),
    )
    poll_interval_s: float = Field(
        1.0,
        gt=0,
        le=600,
        description=(
            "Seconds between two looks at the queue by an idle worker or exporter. On "
            "PostgreSQL they are also woken at once (LISTEN/NOTIFY) when any node queues "
            "their work; polling is the fallback."
        ),
    )

    id: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$",
        description=(
            "This node's identity in claims, the audit trail and the store (`serve "
            "--node-id` overrides). Unset: a unique one, created once and kept in "
            "<storage.root>/nodes/ (docs/STORE.md). Two running nodes never share one: "
            "the second is refused."
        ),
        examples=["worker-gpu-1"],
    )
    analysis_lease_s: float = Field(
        120.0,
        ge=1,
        le=86400,
        description=(
            "Seconds a worker's claim on a study lasts without renewal; renewed every "
            "third of it while the analysis runs. When a node stops (kill -9, host down), "
            "another node takes its study over this long after the last renewal (plus up "
            "to recovery_interval_s)."
        ),
    )
    export_lease_s: float = Field(
        120.0,
        ge=1,
        le=86400,
        description="The same for an exporter's claim on a batch of results to send.",
    )
    recovery_interval_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description=(
            "Seconds between two looks, by a scheduler, for claims whose lease ran out "
            "(their work goes back to the queue, or fails after its last attempt)."
        ),
    )

    @field_validator("roles")
    @classmethod
    def _some_roles(cls, value: list[Role]) -> list[Role]:
        if not value:
            raise ValueError(f"at least one role is needed, from {', '.join(ROLES)}")
        _unique(value)
        return value

    @field_validator("max_pdu_size")
    @classmethod
    def _finite_pdu_size(cls, value: int) -> int:
        # 0 meant "unlimited" in earlier versions, and their `config init` wrote it
        if value == 0:
            raise ValueError(
                "0 (unlimited) is no longer allowed: an unlimited PDU length lets any "
                "peer make the node reserve gigabytes; use 131072 (the default)"
            )
        if value < 4096:
            raise ValueError(f"{value} is below the smallest useful PDU length, 4096")
        return value


class TlsSection(_Section):
    """DICOM TLS for incoming associations (and outgoing ones to peers with tls = true)."""

    enabled: bool = Field(False, description="Use TLS for the DICOM service.")
    certificate: OptionalPath = Field(
        None,
        description="PEM certificate (chain) of this node. Required when enabled.",
        examples=["conf/tls/node.crt"],
    )
    private_key: OptionalPath = Field(
        None,
        description="PEM private key of the certificate. Required when enabled.",
        examples=["conf/tls/node.key"],
    )
    private_key_password: OptionalSecret = Field(
        None,
        description=(
            "Password of an encrypted private key. Prefer the environment variable "
            "CEM_NODE_TLS__PRIVATE_KEY_PASSWORD to writing it here; it is masked in "
            "`cem-node config show`."
        ),
        examples=["change-me"],
    )
    ca_certificates: OptionalPath = Field(
        None,
        description=(
            "PEM bundle of the certificate authorities trusted to sign peer certificates. "
            "Required when require_client_certificate is true."
        ),
        examples=["conf/tls/ca.pem"],
    )
    require_client_certificate: bool = Field(
        False, description="Refuse incoming connections without a valid client certificate."
    )

    @model_validator(mode="after")
    def _paths_when_enabled(self) -> TlsSection:
        if self.enabled:
            missing = [k for k in ("certificate", "private_key") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"{' and '.join(missing)} must be set when enabled = true")
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("ca_certificates must be set when require_client_certificate = true")
        return self


class ExportSection(_Section):
    """What is sent back to the destinations, and how failed sends are retried."""

    objects: Annotated[list[ExportObject], AfterValidator(_unique)] = Field(
        default_factory=lambda: list(RESULT_TYPES),
        description=(
            'Result objects sent to each destination: "seg" (DICOM SEG per view), '
            '"sr" (TID 1500 report per study), "gsps" (presentation state with outlines).'
        ),
    )
    max_attempts: int = Field(
        8, ge=1, description="Attempts per object and destination before the job fails."
    )
    initial_backoff_s: float = Field(
        5.0, gt=0, description="Seconds before the first retry; doubled after each failure."
    )
    max_backoff_s: float = Field(600.0, gt=0, description="Longest wait between two retries.")

    @model_validator(mode="after")
    def _backoff_ordered(self) -> ExportSection:
        if self.max_backoff_s < self.initial_backoff_s:
            raise ValueError(
                f"max_backoff_s ({self.max_backoff_s}) must not be shorter than "
                f"initial_backoff_s ({self.initial_backoff_s})"
            )
        return self


class HttpSection(_Section):
    """The small HTTP endpoint: GET /healthz (JSON) and /metrics (Prometheus)."""

    enabled: bool = Field(True, description="Serve the HTTP endpoint.")
    host: str = Field(
        "127.0.0.1", min_length=1, description="Address to listen on (127.0.0.1: this host only)."
    )
    port: int = Field(
        8765, ge=0, le=65535, description="TCP port of the HTTP endpoint (0: any free port)."
    )


class Peer(_Section):
    """A remote DICOM node: a source that sends studies or a destination for results."""

    name: PeerName = Field(
        description="Short unique name used on the command line (cem-node echo NAME).",
        examples=["pacs"],
    )
    ae_title: AETitle = Field(description="AE title of the peer.", examples=["PACS"])
    host: str = Field(
        min_length=1,
        description=(
            "Host name or address of the peer. For a source it is also the address "
            "allow-list: associations with its AE title are accepted only from this host "
            "(a name, an address or a network such as 10.1.2.0/24)."
        ),
    )
    port: Port = Field(description="DICOM port of the peer.", examples=[104])
    role: Literal["source", "destination"] = Field(
        description=(
            '"source": sends studies to this node; "destination": results are sent to it.'
        ),
    )
    tls: bool = Field(False, description="Use TLS (see [tls]) for associations with this peer.")
    objects: Annotated[list[ExportObject] | None, AfterValidator(_unique)] = Field(
        None,
        description="Result objects sent to this destination; unset: export.objects.",
        examples=[["seg", "sr"]],
    )
