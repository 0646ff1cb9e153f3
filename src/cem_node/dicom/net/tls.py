"""TLS contexts for DICOM associations (PS3.15 B.1, the basic TLS profile)."""

from __future__ import annotations

import ssl

from cem_node.config import TlsSection

__all__ = ["TlsConfigError", "client_context", "server_context"]


class TlsConfigError(ValueError):
    """The [tls] section names files that cannot be loaded; the message says which."""


def _password(tls: TlsSection) -> str | None:
    return tls.private_key_password.get_secret_value() if tls.private_key_password else None


def server_context(tls: TlsSection) -> ssl.SSLContext:
    """Return the context of the node's listening socket.

    Raises
    ------
    TlsConfigError
        If TLS is not enabled or a certificate, key or CA file cannot be loaded.
    """
    if not tls.enabled or tls.certificate is None or tls.private_key is None:
        raise TlsConfigError("TLS is not enabled in [tls] (enabled, certificate, private_key)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.certificate, tls.private_key, password=_password(tls))
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"cannot load tls.certificate {tls.certificate} / tls.private_key "
            f"{tls.private_key}: {exc}"
        ) from None
    if tls.require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cafile=tls.ca_certificates)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(
                f"cannot load tls.ca_certificates {tls.ca_certificates}: {exc}"
            ) from None
    return context


def client_context(tls: TlsSection, *, server_hostname_check: bool = True) -> ssl.SSLContext:
    """Return the context for associations the node opens to a TLS peer.

    The peer's certificate is verified against ``tls.ca_certificates`` (or
    the system's trust store); the node presents its own certificate when
    one is configured (peers that require client certificates).
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = server_hostname_check
    try:
        if tls.ca_certificates is not None:
            context.load_verify_locations(cafile=tls.ca_certificates)
        if tls.certificate is not None and tls.private_key is not None:
            context.load_cert_chain(tls.certificate, tls.private_key, password=_password(tls))
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"cannot load the [tls] files: {exc}") from None
    return context
