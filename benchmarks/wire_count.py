"""Count what crosses the SuperLink port, per device, and split it by Fleet API call.

Why a proxy and not a packet capture: each SuperNode dials its own :class:`CountingProxy`
port, which forwards every byte to the SuperLink and records it with a timestamp. That needs no
root and no tcpdump, attributes bytes to a device by the port it dialled (a capture would have
to map ephemeral source ports to processes), and counts exactly what a capture's "TCP payload"
counts: the bytes written into and read out of the device's TCP connections (not the TCP/IP
headers, and not retransmissions, which loopback does not have). The ``flwr`` CLI and the
ServerApp talk to the SuperLink directly, so only device traffic is counted.

Flower 1.42's SuperNode speaks protobuf over plain HTTP/1.1 to the Fleet API (``httpx``, one
request at a time per connection; ``--insecure`` here, so the stream is readable).
:func:`split_http1` cuts each direction of a connection into HTTP messages (head and body
lengths), and :func:`exchanges` pairs the i-th request with the i-th response, stamped with the
time its response completed. :func:`split_device` then sorts one device's exchanges into the
phases the benchmark reports (see its docstring for the boundaries).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CountingProxy",
    "Exchange",
    "HttpMessage",
    "ONE_OFF_CALLS",
    "Stream",
    "exchanges",
    "split_device",
    "split_http1",
]

#: Fleet API calls a device makes once per life or per run, whenever they happen.
ONE_OFF_CALLS = (
    "register-node",
    "activate-node",
    "get-run",
    "get-fab",
    "deactivate-node",
    "unregister-node",
)
_CHUNK = 65536


@dataclass
class Stream:
    """One direction of one TCP connection: its bytes and when each chunk was seen."""

    data: bytearray = field(default_factory=bytearray)
    marks: list[tuple[float, int]] = field(default_factory=list)  # (time, end offset)

    def add(self, chunk: bytes, when: float) -> None:
        """Append ``chunk`` read at monotonic time ``when``."""
        self.data += chunk
        self.marks.append((when, len(self.data)))

    def time_at(self, offset: int) -> float:
        """When the byte at ``offset - 1`` had arrived (the chunk that completed it)."""
        for when, end in self.marks:
            if end >= offset:
                return when
        return self.marks[-1][0] if self.marks else 0.0


@dataclass(frozen=True)
class HttpMessage:
    """One HTTP/1.1 request or response: its first line and the byte counts of head and body."""

    first_line: str
    head: int  # start line + headers + the blank line
    body: int  # body bytes as sent (chunk-size lines included when chunked)
    end: int  # offset just past the message in its stream

    @property
    def size(self) -> int:
        """Bytes on the wire."""
        return self.head + self.body


def _header(head: bytes, name: str) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.encode():
            return value.strip().decode("latin-1")
    return None


def _chunked_length(data: bytes, start: int) -> int | None:
    """Bytes of a chunked body starting at ``start`` (None while incomplete)."""
    pos = start
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(data[pos:eol].split(b";")[0], 16)
        pos = eol + 2 + size + 2
        if size == 0:  # last chunk; no trailers are used by httpx or the SuperLink
            return pos - start if pos <= len(data) else None


def split_http1(data: bytes) -> list[HttpMessage]:
    """Cut one direction of an HTTP/1.1 connection into messages.

    Bodies are delimited by ``Content-Length`` or ``Transfer-Encoding: chunked``; a message
    without either has no body (requests) or ends with the stream (responses). A message cut
    short by the end of the capture is returned with what arrived of it, so the sum of sizes is
    always ``len(data)``.
    """
    out: list[HttpMessage] = []
    pos = 0
    while pos < len(data):
        sep = data.find(b"\r\n\r\n", pos)
        if sep < 0:
            out.append(HttpMessage("(incomplete)", len(data) - pos, 0, len(data)))
            break
        head = bytes(data[pos : sep + 4])
        first = head.split(b"\r\n", 1)[0].decode("latin-1")
        length = _header(head, "content-length")
        if length is not None:
            body = int(length)
        elif "chunked" in (_header(head, "transfer-encoding") or "").lower():
            body = _chunked_length(data, sep + 4)
            body = len(data) - sep - 4 if body is None else body
        else:
            body = 0 if not first.startswith("HTTP/") else len(data) - sep - 4
        body = min(body, len(data) - sep - 4)
        pos = sep + 4 + body
        out.append(HttpMessage(first, len(head), body, pos))
    return out


@dataclass(frozen=True)
class Exchange:
    """One Fleet API call on the wire: request and response bytes, when the response ended."""

    call: str  # last path component: pull-messages, push-object, get-fab, ...
    up_head: int
    up_body: int
    down_head: int
    down_body: int
    time: float

    @property
    def up(self) -> int:
        """Bytes the device sent."""
        return self.up_head + self.up_body

    @property
    def down(self) -> int:
        """Bytes the device received."""
        return self.down_head + self.down_body


def exchanges(up: Stream, down: Stream) -> list[Exchange]:
    """Pair the requests of ``up`` with the responses of ``down`` (one connection)."""
    requests, responses = split_http1(bytes(up.data)), split_http1(bytes(down.data))
    out = []
    for i, req in enumerate(requests):
        parts = req.first_line.split()
        call = parts[1].rstrip("/").rsplit("/", 1)[-1] if len(parts) > 1 else "(unparsed)"
        res = responses[i] if i < len(responses) else HttpMessage("", 0, 0, 0)
        when = down.time_at(res.end) if res.end else up.time_at(req.end)
        out.append(Exchange(call, req.head, req.body, res.head, res.body, when))
    for res in responses[len(requests) :]:  # a response with no request: count it anyway
        out.append(Exchange("(unpaired)", 0, 0, res.head, res.body, down.time_at(res.end)))
    return out


def _sums(rows: list[Exchange]) -> dict[str, int]:
    return {"up": sum(e.up for e in rows), "down": sum(e.down for e in rows), "calls": len(rows)}


def split_device(calls: list[Exchange], rounds: int) -> dict[str, Any]:
    """Sort one device's Fleet API calls into phases; bytes per direction for each.

    Boundaries (``calls`` in time order; the SuperNode pulls a message, then fetches the run
    and the app bundle, then the message's objects):

    * ``one_off``: every call in :data:`ONE_OFF_CALLS` (registration and activation, run info,
      the app bundle, deactivation at the end), whenever it happens;
    * ``waiting``: the other calls that end before the device's first ``get-fab`` completes
      (heartbeats and polls while the run starts, and the pull that brings the first message's
      metadata): the first training message has reached the device when ``get-fab`` returns,
      its objects come next;
    * ``rounds``: from there to the device's last ``push-object``/``push-messages`` (its last
      reply is on the server): every pull, object transfer, confirmation, poll and heartbeat
      of the training rounds;
    * ``tail``: what follows (polls and heartbeats until the run ends and the node stops).

    ``per_round`` is ``rounds`` divided by ``rounds``; ``by_call`` totals each call type.
    """
    fab = next((i for i, e in enumerate(calls) if e.call == "get-fab"), None)
    pushes = [i for i, e in enumerate(calls) if e.call in ("push-object", "push-messages")]
    start = -1 if fab is None else fab
    stop = pushes[-1] if pushes else start
    phases: dict[str, list[Exchange]] = {"one_off": [], "waiting": [], "rounds": [], "tail": []}
    for i, e in enumerate(calls):
        if e.call in ONE_OFF_CALLS:
            phases["one_off"].append(e)
        elif i <= start:
            phases["waiting"].append(e)
        elif i <= stop:
            phases["rounds"].append(e)
        else:
            phases["tail"].append(e)
    out: dict[str, Any] = {name: _sums(rows) for name, rows in phases.items()}
    out["total"] = _sums(calls)
    window = out["rounds"]
    out["per_round"] = {k: window[k] / rounds for k in ("up", "down", "calls")} if rounds else {}
    by_call: dict[str, dict[str, int]] = {}
    for e in calls:
        row = by_call.setdefault(e.call, {"calls": 0, "up": 0, "down": 0, "head": 0, "body": 0})
        row["calls"] += 1
        row["up"] += e.up
        row["down"] += e.down
        row["head"] += e.up_head + e.down_head
        row["body"] += e.up_body + e.down_body
    out["by_call"] = dict(sorted(by_call.items(), key=lambda kv: -(kv[1]["up"] + kv[1]["down"])))
    return out


class CountingProxy:
    """Forward ``127.0.0.1:listen_port`` to ``target``; keep every byte of every connection.

    One thread accepts; each connection gets two pump threads (device -> SuperLink is ``up``).
    :meth:`connections` returns ``(up, down)`` :class:`Stream` pairs in the order connections
    were accepted. Memory: the whole stream is kept (a few MB for the runs measured here).
    """

    def __init__(self, listen_port: int, target: tuple[str, int]) -> None:
        self.target = target
        self._server = socket.create_server(("127.0.0.1", listen_port))
        self._lock = threading.Lock()
        self._conns: list[tuple[Stream, Stream]] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        """The port devices dial."""
        return self._server.getsockname()[1]

    def _accept(self) -> None:
        while not self._closed:
            try:
                device, _ = self._server.accept()
            except OSError:
                return
            try:
                link = socket.create_connection(self.target, timeout=10)
                link.settimeout(None)
            except OSError:
                device.close()
                continue
            up, down = Stream(), Stream()
            with self._lock:
                self._conns.append((up, down))
            for src, dst, stream in ((device, link, up), (link, device, down)):
                threading.Thread(target=self._pump, args=(src, dst, stream), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, stream: Stream) -> None:
        try:
            while chunk := src.recv(_CHUNK):
                with self._lock:
                    stream.add(chunk, time.monotonic())
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def connections(self) -> list[tuple[Stream, Stream]]:
        """The ``(up, down)`` streams of every connection so far."""
        with self._lock:
            return list(self._conns)

    def calls(self) -> list[Exchange]:
        """Every Fleet API call through this proxy, in the order their responses completed."""
        rows = [e for up, down in self.connections() for e in exchanges(up, down)]
        return sorted(rows, key=lambda e: e.time)

    def close(self) -> None:
        """Stop accepting (open connections end when either side closes them)."""
        self._closed = True
        self._server.close()
