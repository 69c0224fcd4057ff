"""`python -m app` without a proxy in front (row 14): headers bounded, slow and idle
connections closed, no redirect that echoes the Host header. Raw sockets against the real
server, since these bounds live in the HTTP server, below the app."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from app.http_protocol import HEADER_TIMEOUT_SECONDS, KEEP_ALIVE_SECONDS, MAX_HEADER_BYTES

# One worker for the module: its tests share one server.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("http_bounds")]


@pytest.fixture(scope="module")
def server(module_server_factory):
    """One server for the module: each test opens its own connections to it."""
    return module_server_factory()


def _connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, BrokenPipeError):
        pass
    return b"".join(chunks)


def _closed_after(sock: socket.socket, started: float) -> float:
    _read_all(sock)
    return time.monotonic() - started


def test_row14_oversized_headers_are_refused_431(server):
    """Row 14: a 20 MB header was read into memory and the request served. Headers over
    16 KiB in all get 431 and a closed connection, whether they arrive in one read or
    trickle in; headers under the bound are served."""
    with _connect(server) as sock:  # under the bound: served
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 12_000 + b"\r\n"
            b"Connection: close\r\n\r\n"
        )
        assert _read_all(sock).startswith(b"HTTP/1.1 200")
    with _connect(server) as sock:  # a large body, then a pipelined request's first bytes
        body = b'{"text": "' + b"b" * 40_000 + b'"}'
        sock.sendall(
            b"POST /api/mms/send HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
            + b"GET /health HTTP/1.1\r\nHost: a\r\n"
        )
        time.sleep(0.2)
        sock.sendall(b"Connection: close\r\n\r\n")
        answers = _read_all(sock)
        assert answers.startswith(b"HTTP/1.1 422") and b"HTTP/1.1 200" in answers, answers[:300]
    with _connect(server) as sock:  # over it, in one write
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * MAX_HEADER_BYTES + b"\r\n\r\n"
        )
        answer = _read_all(sock)
        assert answer.startswith(b"HTTP/1.1 431") and b"headers_too_large" in answer
    with _connect(server) as sock:  # streaming a huge header: cut off long before its end
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\nX-Big: ")
        sent = 0
        try:
            while sent < 20_000_000:
                sock.sendall(b"x" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent < 20_000_000
        answer = _read_all(sock)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431")


def test_row14_slow_partial_and_idle_connections_are_closed(server):
    """Row 14: idle and partial-header connections stayed open over 70 s. A connection
    that sends no request, stops mid-headers or trickles them is closed once
    HEADER_TIMEOUT_SECONDS have passed since it opened; an idle keep-alive connection
    after a response within KEEP_ALIVE_SECONDS."""
    bound = HEADER_TIMEOUT_SECONDS + 3
    idle, partial, trickle, kept = (_connect(server) for _ in range(4))
    started = time.monotonic()
    partial.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n")
    kept.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
    assert kept.recv(65536).startswith(b"HTTP/1.1 200")
    kept_started = time.monotonic()

    stop = threading.Event()

    def drip() -> None:  # one header byte every 0.5 s, never finishing
        try:
            trickle.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            while not stop.wait(0.5):
                trickle.sendall(b"s")
        except OSError:
            pass

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        assert _closed_after(kept, kept_started) < KEEP_ALIVE_SECONDS + 3
        for sock in (idle, partial, trickle):
            assert _closed_after(sock, started) < bound
    finally:
        stop.set()
        dripper.join(5)
        for sock in (idle, partial, trickle, kept):
            sock.close()


def test_row14_trailing_slash_is_404_without_echoing_host(server):
    """Row 14: `/api/mms/send/` answered 307 with Location built from the Host header."""
    with _connect(server) as sock:
        sock.sendall(
            b"POST /api/mms/send/ HTTP/1.1\r\nHost: evil.example\r\nContent-Type: "
            b"application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        )
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 404"), answer[:200]
    assert b"evil.example" not in answer
