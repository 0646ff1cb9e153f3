"""Association access decisions (cem_node.dicom.net.access): pure, no network."""

from __future__ import annotations

import pytest

from cem_node.dicom.net.access import (
    CALLED_AE_NOT_RECOGNISED,
    CALLING_AE_NOT_RECOGNISED,
    NO_REASON_GIVEN,
    AssociationRequest,
    address_matches,
    decide_association,
)
from cem_node.peers import PeerEntry


def source(name: str, ae: str, host: str) -> PeerEntry:
    return PeerEntry(name, ae, host, 104, "source", False, None, "config")


SOURCES = [
    source("seno", "SENO", "10.1.2.3"),
    source("pacs", "PACS", "10.9.0.0/16"),
    source("named", "NAMED", "modality.example"),
]


def resolve(host: str) -> frozenset[str]:
    return frozenset({"10.7.7.7"}) if host == "modality.example" else frozenset()


def decide(calling: str, address: str, called: str = "CEM_NODE", **kwargs):
    return decide_association(
        AssociationRequest(calling, called, address),
        node_ae_title="CEM_NODE",
        require_called_ae_title=kwargs.pop("require_called", True),
        sources=SOURCES,
        resolve=resolve,
        **kwargs,
    )


def test_known_source_from_its_host_is_accepted_and_named() -> None:
    decision = decide("SENO", "10.1.2.3")
    assert decision.accepted and decision.peer == "seno" and decision.rejection is None


@pytest.mark.parametrize(
    ("calling", "address", "accepted"),
    [
        ("PACS", "10.9.200.1", True),  # inside the network
        ("PACS", "10.10.0.1", False),
        ("NAMED", "10.7.7.7", True),  # host name resolved
        ("NAMED", "10.7.7.8", False),
        ("SENO", "::ffff:10.1.2.3", True),  # IPv4-mapped IPv6 is the same host
        ("SENO", "10.1.2.4", False),
    ],
)
def test_address_allow_list(calling: str, address: str, accepted: bool) -> None:
    decision = decide(calling, address)
    assert decision.accepted is accepted
    if not accepted:
        assert decision.rejection == NO_REASON_GIVEN
        assert address in decision.reason and "allowed only from" in decision.reason


def test_unknown_calling_ae_is_rejected_as_not_recognised() -> None:
    decision = decide("STRANGER", "10.1.2.3")
    assert not decision.accepted and decision.rejection == CALLING_AE_NOT_RECOGNISED
    assert "'STRANGER' is not a source peer" in decision.reason


def test_wrong_called_ae_is_rejected_first() -> None:
    decision = decide("SENO", "10.1.2.3", called="OTHER")
    assert decision.rejection == CALLED_AE_NOT_RECOGNISED
    assert decide("SENO", "10.1.2.3", called="OTHER", require_called=False).accepted


def test_accept_unknown_sources_opens_the_door_but_says_so() -> None:
    decision = decide("STRANGER", "192.0.2.1", accept_unknown_sources=True)
    assert decision.accepted and "accepts unknown sources" in decision.reason


def test_garbage_addresses_never_match() -> None:
    assert not address_matches("not-an-ip", "10.0.0.0/8")
    assert not address_matches("10.0.0.1", "10.0.0.0/99")
    assert address_matches("127.0.0.1", "127.0.0.1")
