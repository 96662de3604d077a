"""bitfed-server / bitfed-client / server.certs: command builders, credentials, and real
deployments (SuperLink + SuperNodes as processes, TLS and node authentication on)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tomllib
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from flwr.common.config import parse_config_args

from client.deploy import SuperNodeSpec, node_config, supernode_argv
from client.deploy import main as client_main
from glue.flower_env import flower_executable
from glue.lean_flower import ENTRY_POINTS
from server.certs import generate_server_credentials, generate_supernode_key
from server.certs import main as certs_main
from server.deploy import (
    ServerLayout,
    SuperLinkSpec,
    TlsFiles,
    compose_experiment,
    deployment_run_config,
    superlink_argv,
    write_connection,
    write_run_config,
)
from tests.server.deploy_harness import (
    BIN,
    FLOWER_ENV,
    FootprintSampler,
    Processes,
    cmdline,
    free_port,
    wait_for,
)


# ----------------------------------------------------------------------------- command builders
class TestSuperLinkCommand:
    def test_tls_auth_database_no_runtime_install(self) -> None:
        spec = SuperLinkSpec(
            host="127.0.0.1", port=1234, database="/s/state.db", tls=TlsFiles.in_dir("/c")
        )
        assert superlink_argv(spec) == [
            "--ssl-ca-certfile", "/c/ca.crt", "--ssl-certfile", "/c/server.pem",
            "--ssl-keyfile", "/c/server.key", "--enable-supernode-auth",
            "--disable-runtime-dependency-installation", "--database", "/s/state.db",
            "--isolation", "subprocess", "--host", "127.0.0.1", "--port", "1234",
        ]  # fmt: skip

    def test_insecure_has_no_auth_and_auth_needs_tls(self) -> None:
        argv = superlink_argv(SuperLinkSpec(tls=None, node_auth=False))
        assert argv[0] == "--insecure" and "--enable-supernode-auth" not in argv
        with pytest.raises(ValueError, match="needs TLS"):
            SuperLinkSpec(tls=None)


class TestSuperNodeCommand:
    def spec(self, **kw) -> SuperNodeSpec:
        base = dict(
            superlink="10.0.0.1:8000",
            data_root="/data/my digits",
            partition_id=2,
            num_partitions=5,
            root_certificates="/c/ca.crt",
            auth_key="/c/sn",
            port=9200,
        )
        return SuperNodeSpec(**(base | kw))

    def test_node_config_round_trips_through_flower(self) -> None:
        spec = self.spec(state_dir="/var/bitfed")
        assert parse_config_args([node_config(spec)]) == {
            "partition-id": 2,
            "num-partitions": 5,
            "data-root": "/data/my digits",
            "state-dir": "/var/bitfed",
        }

    def test_argv_tls_auth_and_unlimited_reconnect(self) -> None:
        argv = supernode_argv(self.spec())
        assert argv[:6] == [
            "--superlink", "10.0.0.1:8000", "--root-certificates", "/c/ca.crt",
            "--auth-supernode-private-key", "/c/sn",
        ]  # fmt: skip
        assert "--insecure" not in argv and "--max-retries" not in argv
        assert "--max-wait-time" not in argv  # reconnect for ever (server restarts)
        assert argv[argv.index("--port") + 1] == "9200"

    @pytest.mark.parametrize(
        ("kw", "message"),
        [
            ({"num_partitions": None}, "both --partition-id and --num-partitions"),
            ({"partition_id": 5}, r"must be in \[0, 5\)"),
            ({"superlink": "nohostport"}, "not HOST:PORT"),
            ({"insecure": True}, "cannot be combined"),
            ({"root_certificates": None, "auth_key": None}, "TLS is on by default"),
            ({"data_root": 'a"b'}, "without quotes"),
        ],
    )
    def test_bad_input_is_one_clear_line(self, kw: dict, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            self.spec(**kw)

    def test_cli_dry_run_prints_the_builder_command(self, tmp_path, capsys) -> None:
        creds = generate_server_credentials(tmp_path, ["127.0.0.1"])
        key = generate_supernode_key(tmp_path, "sn")
        argv = ["--superlink", "127.0.0.1:9", "--data-root", str(tmp_path)]
        argv += ["--partition-id", "0", "--num-partitions", "2", "--port", "9300"]
        argv += ["--root-certificates", str(creds.ca_cert), "--auth-key", str(key.private)]
        client_main([*argv, "--dry-run"])
        printed = capsys.readouterr().out.split()
        assert printed[0].endswith("flower-supernode")
        spec = SuperNodeSpec(
            "127.0.0.1:9", str(tmp_path.resolve()), 0, 2, str(creds.ca_cert), str(key.private),
            port=9300,
        )  # fmt: skip
        assert " ".join(printed[1:]) == " ".join(supernode_argv(spec))

    def test_cli_starts_lean_flower_scripts_unless_told_plain(
        self, tmp_path, capsys, monkeypatch
    ) -> None:
        monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
        argv = ["--superlink", "127.0.0.1:9", "--data-root", str(tmp_path), "--insecure"]
        client_main([*argv, "--dry-run"])
        lean = tmp_path / "home" / "bitfed-lean-bin"
        assert capsys.readouterr().out.split()[0] == str(lean / "flower-supernode")
        assert sorted(p.name for p in lean.iterdir()) == sorted(ENTRY_POINTS)
        client_main([*argv, "--dry-run", "--plain-flower"])
        assert capsys.readouterr().out.split()[0] == flower_executable("flower-supernode")

    def test_cli_missing_certificate_exits_with_one_line(self, tmp_path, capsys) -> None:
        with pytest.raises(SystemExit) as err:
            client_main(["--superlink", "h:1", "--data-root", str(tmp_path),
                         "--root-certificates", str(tmp_path / "nope.crt")])  # fmt: skip
        assert err.value.code == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"bitfed-client: error: --root-certificates {tmp_path}/nope.crt: no such file"
        ]


# ----------------------------------------------------------------------------- credentials
class TestCertificates:
    def test_server_cert_is_signed_by_ca_with_sans(self, tmp_path) -> None:
        creds = generate_server_credentials(tmp_path, ["superlink", "127.0.0.1"])
        ca = x509.load_pem_x509_certificate(Path(creds.ca_cert).read_bytes())
        cert = x509.load_pem_x509_certificate(Path(creds.server_cert).read_bytes())
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == ["superlink"]
        assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert oct(creds.server_key.stat().st_mode & 0o777) == "0o600"
        with pytest.raises(FileExistsError):
            generate_server_credentials(tmp_path, ["x"])

    def test_supernode_key_is_openssh_p384(self, tmp_path) -> None:
        key = generate_supernode_key(tmp_path, "supernode-1")
        private = load_ssh_private_key(key.private.read_bytes(), password=None)
        public = load_ssh_public_key(key.public.read_bytes())
        assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"
        assert private.public_key().public_numbers() == public.public_numbers()
        assert oct(key.private.stat().st_mode & 0o777) == "0o600"

    def test_cli_prints_paths_never_secrets(self, tmp_path, capsys) -> None:
        certs_main(["--out", str(tmp_path), "--hosts", "127.0.0.1", "--supernodes", "2"])
        out = capsys.readouterr().out
        assert "PRIVATE KEY" not in out and "BEGIN" not in out
        secret = (tmp_path / "supernode-1").read_text().splitlines()[1]
        assert secret not in out
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "ca.crt", "ca.key", "server.key", "server.pem", "supernode-1", "supernode-1.pub",
            "supernode-2", "supernode-2.pub",
        ]  # fmt: skip


# ----------------------------------------------------------------------------- server pieces
def test_run_config_file_is_what_flower_reads(tmp_path) -> None:
    cfg = compose_experiment(["federation.num_rounds=2", "recipe=lowcost", "output_dir='a b\"c'"])
    layout = ServerLayout(tmp_path, tmp_path / "certs")
    flat = deployment_run_config(cfg, layout)
    assert flat["federation.checkpoint_dir"] == str(tmp_path / "checkpoints")
    path = write_run_config(flat, tmp_path / "rc.toml")
    assert tomllib.loads(path.read_text()) == flat
    assert parse_config_args([str(path)]) == flat  # exactly how `flwr run -c FILE` reads it


def test_bad_override_is_one_line(tmp_path) -> None:
    result = subprocess.run(
        [str(BIN / "bitfed-server"), "--insecure", "--state-dir", str(tmp_path),
         "federation.bogus=1"],
        capture_output=True, text=True, timeout=60, env={**os.environ, **FLOWER_ENV},
    )  # fmt: skip
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("bitfed-server: error: bad config or override") and "bogus" in last
    assert "+federation.bogus" not in last  # not Hydra's advice to append the key
    assert "LOCAL DEVELOPMENT ONLY" in result.stderr  # --insecure says so loudly


def test_missing_certificates_name_the_fix(tmp_path) -> None:
    result = subprocess.run(
        [str(BIN / "bitfed-server"), "--state-dir", str(tmp_path), "--port", str(free_port())],
        capture_output=True, text=True, timeout=60, env={**os.environ, **FLOWER_ENV},
    )  # fmt: skip
    assert result.returncode == 2
    assert "python -m server.certs" in result.stderr and "--insecure" in result.stderr


def test_port_in_use_is_one_line(tmp_path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [str(BIN / "bitfed-server"), "--insecure", "--no-run", "--host", "127.0.0.1",
             "--port", str(port), "--state-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60, env={**os.environ, **FLOWER_ENV},
        )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"bitfed-server: error: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "stop what uses it or pick another --port"
    )


def test_connection_file_is_what_flower_reads(tmp_path, monkeypatch) -> None:
    from flwr.cli.flower_config import read_superlink_connection

    ca = generate_server_credentials(tmp_path / "c", ["127.0.0.1"]).ca_cert
    write_connection(tmp_path / "home", "127.0.0.1:4321", str(ca))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    conn = read_superlink_connection()
    assert (conn.name, conn.address, conn.root_certificates) == (
        "bitfed",
        "127.0.0.1:4321",
        str(ca),
    )


# ----------------------------------------------------------------------------- real deployments
def test_serve_then_register_from_outside_like_compose(tmp_path) -> None:
    """`--no-run` serves a TLS SuperLink; `--connect ... --no-run` (compose's one-shot
    `register` service) registers keys against it, and again after that without error."""
    procs = Processes()
    port = free_port()
    env = {**os.environ, **FLOWER_ENV}
    try:
        link = procs.start(
            [str(BIN / "bitfed-server"), "--no-run", "--host", "127.0.0.1", "--port", str(port),
             "--state-dir", str(tmp_path / "link"), "--dev-certs", "127.0.0.1"],
            tmp_path / "link.log", env,
        )  # fmt: skip
        wait_for(lambda: "serving" in (tmp_path / "link.log").read_text(), 60, "the SuperLink")
        key = generate_supernode_key(tmp_path / "keys", "supernode-1")
        register = [str(BIN / "bitfed-server"), "--connect", f"127.0.0.1:{port}", "--no-run"]
        register += ["--certs-dir", str(tmp_path / "link" / "certs")]
        register += ["--state-dir", str(tmp_path / "cli"), "--supernode-key", str(key.public)]
        first = subprocess.run(register, capture_output=True, text=True, timeout=60, env=env)
        again = subprocess.run(register, capture_output=True, text=True, timeout=60, env=env)
        assert first.returncode == 0 and "registered supernode-1.pub as node " in first.stdout
        assert again.returncode == 0 and "supernode-1.pub was already registered" in again.stdout
        assert link.poll() is None  # the registrar exits; the served SuperLink stays up
    finally:
        procs.stop_all()


def _app_ready() -> bool:
    try:
        from core import build_model  # noqa: F401
        from server.server_app import run_server  # noqa: F401
    except ImportError:
        return False
    return True


needs_app = pytest.mark.skipif(not _app_ready(), reason="the federation apps have not landed")


class Federation:
    """One bitfed-server and its bitfed-client nodes, in a temp folder; stopped by PID."""

    def __init__(self, tmp: Path, num_nodes: int, wrap=lambda k, argv: argv) -> None:
        self.tmp, self.num_nodes, self.wrap = tmp, num_nodes, wrap
        self.procs = Processes()
        self.keys = tmp / "keys"
        self.state = tmp / "state"
        self.out = tmp / "out"
        self.data = tmp / "data"
        self.data.mkdir()
        self.env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(tmp / "cli-home")}
        self.port = free_port()
        for k in range(1, num_nodes + 1):
            generate_supernode_key(self.keys, f"supernode-{k}")

    def server(self, overrides: list[str], hosts: str, host: str = "127.0.0.1"):
        argv = [str(BIN / "bitfed-server"), "--host", host, "--port", str(self.port)]
        argv += ["--state-dir", str(self.state), "--dev-certs", hosts]
        for k in range(1, self.num_nodes + 1):
            argv += ["--supernode-key", str(self.keys / f"supernode-{k}.pub")]
        argv += [f"output_dir={self.out}", *overrides]
        self.server_proc = self.procs.start(self.wrap(0, argv), self.tmp / "server.log", self.env)
        wait_for(lambda: "registered supernode-" in self.log(), 60, "key registration")
        return self.server_proc

    def node(self, k: int, key: str, superlink: str) -> subprocess.Popen:
        argv = [str(BIN / "bitfed-client"), "--superlink", superlink]
        argv += ["--data-root", str(self.data), "--state-dir", str(self.tmp / f"node{k}")]
        partition = (k - 1) % self.num_nodes
        argv += ["--partition-id", str(partition), "--num-partitions", str(self.num_nodes)]
        argv += ["--root-certificates", str(self.state / "certs" / "ca.crt")]
        argv += ["--auth-key", str(self.keys / key), "--port", str(free_port())]
        return self.procs.start(self.wrap(k, argv), self.tmp / f"node{k}.log", self.env)

    def log(self) -> str:
        return (self.tmp / "server.log").read_text(errors="replace")

    def metrics(self) -> dict:
        path = self.out / "metrics.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def rounds(self) -> list[int]:
        """Completed federated rounds (0 is the evaluation of the initial model)."""
        return [r["round"] for r in self.metrics().get("rounds", []) if r["round"] > 0]


TINY = [
    "recipe=lowcost",
    "train.max_batches=2",
    "train.num_threads=1",
    "federation.round_timeout=120",
    "federation.node_wait_timeout=90",
]


def _clients(n: int) -> list[str]:
    return [f"federation.{k}={n}" for k in ("num_clients", "clients_per_round", "min_clients")]


def _link_pid(log: str, nth: int = -1) -> int:
    return int(log.split("SuperLink pid ")[nth].split()[0])


def _assert_no_secret_written(root: Path, secret_dirs: list[Path]) -> None:
    """No line of any private key under ``secret_dirs`` appears in any other file under ``root``
    (logs, results, checkpoints, client state, Flower homes, the state database)."""
    secrets = set()
    for folder in secret_dirs:
        for key in folder.iterdir():
            if key.suffix in (".pub", ".crt", ".pem"):
                continue
            body = [ln for ln in key.read_text().splitlines() if "-----" not in ln]
            secrets |= {ln.encode() for ln in body if len(ln) >= 20}
    assert secrets, "no private key found to look for"
    for path in root.rglob("*"):
        if not path.is_file() or any(d in path.parents for d in secret_dirs):
            continue
        data = path.read_bytes()
        assert not any(s in data for s in secrets), f"private key material in {path}"
        if path.suffix != ".py":
            assert b"PRIVATE KEY" not in data, f"a private key in {path}"


@pytest.mark.slow
@needs_app
def test_tls_federation_refuses_strangers_and_survives_a_superlink_restart(tmp_path) -> None:
    """3 registered SuperNodes + 1 unregistered, TLS and node auth on, 2 rounds of lowcost;
    the SuperLink is killed (-9) once round 1 is checkpointed, bitfed-server starts it again
    on the same database and the run resumes from that checkpoint and completes round 2."""
    fed = Federation(tmp_path, num_nodes=3)
    try:
        server = fed.server([*TINY, *_clients(3), "federation.num_rounds=2"], "127.0.0.1")
        address = f"127.0.0.1:{fed.port}"
        nodes = [fed.node(k, f"supernode-{k}", address) for k in (1, 2, 3)]
        # a device whose key was never registered is refused, with Flower's activation error
        generate_supernode_key(fed.keys, "rogue")
        rogue = fed.node(4, "rogue", address)
        assert rogue.wait(60) != 0
        assert "Failed to activate SuperNode" in (tmp_path / "node4.log").read_text()

        # the processes run exactly the builders' commands (compose.yaml is checked against
        # the same builders in tests/test_compose.py)
        link_pid = _link_pid(fed.log())
        link_spec = SuperLinkSpec(
            host="127.0.0.1",
            port=fed.port,
            database=str(fed.state / "state.db"),
            tls=TlsFiles.in_dir(fed.state / "certs"),
        )
        assert cmdline(link_pid)[2:] == superlink_argv(link_spec)
        node_argv = cmdline(nodes[0].pid)[2:]
        assert node_argv == supernode_argv(
            SuperNodeSpec(
                address, str(fed.data), 0, 3, str(fed.state / "certs" / "ca.crt"),
                str(fed.keys / "supernode-1"), port=int(node_argv[-1]),
                state_dir=str(tmp_path / "node1"),
            )
        )  # fmt: skip

        wait_for(lambda: fed.rounds() == [1], 180, "round 1", period=0.2)
        os.kill(link_pid, 9)  # the server machine's SuperLink dies mid-run

        assert server.wait(240) == 0, fed.log()[-3000:]
        log = fed.log()
        assert "restarting it on" in log and _link_pid(log) != link_pid
        assert "resuming from" in log and "1 rounds done" in log
        assert re.search(r"^bitfed-server: run \d+ finished:completed$", log, re.M)
        assert fed.rounds() == [1, 2] and fed.metrics()["finished"]  # nothing lost or repeated
        # the same per-round table, summary and files as bitfed-sim
        assert "final global test accuracy" in log and (fed.out / "rounds.csv").is_file()
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in fed.metrics()["rounds"])
        for text in (log, (fed.state / "run-config.toml").read_text()):
            assert "PRIVATE KEY" not in text  # no secret printed or written
        _assert_no_secret_written(tmp_path, [fed.state / "certs", fed.keys])
        # the resumed server went on with the 1-bit delta: the devices' replicas stayed valid
        metrics = fed.metrics()
        rounds = metrics["rounds"]
        assert rounds[1]["downlink_bytes"] == 0, rounds  # version 0 built from the seed
        assert 0 < rounds[2]["downlink_bytes"] < metrics["float32_bytes"] / 20, rounds
    finally:
        fed.procs.stop_all()


@pytest.mark.slow
@needs_app
@pytest.mark.skipif(
    not os.environ.get("BITFED_FOOTPRINT_JSON"),
    reason="measurement: BITFED_FOOTPRINT_JSON=out.json [BITFED_FOOTPRINT_ARGS='model=cnv ...']",
)
def test_device_footprint(tmp_path) -> None:
    """Peak RSS of each client-side process kind and seconds per round, written as JSON."""
    extra = os.environ.get("BITFED_FOOTPRINT_ARGS", "").split()
    rounds = 3
    fed = Federation(tmp_path, num_nodes=3)
    try:
        overrides = [*TINY, *_clients(3), f"federation.num_rounds={rounds}", *extra]
        server = fed.server(overrides, "127.0.0.1")
        nodes = [fed.node(k, f"supernode-{k}", f"127.0.0.1:{fed.port}") for k in (1, 2, 3)]
        sampler = FootprintSampler([n.pid for n in nodes])
        sampler.start()
        assert server.wait(600) == 0, fed.log()[-3000:]
        footprint = sampler.stop()
        metrics = fed.metrics()
        assert fed.rounds() == list(range(1, rounds + 1))
        train = [r.get("train_time") for r in metrics["rounds"] if r["round"] > 0]
        result = {
            "overrides": overrides,
            "nodes": 3,
            "rounds": rounds,
            "processes": footprint,
            "server_seconds_per_round": metrics["seconds"] / rounds,
            "client_train_seconds": train,
            "client_peak_memory_metric_mb": [
                round(r["peak_memory"] / 2**20, 1)
                for r in metrics["rounds"]
                if r.get("peak_memory")
            ],
            "torch_threads": 1,
        }
        Path(os.environ["BITFED_FOOTPRINT_JSON"]).write_text(json.dumps(result, indent=1))
        assert footprint["flwr-clientapp"]["processes"] >= 3 * rounds
    finally:
        fed.procs.stop_all()


# ----------------------------------------------------------------------------- multi-host
def _netns_usable() -> bool:
    if os.geteuid() != 0 or not shutil.which("ip"):
        return False
    probe = f"bfprobe{os.getpid()}"
    ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ok


@pytest.mark.netns
@pytest.mark.slow
@needs_app
@pytest.mark.skipif(not _netns_usable(), reason="needs root and `ip netns`")
def test_one_round_across_network_namespaces(tmp_path) -> None:
    """SuperLink in one namespace, each SuperNode in its own, joined by veth links:
    node k is 10.231.k.2 and reaches the SuperLink at 10.231.k.1. A clean run, no restart."""
    tag = uuid.uuid4().hex[:6]
    nodes = (1, 2)
    link_ns, node_ns = f"bf{tag}L", [f"bf{tag}N{k}" for k in nodes]

    def sh(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    created: list[str] = []
    fed = None
    try:
        for ns in (link_ns, *node_ns):
            sh("netns", "add", ns)
            created.append(ns)
            sh("-n", ns, "link", "set", "lo", "up")
        for k, ns in enumerate(node_ns, start=1):
            a, b = f"bf{tag}a{k}", f"bf{tag}b{k}"
            sh("link", "add", a, "type", "veth", "peer", "name", b)
            sh("link", "set", a, "netns", link_ns)
            sh("link", "set", b, "netns", ns)
            sh("-n", link_ns, "addr", "add", f"10.231.{k}.1/24", "dev", a)
            sh("-n", ns, "addr", "add", f"10.231.{k}.2/24", "dev", b)
            sh("-n", link_ns, "link", "set", a, "up")
            sh("-n", ns, "link", "set", b, "up")

        def wrap(k: int, argv: list[str]) -> list[str]:
            return ["ip", "netns", "exec", link_ns if k == 0 else node_ns[k - 1], *argv]

        fed = Federation(tmp_path, num_nodes=len(nodes), wrap=wrap)
        hosts = "127.0.0.1," + ",".join(f"10.231.{k}.1" for k in nodes)
        overrides = [*TINY, *_clients(len(nodes)), "federation.num_rounds=1"]
        server = fed.server(overrides, hosts, "0.0.0.0")
        for k in nodes:
            fed.node(k, f"supernode-{k}", f"10.231.{k}.1:{fed.port}")
        assert server.wait(240) == 0, fed.log()[-3000:]
        assert fed.rounds() == [1]
        assert re.search(r"^bitfed-server: run \d+ finished:completed$", fed.log(), re.M)
        link_log = (fed.state / "superlink.log").read_text()
        for k in nodes:  # each device reached the SuperLink from its own address
            assert f"10.231.{k}.2:" in link_log
    finally:
        if fed is not None:
            fed.procs.stop_all()
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
