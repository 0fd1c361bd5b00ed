"""The listener's PDU reads: whole PDUs in few syscalls, short only when the peer closes, no huge buffer."""

from __future__ import annotations

import socket
import threading

from diff3m.node.scp import _FastAssociationSocket


def _reader(sock: socket.socket) -> _FastAssociationSocket:
    reader = object.__new__(_FastAssociationSocket)  # only .socket is used by recv
    reader.socket = sock
    return reader


def test_reads_exactly_what_is_asked_across_pieces() -> None:
    a, b = socket.socketpair()
    payload = bytes(range(256)) * 2000  # 512000 bytes, sent in odd pieces
    pieces = [payload[i:i + 7777] for i in range(0, len(payload), 7777)]
    sender = threading.Thread(target=lambda: [a.sendall(p) for p in pieces])
    sender.start()
    r = _reader(b)
    assert r.recv(6) == payload[:6]
    assert r.recv(len(payload) - 6) == payload[6:]
    sender.join()
    a.close()
    b.close()


def test_short_read_when_the_peer_closes_and_no_upfront_allocation() -> None:
    a, b = socket.socketpair()
    a.sendall(b"abc")
    a.close()
    got = _reader(b).recv(0xFFFFFFF0)  # a peer announcing a 4 GiB PDU gets no 4 GiB buffer
    assert got == b"abc"
    b.close()
