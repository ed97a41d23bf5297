"""config.serving turns off twisted's form parsing of POST bodies in daphne's requests
(the application reads the raw body; the parse only cost CPU)."""

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
