"""Raw HTTP/1.1 over a socket, for inputs no client library would send: bytes
that are not UTF-8 in header values, repeated headers, oversized heads, chunked
bodies sent piece by piece, bodies cut off half way, and clients that close in
the middle of a request or a stream. Every read has a timeout, so nothing here
can hang a test.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    # The body ended as HTTP says (content-length reached or the last chunk);
    # False when the connection closed or was reset before that.
    complete: bool = True
    elapsed: float = 0.0
    reason: str = ""
    extra: dict = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def head_bytes(method: str, path: str, headers: list[tuple[str, str | bytes]]) -> bytes:
    """A request head; values may be bytes (sent as they are, not encoded)."""
    out = bytearray(f"{method} {path} HTTP/1.1\r\n".encode())
    for k, v in headers:
        out += k.encode() + b": " + (v if isinstance(v, bytes) else v.encode("latin-1")) + b"\r\n"
    out += b"\r\n"
    return bytes(out)


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Reader:
    """Reads one HTTP/1.1 response from a socket, incrementally."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def head(self) -> tuple[int, str, list[tuple[str, str]]]:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"connection closed before a response head: {self.buf[:200]!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.append((k.strip().lower(), v.strip()))
        return int(parts[1]), (parts[2] if len(parts) > 2 else ""), headers

    def read_some(self) -> bytes:
        """Whatever body bytes (still chunk-framed) are there or come next; b'' at EOF."""
        if not self.buf:
            self._fill()
        out, self.buf = self.buf, b""
        return out

    def body(self, headers: list[tuple[str, str]]) -> tuple[bytes, bool]:
        h = {k: v for k, v in headers}
        if "content-length" in h:
            n = int(h["content-length"])
            while len(self.buf) < n and self._fill():
                pass
            body, self.buf = self.buf[:n], self.buf[n:]
            return body, len(body) == n
        if h.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while True:
                while b"\r\n" not in self.buf:
                    if not self._fill():
                        return out, False
                size_line, rest = self.buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0] or b"0", 16)
                while len(rest) < size + 2:
                    if not self._fill():
                        return out + rest[:size], False
                    size_line, rest = self.buf.split(b"\r\n", 1)
                if size == 0:
                    self.buf = rest[2:]
                    return out, True
                out += rest[:size]
                self.buf = rest[size + 2:]
        while self._fill():
            pass
        body, self.buf = self.buf, b""
        return body, True


def exchange(port: int, method: str, path: str, headers: list[tuple[str, str | bytes]], body: bytes = b"",
             timeout: float = 10.0) -> Response:
    """Sends one request (head and body at once) and reads the whole answer."""
    t0 = time.monotonic()
    with connect(port, timeout) as s:
        try:
            s.sendall(head_bytes(method, path, headers) + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the answer may already be there (e.g. an early 413 or 431)
        r = Reader(s)
        status, reason, hs = r.head()
        b, complete = r.body(hs)
    return Response(status, hs, b, complete, time.monotonic() - t0, reason)


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def sse_events(body: bytes) -> list[bytes]:
    """The `data:` payloads of an SSE body, in order."""
    out = []
    for ev in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[5:].strip() for line in ev.split(b"\n") if line.startswith(b"data:")]
        if data:
            out.append(b"\n".join(data))
    return out
