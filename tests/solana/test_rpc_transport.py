"""The JSON-RPC transport every Solana call goes through (`execution.solana.transport`)
reads what real nodes and proxies send: a Content-Length body, a chunked one, a body ended
by closing the connection, an interim 100 Continue. A read the node drops is asked again on
a new connection without the caller noticing, and a node that keeps failing is
SolanaUnavailable; a send is never asked twice, and is not lost to a kept connection the
node closed while it was idle; a forked child never talks on its parent's sockets."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from execution.solana.errors import SolanaError, SolanaUnavailable
from execution.solana.transport import RpcTransport

# request body → raw bytes to send (None: hang up; (bytes, CLOSE): answer, then hang up)
CLOSE = "close"
Answer = Callable[[bytes], bytes | tuple[bytes, str] | None]


class RawNode:
    """A TCP server answering each HTTP request with the exact bytes a test gives."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers
        self.requests: list[tuple[int, bytes]] = []  # (connection number, body)
        self.heads: list[bytes] = []  # request line and headers, as received
        self.connections = 0
        self.hung_up = 0  # connections this node closed
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/rpc"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock, self.connections), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        reader = sock.makefile("rb")
        with sock:
            while True:
                request_line = reader.readline()
                if not request_line:
                    return
                length, head = 0, request_line
                while (line := reader.readline()) not in (b"\r\n", b""):
                    head += line
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                body = reader.read(length)
                self.heads.append(head)
                self.requests.append((number, body))
                answer = self.answers.pop(0)(body) if self.answers else None
                if answer is None:
                    break
                if isinstance(answer, tuple):
                    sock.sendall(answer[0])
                    break
                sock.sendall(answer)
                if b"Connection: close" in answer.split(b"\r\n\r\n")[0] or answer.startswith(b"HTTP/1.0"):
                    break
        self.hung_up += 1

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def node() -> Iterator[Callable[[list[Answer]], RawNode]]:
    started: list[RawNode] = []

    def start(answers: list[Answer]) -> RawNode:
        started.append(RawNode(answers))
        return started[-1]

    yield start
    for server in started:
        server.close()


def echo(body: bytes) -> bytes:
    return json.dumps({"echo": json.loads(body)}).encode()


def with_length(body: bytes) -> bytes:
    payload = echo(body)
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(payload), payload)


def chunked(body: bytes) -> bytes:
    payload = echo(body)
    pieces = [payload[:5], payload[5:9], payload[9:]]
    framed = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Other: a:b\r\n\r\n"
            + framed + b"0\r\nX-Trailer: 1\r\n\r\n")


def until_close(body: bytes) -> bytes:
    return b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + echo(body)


def continue_then_length(body: bytes) -> bytes:
    return b"HTTP/1.1 100 Continue\r\n\r\n" + with_length(body)


def status(code: int) -> Answer:
    return lambda body: b"HTTP/1.1 %d Nope\r\nContent-Length: 4\r\n\r\nnope" % code


class Reader:
    """The transport as a reader uses it: asked again once, the answer as JSON."""

    def __init__(self, transport: RpcTransport) -> None:
        self.transport = transport

    def _post(self, body: bytes) -> object:
        return json.loads(self.transport.post(body, retry=True))


def reader_for(server: RawNode) -> Reader:
    return Reader(RpcTransport(server.url, timeout=5))


@pytest.mark.parametrize("answer", [with_length, chunked, until_close, continue_then_length])
def test_every_framing_gives_the_same_json(node, answer):
    server = node([answer])
    assert reader_for(server)._post(b'{"n":1}') == {"echo": {"n": 1}}


def test_a_kept_connection_serves_the_next_request(node):
    server = node([with_length, chunked, with_length])
    reader = reader_for(server)
    assert [reader._post(b'{"n":%d}' % n) for n in range(3)] == [{"echo": {"n": n}} for n in range(3)]
    assert server.connections == 1


def test_a_connection_the_node_closes_is_not_kept(node):
    server = node([until_close, with_length])
    reader = reader_for(server)
    reader._post(b'{"n":1}')
    reader._post(b'{"n":2}')
    assert server.connections == 2


