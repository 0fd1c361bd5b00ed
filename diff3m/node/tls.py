"""TLS contexts for the listener (server certificate, optional required client certificates) and SCU."""

from __future__ import annotations

import ssl
from pathlib import Path

from diff3m.config import NodeSettings


def server_context(node: NodeSettings) -> ssl.SSLContext | None:
    """The listener's TLS context, or None when TLS is off; with ``tls_ca`` a client cert is required."""
    if not node.tls_enabled:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(node.tls_cert), str(node.tls_key))
    if node.tls_ca is not None:
        ctx.load_verify_locations(cafile=str(node.tls_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca: Path | None = None, cert: Path | None = None,
                   key: Path | None = None) -> ssl.SSLContext:
    """A TLS client context verifying the server against ``ca`` (no host name check: DICOM peers
    are identified by certificate, not DNS) and presenting ``cert``/``key`` when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    if ca is not None:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx
