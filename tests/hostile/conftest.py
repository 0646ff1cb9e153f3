"""Fixtures of the attack suite: one attacked node per configuration, shared by a module."""

from __future__ import annotations

from tests.test_tls import pki  # noqa: F401  (the CA, server and client certificates)