def test_an_idle_connection_the_node_dropped_is_replaced_quietly(node):
    hang_up: Answer = lambda body: None  # noqa: E731 - the node closes without answering
    server = node([with_length, hang_up, with_length])
    reader = reader_for(server)
    reader._post(b'{"n":1}')
    assert reader._post(b'{"n":2}') == {"echo": {"n": 2}}
    assert [number for number, _ in server.requests] == [1, 1, 2]


def test_one_503_is_retried_and_two_are_unavailable(node):
    server = node([status(503), with_length])
    assert reader_for(server)._post(b'{"n":1}') == {"echo": {"n": 1}}
    server = node([status(503), status(503)])
    with pytest.raises(SolanaUnavailable):
        reader_for(server)._post(b'{"n":1}')


def test_a_client_error_status_is_not_retried(node):
    server = node([status(400), with_length])
    with pytest.raises(SolanaError, match="HTTP 400"):
        reader_for(server)._post(b'{"n":1}')
    assert len(server.requests) == 1


def test_garbage_is_asked_again_then_unavailable(node):
    garbage: Answer = lambda body: b"SSH-2.0-OpenSSH\r\n\r\n"  # noqa: E731
    server = node([garbage, garbage])
    with pytest.raises(SolanaUnavailable):
        reader_for(server)._post(b'{"n":1}')


def test_a_truncated_body_is_retried(node):
    truncated: Answer = lambda body: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{}"  # noqa: E731
    server = node([truncated, with_length])
    assert reader_for(server)._post(b'{"n":1}') == {"echo": {"n": 1}}


def test_a_node_that_is_down_is_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SolanaUnavailable):
        RpcTransport(f"http://127.0.0.1:{port}", timeout=2).post(b"{}", retry=True)


def test_the_request_names_the_host_path_and_length(node):
    seen: list[bytes] = []

    def record(body: bytes) -> bytes:
        seen.append(body)
        return with_length(body)

    server = node([record])
    reader_for(server)._post(b'{"jsonrpc":"2.0"}')
    assert seen == [b'{"jsonrpc":"2.0"}']
    head = server.heads[0]
    assert head.startswith(b"POST /rpc HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in head
    assert b"\r\nContent-Length: %d\r\n" % len(seen[0]) in head


def test_a_send_is_never_asked_twice(node):
    hang_up: Answer = lambda body: None  # noqa: E731 - the request arrived; the answer is lost
    server = node([hang_up, with_length])
    with pytest.raises(SolanaUnavailable):
        RpcTransport(server.url, timeout=5).post(b'{"send":1}', retry=False)
    assert len(server.requests) == 1


def test_a_send_does_not_go_out_on_a_connection_the_node_closed_while_idle(node):
    answer_then_close: Answer = lambda body: (with_length(body), CLOSE)  # noqa: E731
    server = node([answer_then_close, with_length])
    transport = RpcTransport(server.url, timeout=5)
    transport.post(b'{"n":1}', retry=True)
    deadline = time.monotonic() + 5
    while server.hung_up < 1 and time.monotonic() < deadline:  # its keep-alive timeout
        time.sleep(0.01)
    time.sleep(0.05)  # the FIN reaches this side
    assert json.loads(transport.post(b'{"send":2}', retry=False)) == {"echo": {"send": 2}}
    assert [number for number, _ in server.requests] == [1, 2]


def test_a_forked_child_opens_its_own_connection(node):
    server = node([with_length, with_length, with_length])
    transport = RpcTransport(server.url, timeout=5)
    transport.post(b'{"parent":1}', retry=True)
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        ok = json.loads(transport.post(b'{"child":1}', retry=False)) == {"echo": {"child": 1}}
        os._exit(0 if ok else 1)
    _, exit_status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(exit_status) == 0
    transport.post(b'{"parent":2}', retry=True)  # the parent's kept connection is intact
    assert [number for number, _ in server.requests] == [1, 2, 1]
