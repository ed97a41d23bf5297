"""config.serving trims what daphne's twisted layer did per request for nobody: parsing
POST bodies as forms (the application reads the raw body) and a third access-log line; and it
freezes start-up's objects out of the garbage collector's full collections."""

from __future__ import annotations

from types import SimpleNamespace

from daphne import http_protocol
from twisted.internet.address import IPv4Address
from twisted.web import http


def test_daphne_builds_requests_that_leave_post_bodies_unparsed():
    import config.serving  # noqa: F401 - importing it is what configures daphne

    factory = http_protocol.HTTPFactory(server=SimpleNamespace())
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8000))
    request_class = protocol.requestFactory
    assert issubclass(request_class, http_protocol.WebRequest)
    assert issubclass(request_class, http.Request)
    assert request_class.raw_body is True


def test_each_request_has_form_parsing_off():
    import config.serving  # noqa: F401

    channel = SimpleNamespace(getPeer=lambda: None, getHost=lambda: None, transport=None,
                              factory=SimpleNamespace(server=SimpleNamespace(
                                  protocol_connected=lambda request: None)))
    request = http_protocol.WebRequest(channel)
    assert request._parsePOSTFormSubmission is False


def test_twisted_writes_no_access_line_of_its_own():
    """daphne's access log and Django's `config.access` lines stay; twisted's third is gone."""
    import config.serving  # noqa: F401

    factory = http_protocol.HTTPFactory(server=SimpleNamespace())
    written: list[str] = []
    factory._logFile = SimpleNamespace(write=written.append)
    factory.log(SimpleNamespace())
    assert written == []


def test_start_up_objects_are_frozen_out_of_full_collections():
    """What importing the served application allocated (the handlers, their middleware)
    is in the collector's permanent generation: full collections no longer walk it."""
    import gc

    import config.serving

    assert gc.get_freeze_count() > 10_000
    tracked = {id(obj) for obj in gc.get_objects()}
    assert id(config.serving.application.__dict__) not in tracked
    assert id(config.serving.application.http.__dict__) not in tracked


def test_a_web_process_accepts_one_waiting_connection_per_wakeup():
    """Connections waiting on the shared listening socket are taken one per wake-up, so
    a burst of them spreads over the web processes instead of landing on the first."""
    import socket

    from twisted.internet import protocol, tcp

    import config.serving  # noqa: F401

    accepted: list[object] = []

    class Counting(protocol.ServerFactory):
        def buildProtocol(self, addr: object) -> protocol.Protocol:
            accepted.append(addr)
            return protocol.Protocol()

    class Readers:
        """The reactor's part a listening port uses; doRead is called as the loop would."""

        def __init__(self) -> None:
            self.readers: set[object] = set()

        def addReader(self, reader: object) -> None:  # noqa: N802 - twisted's names
            self.readers.add(reader)

        def removeReader(self, reader: object) -> None:  # noqa: N802
            self.readers.discard(reader)

    reactor = Readers()
    port = tcp.Port(0, Counting(), interface="127.0.0.1", reactor=reactor)
    port.startListening()
    clients = [socket.create_connection(("127.0.0.1", port.getHost().port)) for _ in range(3)]
    try:
        port.doRead()
        assert len(accepted) == 1
        port.doRead()
        port.doRead()
        assert len(accepted) == 3
    finally:
        for client in clients:
            client.close()
        for reader in reactor.readers:  # the port and the accepted connections
            reader.socket.close()  # type: ignore[attr-defined]
