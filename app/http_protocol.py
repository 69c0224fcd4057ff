"""uvicorn's httptools protocol with the bounds it lacks, for `python -m app` without a
proxy in front.

uvicorn bounds headers only for h11 (`h11_max_incomplete_event_size`), and has no timeout
for reading a request's headers: its keep-alive timer starts after a response, so a
connection that never completes a request line and headers stayed open indefinitely, and
a 20 MB header was read into memory. Here:

- the request line and headers may take MAX_HEADER_BYTES in all; beyond that the request
  is answered 431 and the connection closed (memory held: the bound plus two reads);
- they must arrive within HEADER_TIMEOUT_SECONDS of the connection opening or of the
  request's first byte, or the connection is closed (slow or partial headers, idle
  connections that never send a request);
- idle keep-alive connections are closed by uvicorn's own `timeout_keep_alive`.

h11 (pure Python) would bound headers itself, at a multiple of httptools' cost per request.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 16 * 1024
HEADER_TIMEOUT_SECONDS = 10.0
KEEP_ALIVE_SECONDS = 5

_BODY = (
    b'{"type":"urn:mms-gateway:problem:headers_too_large",'
    b'"title":"Request header fields too large","status":431,'
    b'"detail":"The request line and headers may take at most 16 KiB.",'
    b'"code":"headers_too_large"}'
)
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/problem+json\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _BODY
)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_headers = False  # between a request's first byte and its headers' end
        self._header_size = 0  # exact: request target, names and values (parser callbacks)
        self._raw_size = 0  # raw bytes read while the headers were incomplete
        self._requests_begun = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()  # a connection that never sends a request is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        begun = self._requests_begun
        super().data_received(data)
        if self._in_headers and not self._refused:
            # Headers still incomplete. A read wholly inside them counts in full; the read
            # in which the request began is not counted (part of it may be a previous
            # request's body), so the parser holds at most the bound plus two reads.
            if self._requests_begun == begun:
                self._raw_size += len(data)
            if self._raw_size > MAX_HEADER_BYTES:
                self._refuse()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._header_size, self._raw_size = True, 0, 0
        self._requests_begun += 1
        if self._header_timer is None:
            self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._header_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_size += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm_header_timer()
        if self._header_size > MAX_HEADER_BYTES:
            self._refuse()  # all of it arrived in one read
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def _refuse(self) -> None:
        self._refused = True
        self._disarm_header_timer()
        if not self.transport.is_closing():
            self.transport.write(_TOO_LARGE)
            self.transport.close()

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT_SECONDS, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()
