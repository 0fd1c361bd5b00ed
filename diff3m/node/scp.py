"""The DICOM listener: C-ECHO and C-STORE SCP (pynetdicom) with the node's association policy and TLS."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from diff3m.config import Settings
from diff3m.node import handlers, storage
from diff3m.node.policy import AssociationPolicy
from diff3m.node.syntaxes import SUPPORTED_TRANSFER_SYNTAXES
from diff3m.node.tls import server_context

log = logging.getLogger(__name__)


class _PolicyACSE(ACSE):
    """ACSE that applies the node's AssociationPolicy before pynetdicom's own negotiation."""

    def __init__(self, assoc: Association, policy: AssociationPolicy) -> None:
        super().__init__(assoc)
        self._policy = policy

    def _negotiate_as_acceptor(self) -> None:
        rq = cast(A_ASSOCIATE, self.requestor.primitive)
        self.requestor.ae_title = rq.calling_ae_title
        try:
            reject = self._policy.check(rq.called_ae_title, rq.calling_ae_title, self.requestor.address)
        except Exception:  # a policy bug must not accept blindly
            log.exception("association policy failed")
            reject = (0x02, 0x03, 0x01)
        if reject:
            self.send_reject(*reject)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        super()._negotiate_as_acceptor()

    def send_accept(self) -> None:
        """Honour the requestor's preferred transfer syntax, so objects are stored as sent."""
        rq = cast(A_ASSOCIATE, self.requestor.primitive)
        proposed = {cx.context_id: list(cx.transfer_syntax) for cx in rq.presentation_context_definition_list}
        ours = {str(cx.abstract_syntax): set(map(str, cx.transfer_syntax))
                for cx in self.acceptor.supported_contexts}
        for cx in self.assoc._accepted_cx.values():
            supported = ours.get(str(cx.abstract_syntax), set())
            first = next((t for t in proposed.get(cx.context_id, []) if str(t) in supported), None)
            if first is not None:
                cx.transfer_syntax = [first]
        super().send_accept()


class _FastAssociationSocket(AssociationSocket):
    """pynetdicom's socket, reading a PDU with a few ``recv_into`` calls instead of 4 KiB ``recv``s.

    pynetdicom reads each PDU in 4096-byte ``recv`` calls appended to a bytearray: ~130 calls and
    appends per 512 KiB image. The buffer grows at most 1 MiB ahead of the data received, so a
    peer announcing a huge PDU length cannot make the node allocate it up front.
    """

    _STEP = 1 << 20

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` (fewer only when the peer closed the connection)."""
        sock = cast(socket.socket, self.socket)
        buf = bytearray(min(nr_bytes, self._STEP))
        got = 0
        while got < nr_bytes:
            if got == len(buf):
                buf.extend(bytes(min(nr_bytes - got, self._STEP)))
            with memoryview(buf) as view:
                n = sock.recv_into(view[got:])
            if not n:
                del buf[got:]
                break
            got += n
        return buf


class _PolicyRequestHandler(RequestHandler):
    def _create_association(self) -> Association:
        assoc = super()._create_association()
        assoc.acse = _PolicyACSE(assoc, cast(_NodeServer, self.server).policy)
        if type(assoc.dul.socket) is AssociationSocket:
            assoc.dul.socket.__class__ = _FastAssociationSocket
        return assoc


class _NodeServer(ThreadedAssociationServer):
    """Threaded server whose TLS handshake runs in the association's thread, not the accept loop."""

    policy: AssociationPolicy

    def server_bind(self) -> None:
        assert self.socket is not None
        if getattr(self, "reuse_port", False):  # several listener processes share the port
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[Any, Any]:
        assert self.socket is not None
        client_socket, address = self.socket.accept()
        if self.ssl_context:
            client_socket = self.ssl_context.wrap_socket(
                client_socket, server_side=True, do_handshake_on_connect=False
            )
        return client_socket, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(self.ae.network_timeout)
                request.do_handshake()
            except (OSError, ValueError) as err:
                log.info("TLS handshake with %s failed: %s", client_address[0], type(err).__name__)
                return
        super().finish_request(request, client_address)


class _SharedPortServer(_NodeServer):
    reuse_port = True


def make_ae(settings: Settings) -> AE:
    """The pynetdicom AE with our contexts (allowed SOP classes x supported syntaxes), limits, timeouts."""
    node = settings.node
    ae = AE(ae_title=node.ae_title)
    ae.add_supported_context(Verification)
    for sop_class in node.sop_classes:
        ae.add_supported_context(sop_class, SUPPORTED_TRANSFER_SYNTAXES)
    ae.maximum_associations = node.max_associations
    ae.maximum_pdu_size = node.max_pdu
    ae.acse_timeout = node.acse_timeout
    ae.dimse_timeout = node.dimse_timeout
    ae.network_timeout = node.network_timeout
    ae.require_called_aet = False  # our policy checks it, with the right reason
    return ae


@dataclass
class Listener:
    """A running listener; ``stop()`` closes it."""

    ae: AE
    server: _NodeServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The TCP port listened on."""
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Stop accepting and close the socket (associations in flight finish)."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def start_listener(settings: Settings, db_url: str | None = None, port: int | None = None,
                   shared_port: bool = False) -> Listener:
    """Start the C-ECHO/C-STORE listener in background threads and return it.

    ``shared_port``: bind with SO_REUSEPORT so several listener processes share the port (the
    kernel spreads associations over them; ``max_associations`` then applies per process).
    """
    node = settings.node
    url = db_url or settings.database.url
    storage.clean_temp(node.storage_dir)
    ae = make_ae(settings)
    handlers_list: list[Any] = [
        (evt.EVT_C_ECHO, handlers.handle_echo),
        (evt.EVT_C_STORE, handlers.handle_store, handlers.store_handler_args(settings, url)),
    ]
    address = (node.host, node.port if port is None else port)
    server = cast(_NodeServer, ae.make_server(
        address, ae_title=node.ae_title, ssl_context=server_context(node), evt_handlers=handlers_list,
        server_class=_SharedPortServer if shared_port else _NodeServer, request_handler=_PolicyRequestHandler,
    ))
    server.policy = AssociationPolicy.from_settings(node)
    ae._servers.append(server)  # so that server.shutdown() finds it
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name=f"dicom-listener:{address[1]}", daemon=True)
    thread.start()
    log.info("DICOM listener %s on %s:%d%s", node.ae_title, address[0], server.server_address[1],
             " (TLS)" if node.tls_enabled else "")
    return Listener(ae, server, thread)
