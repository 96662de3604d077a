"""benchmarks.wire / wire_count: HTTP splitting, phases, the proxy, --quick plumbing, the report."""

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from benchmarks import wire
from benchmarks.report import render
from benchmarks.wire_count import CountingProxy, Stream, exchanges, split_device, split_http1

REPO = Path(__file__).resolve().parents[1]


def _request(call: str, body: bytes = b"x" * 10) -> bytes:
    head = f"POST /v1/fleet/{call} HTTP/1.1\r\nhost: h\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _response(body: bytes = b"y" * 4, chunked: bool = False) -> bytes:
    if chunked:
        return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    return f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body


def _connection(calls: list[tuple[str, int]]) -> tuple[Stream, Stream]:
    """One connection: each (call, response body size) at times 1, 2, 3, ..."""
    up, down = Stream(), Stream()
    for t, (call, size) in enumerate(calls, start=1):
        up.add(_request(call), float(t))
        down.add(_response(b"z" * size), t + 0.5)
    return up, down


class TestSplitting:
    def test_messages_sum_to_the_stream_and_read_both_body_framings(self) -> None:
        data = _request("pull-messages") + _request("get-fab", b"") + _request("push-object")[:30]
        messages = split_http1(data)
        assert [m.first_line.split()[1] for m in messages[:2]] == [
            "/v1/fleet/pull-messages",
            "/v1/fleet/get-fab",
        ]
        assert [m.body for m in messages[:2]] == [10, 0]
        assert sum(m.size for m in messages) == len(data)  # a cut-off message still counts
        chunked = split_http1(_response(chunked=True) + _response(b"abcd"))
        assert [m.body for m in chunked] == [13, 4]  # "3\r\nabc\r\n" + "0\r\n\r\n"

    def test_phases_follow_the_app_bundle_and_the_last_push(self) -> None:
        calls = [
            ("register-node", 1), ("activate-node", 1), ("pull-messages", 2),
            ("send-node-heartbeat", 3), ("pull-messages", 50), ("get-run", 70),
            ("get-fab", 5000), ("pull-object", 300), ("confirm-message-received", 1),
            ("push-messages", 2), ("push-object", 1), ("pull-messages", 2),
            ("pull-messages", 40), ("pull-object", 300), ("push-object", 1),
            ("pull-messages", 2), ("deactivate-node", 1),
        ]  # fmt: skip
        up, down = _connection(calls)
        rows = exchanges(up, down)
        assert [e.call for e in rows] == [c for c, _ in calls]
        split = split_device(rows, rounds=2)
        down = [len(_response(b"z" * n)) for _, n in calls]
        one_off = ("register-node", "activate-node", "get-run", "get-fab", "deactivate-node")
        assert split["one_off"]["calls"] == 5
        assert split["one_off"]["down"] == sum(d for d, (c, _) in zip(down, calls) if c in one_off)
        assert split["waiting"]["calls"] == 3  # 2 polls and a heartbeat before get-fab returned
        assert split["rounds"]["calls"] == 8 and split["tail"]["calls"] == 1
        assert split["rounds"]["down"] == sum(down[7:15])  # pull-object .. the last push-object
        assert split["per_round"]["calls"] == 4.0
        assert split["total"]["up"] == sum(len(_request(c)) for c, _ in calls)
        assert split["by_call"]["get-fab"]["body"] == 10 + 5000

    def test_no_app_bundle_means_no_waiting_phase(self) -> None:
        up, down = _connection([("pull-messages", 1), ("send-node-heartbeat", 1)])
        split = split_device(exchanges(up, down), rounds=1)
        assert split["waiting"]["calls"] == 0 and split["tail"]["calls"] == 2


def _http_server() -> tuple[socket.socket, threading.Thread]:
    """A one-connection server answering each request with a 1000-byte body."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            buf = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while b"\r\n\r\n" in buf and len(buf) >= buf.index(b"\r\n\r\n") + 14:
                    buf = buf[buf.index(b"\r\n\r\n") + 14 :]
                    conn.sendall(_response(b"r" * 1000))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def test_proxy_counts_every_byte_of_a_connection() -> None:
    server, thread = _http_server()
    proxy = CountingProxy(0, server.getsockname())
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as dev:
            for call in ("pull-messages", "push-object"):
                dev.sendall(_request(call, b"b" * 10))
                got = b""
                while len(got) < len(_response(b"r" * 1000)):
                    got += dev.recv(65536)
        thread.join(5)
        calls = proxy.calls()
    finally:
        proxy.close()
        server.close()
    assert [c.call for c in calls] == ["pull-messages", "push-object"]
    assert [c.up for c in calls] == [len(_request(c.call)) for c in calls]
    assert all(c.down == len(_response(b"r" * 1000)) and c.down_body == 1000 for c in calls)


def _fake_run(label: str, payload: float, fab: int, polls: int) -> dict:
    up, down = _connection(
        [("activate-node", 1), ("get-fab", fab), ("pull-object", int(payload)),
         *[("pull-messages", 2)] * polls, ("push-object", 1)]
    )  # fmt: skip
    device = split_device(exchanges(up, down), rounds=1)
    run = {
        "label": label, "note": "", "rounds": 1, "completed_rounds": 1, "reliable": True,
        "seconds": 9.0, "exit": 0, "payload": {"up": 0.0, "down": payload, "total": payload},
        "devices": [device] * wire.NUM_DEVICES,
    }  # fmt: skip
    run["summary"] = wire.summarize(run)
    return run


def test_quick_runs_the_two_exchanges_for_one_round_and_reports_ratios(monkeypatch, tmp_path):
    seen = []

    def fake_deploy(variant, rounds, ports, work):
        seen.append((variant.label, rounds, len(ports)))
        big = variant.label == wire.FLOAT32
        return {k: v for k, v in _fake_run(variant.label, 30000 if big else 1000, 500, 3).items()
                if k != "summary"}  # fmt: skip

    monkeypatch.setattr(wire, "deploy", fake_deploy)
    monkeypatch.setattr(wire, "fab_bytes", lambda tmp: {"configured": 9, "without_exclude": 10})
    args = wire.build_parser().parse_args(["--quick", "--out", str(tmp_path)])
    res = wire.measure(args)
    assert seen == [(wire.BASELINE, 1, 7), (wire.FLOAT32, 1, 7)]
    ratio = res["ratios"][wire.BASELINE]
    assert ratio["payload"] == 30.0 and 1 < ratio["wire_total"] < ratio["wire_rounds"] < 30
    res |= {"name": "wire", "machine": {"date": "2026-01-02", "cpu": "Fake"}, "seconds": 1}
    doc = render({"wire": res}, tmp_path, tmp_path)
    assert "## 4d. Bytes on the wire of a real deployment" in doc
    assert f"{ratio['payload']:.1f}×" in doc and "`float32` / `1-bit`" in doc


def test_unknown_variant_is_one_line_in_the_json(tmp_path) -> None:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.wire", "--only", "nope", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    res = json.loads((tmp_path / "wire.json").read_text())
    assert (
        "unknown variant(s) ['nope']" in res["error"]
        and "benchmarks.wire --only nope" in res["command"]
    )
    assert not (tmp_path / "wire.png").exists()


@pytest.mark.parametrize("argv", [["--rounds", "5"], ["--only", "1-bit, float32"]])
def test_parser_options(argv: list[str]) -> None:
    args = wire.build_parser().parse_args(argv)
    assert args.rounds in (3, 5) and args.base_port == 39100
    assert args.only in (None, ["1-bit", "float32"])
