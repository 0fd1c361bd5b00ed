"""Who may associate: called AE, calling AE (optionally pinned to a host), free-disk watermark."""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

from diff3m.config import NodeSettings
from diff3m.node import storage

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, reason) per PS3.8 9.3.4
REJECT_CALLING_AET = (0x01, 0x01, 0x03)  # permanent, service user, calling AE title not recognised
REJECT_CALLED_AET = (0x01, 0x01, 0x07)  # permanent, service user, called AE title not recognised
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # transient, service provider (presentation), local limit exceeded


def _norm_ip(text: str) -> str:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text.lower()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


def _addresses(host: str) -> set[str]:
    out = {_norm_ip(host)}
    try:
        for info in socket.getaddrinfo(host, None):
            out.add(_norm_ip(str(info[4][0])))
    except OSError:
        log.warning("allowed_calling_aets: cannot resolve host %r", host)
    return out


@dataclass
class AssociationPolicy:
    """Decides, before any presentation context is negotiated, whether to accept a requestor."""

    ae_title: str
    storage_dir: Path
    min_free_disk_mb: int
    allowed: dict[str, set[str] | None] = field(default_factory=dict)  # AE -> hosts (None = any)

    @classmethod
    def from_settings(cls, node: NodeSettings) -> AssociationPolicy:
        """Build the policy from ``[node]`` (resolving pinned host names once)."""
        allowed: dict[str, set[str] | None] = {}
        for entry in node.allowed_calling_aets:
            aet, _, host = entry.partition("@")
            aet = aet.strip()
            if not host:
                allowed[aet] = None
            elif aet not in allowed or allowed[aet] is not None:
                hosts = allowed.get(aet) or set()
                allowed[aet] = hosts | _addresses(host.strip())
        return cls(node.ae_title, Path(node.storage_dir), node.min_free_disk_mb, allowed)

    def check(self, called_aet: str, calling_aet: str, peer_host: str) -> tuple[int, int, int] | None:
        """None to accept, else the (result, source, reason) to reject with."""
        if called_aet.strip() != self.ae_title:
            log.info("rejecting association from %s: called AE %r is not ours", calling_aet, called_aet)
            return REJECT_CALLED_AET
        if self.allowed:
            hosts = self.allowed.get(calling_aet.strip(), set())
            if hosts is not None and _norm_ip(peer_host) not in hosts:
                log.info("rejecting association: calling AE %r from %s not allowed", calling_aet, peer_host)
                return REJECT_CALLING_AET
        if self.min_free_disk_mb and storage.free_mb(self.storage_dir) < self.min_free_disk_mb:
            log.warning("rejecting association from %s: free disk below %d MB", calling_aet,
                        self.min_free_disk_mb)
            return REJECT_LOCAL_LIMIT
        return None
