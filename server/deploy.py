"""``bitfed-server``: start a SuperLink, admit the registered devices, run bitfed on them.

Steps (Flower 1.42 Deployment Engine; one HTTPS port serves the Fleet, Control and Runtime
APIs):

1. ``flower-superlink`` with a persistent state database (``<state-dir>/state.db``), TLS on
   (``<certs-dir>/{ca.crt,server.pem,server.key}``; :mod:`server.certs` makes development
   ones), SuperNode authentication on, runtime dependency installation off. Its command line
   comes from :func:`superlink_argv`, the one place ``compose.yaml`` is checked against.
2. The given SuperNode public keys are registered (``flwr supernode register``; a key that
   is already registered, e.g. after a restart, is fine).
3. A private Flower configuration (``<state-dir>/flwr-home/config.toml``) names the
   connection ``bitfed``; the Hydra config (``conf/`` plus command-line overrides) is turned
   into Flower's flat run config (:func:`core.config.to_run_config`) and written to
   ``<state-dir>/run-config.toml``; ``flwr run <app> bitfed --stream --run-config <file>``
   submits the run and its per-round output is streamed here.
4. If the SuperLink dies mid-run, it is started again on the same database (up to
   ``--restarts`` times) and the run is submitted again. Flower marks the interrupted run
   ``finished:failed``; the new run continues from the last per-round checkpoint, because
   ``federation.checkpoint_dir`` defaults to the stable ``<state-dir>/checkpoints`` and
   ``federation.resume`` is on.
5. When Flower reports the run ``finished:completed``, the SuperLink is stopped and
   ``bitfed-sim``'s per-round table and summary are printed (:func:`print_results`).

``--insecure`` (plain HTTP, no node authentication) exists for local development only.
No certificate, key or token is ever printed or written into the run config.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from core.atomic import atomic_write
from core.config import ExperimentConfig, to_run_config
from core.hydra_entry import APP_DIR, CONF_DIR, compose_config, fail
from glue.flower_env import check_address, flower_env, flower_executable, superexec_argv
from server.certs import generate_server_credentials

__all__ = [
    "CONNECTION",
    "DEFAULT_PORT",
    "ServerLayout",
    "SuperLinkSpec",
    "TlsFiles",
    "cli_address",
    "compose_experiment",
    "deployment_run_config",
    "main",
    "print_results",
    "register_supernodes",
    "superexec_argv",
    "superlink_argv",
    "write_connection",
    "write_run_config",
]

CONNECTION = "bitfed"  # the [superlink.<name>] entry in the private config.toml
DEFAULT_PORT = 8000  # Flower's SuperLink port
ROOT = APP_DIR  # the project: pyproject.toml, conf/
ISOLATIONS = ("subprocess", "process")
_RUN_ID = re.compile(r"Successfully started run (\d+)")


@dataclass(frozen=True)
class TlsFiles:
    """The SuperLink's TLS material (paths used exactly as given)."""

    ca_cert: str
    server_cert: str
    server_key: str

    @classmethod
    def in_dir(cls, certs_dir: str | Path) -> TlsFiles:
        """Use the :mod:`server.certs` layout: ``ca.crt``, ``server.pem``, ``server.key``."""
        d = Path(certs_dir)
        return cls(str(d / "ca.crt"), str(d / "server.pem"), str(d / "server.key"))


@dataclass(frozen=True)
class SuperLinkSpec:
    """Everything ``flower-superlink`` needs."""

    host: str = "0.0.0.0"  # listen address (0.0.0.0 = every interface)
    port: int = DEFAULT_PORT
    database: str | None = None  # SQLite state (None = in memory: a restart forgets all)
    tls: TlsFiles | None = None  # None = plain HTTP (--insecure, development only)
    node_auth: bool = True  # admit only registered SuperNode keys (needs TLS)
    isolation: str = "subprocess"  # subprocess: ServerApp spawned here; process: own executor

    def __post_init__(self) -> None:
        if self.node_auth and self.tls is None:
            raise ValueError("SuperNode authentication needs TLS; drop --insecure")
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}, got {self.isolation!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {self.port}")


def superlink_argv(spec: SuperLinkSpec) -> list[str]:
    """Arguments of ``flower-superlink`` (without the program name) for ``spec``.

    The single source of the SuperLink command: ``bitfed-server`` runs it and ``compose.yaml``
    must contain it verbatim (``tests/test_compose.py``).
    """
    if spec.tls is None:
        argv = ["--insecure"]
    else:
        argv = [
            "--ssl-ca-certfile",
            spec.tls.ca_cert,
            "--ssl-certfile",
            spec.tls.server_cert,
            "--ssl-keyfile",
            spec.tls.server_key,
        ]
    if spec.node_auth:
        argv.append("--enable-supernode-auth")
    argv.append("--disable-runtime-dependency-installation")
    if spec.database:
        argv += ["--database", spec.database]
    argv += ["--isolation", spec.isolation, "--host", spec.host, "--port", str(spec.port)]
    return argv


def cli_address(spec: SuperLinkSpec) -> str:
    """Where a CLI on this host reaches the SuperLink (a wildcard listen address -> loopback)."""
    host = "127.0.0.1" if spec.host in ("0.0.0.0", "", "::") else spec.host
    return f"{host}:{spec.port}"


@dataclass(frozen=True)
class ServerLayout:
    """Files under ``--state-dir`` (all persistent; reuse the folder to resume)."""

    state_dir: Path
    certs_dir: Path  # ca.crt, server.pem, server.key

    @property
    def database(self) -> Path:
        """SuperLink state: runs, nodes, registered keys."""
        return self.state_dir / "state.db"

    @property
    def flwr_home(self) -> Path:
        """Private FLWR_HOME: the CLI connection and the installed app bundles."""
        return self.state_dir / "flwr-home"

    @property
    def checkpoints(self) -> Path:
        """Default ``federation.checkpoint_dir``: stable across restarts."""
        return self.state_dir / "checkpoints"

    @property
    def run_config(self) -> Path:
        """The run config last submitted."""
        return self.state_dir / "run-config.toml"

    @property
    def superlink_log(self) -> Path:
        """SuperLink output (appended across restarts)."""
        return self.state_dir / "superlink.log"


def write_connection(flwr_home: Path, address: str, root_certificates: str | None) -> Path:
    """Write ``flwr_home/config.toml`` with the connection :data:`CONNECTION` (the default).

    ``root_certificates=None`` writes ``insecure = true``.
    """
    entry = f"address = {json.dumps(address)}\n"
    if root_certificates is None:
        entry += "insecure = true\n"
    else:
        entry += f"root-certificates = {json.dumps(str(Path(root_certificates).resolve()))}\n"
    text = f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n{entry}'
    path = flwr_home / "config.toml"
    atomic_write(path, text.encode())
    return path


def compose_experiment(overrides: Sequence[str], config_dir: Path = CONF_DIR) -> ExperimentConfig:
    """Compose ``conf/config.yaml`` with Hydra ``overrides`` (one-line ``ValueError`` if bad)."""
    return compose_config(overrides, config_dir)


def deployment_run_config(cfg: ExperimentConfig, layout: ServerLayout | None) -> dict[str, Any]:
    """Flower's flat run config for ``cfg``.

    With a local ``layout`` (the ServerApp runs on this machine), an unset checkpoint folder
    becomes the stable ``<state-dir>/checkpoints``, so a restarted server resumes. With
    ``None`` (``--connect``: the ServerApp runs elsewhere, e.g. in a container) it is left as
    configured.
    """
    flat = to_run_config(cfg)
    if layout is not None and not flat["federation.checkpoint_dir"]:
        flat["federation.checkpoint_dir"] = str(layout.checkpoints.resolve())
    return flat


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    raise ValueError(f"run-config value {value!r} is not a TOML scalar")


def write_run_config(run_config: dict[str, Any], path: Path) -> Path:
    """Write a flat run config as TOML (``"model.name" = "mlp"``) for ``flwr run -c FILE``."""
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in sorted(run_config.items())]
    atomic_write(path, ("\n".join(lines) + "\n").encode())
    return path


def _flwr(args: Sequence[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    proc = subprocess.run(
        [flower_executable("flwr"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


_KEY_DONE = "@@bitfed-key-done@@"
# `flwr supernode register` takes one key; this runs Flower's own CLI entry point
# (flwr.cli.app:app, what the `flwr` script calls) once per key in ONE process, so N devices
# cost one Python start-up instead of N (about 2.5 s each on a small machine).
_REGISTER_ALL = f"""
import json, sys
from flwr.cli.app import app
for key in sys.argv[2:]:
    try:
        app(["supernode", "register", key, sys.argv[1], "--format", "json"],
            prog_name="flwr", standalone_mode=False)
    except SystemExit:
        pass
    except Exception as err:
        print(json.dumps({{"success": False, "error-message": str(err)}}))
    sys.__stdout__.write("\\n{_KEY_DONE}\\n")
    sys.__stdout__.flush()
"""


def register_supernodes(public_keys: Sequence[Path], env: dict[str, str]) -> list[str]:
    """Register each SuperNode public key with the SuperLink; return one status line per key.

    A key that is already registered (a restart on the same database) is not an error.
    """
    if not public_keys:
        return []
    proc = subprocess.run(
        [sys.executable, "-c", _REGISTER_ALL, CONNECTION, *map(str, public_keys)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60 + 10 * len(public_keys),
        check=False,
    )
    replies = proc.stdout.split(_KEY_DONE)[: len(public_keys)]
    if len(replies) != len(public_keys):
        detail = " ".join((proc.stdout + proc.stderr).split())[-300:]
        raise RuntimeError(f"registering SuperNode keys failed (exit {proc.returncode}): {detail}")
    lines = []
    for key, out in zip(public_keys, replies):
        try:  # with --format json, flwr 1.42 reports errors as {"success": false}
            reply = json.loads(out[out.index("{") : out.rindex("}") + 1])
        except ValueError:
            reply = {"success": False, "error-message": out}
        message = " ".join(str(reply.get("error-message", "")).split())
        if reply.get("success"):
            lines.append(f"registered {key.name} as node {reply.get('node-id')}")
        elif "already in use" in message:
            lines.append(f"{key.name} was already registered")
        else:
            message = message or " ".join(proc.stderr.split())
            raise RuntimeError(f"registering {key} failed: {message[-300:]}")
    return lines


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM this child when bitfed-server dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _check_port_free(host: str, port: int, wait: float = 0.0) -> None:
    """Fail early, and clearly, when something else listens on ``host:port`` (after ``wait`` s)."""
    deadline = time.monotonic() + wait
    while True:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                return
            except OSError as err:
                if time.monotonic() >= deadline:
                    raise ValueError(
                        f"cannot listen on {host}:{port} ({err.strerror}); stop what uses it "
                        f"or pick another --port"
                    ) from None
        time.sleep(0.5)


def _start_superlink(spec: SuperLinkSpec, layout: ServerLayout, env: dict) -> subprocess.Popen:
    log = layout.superlink_log.open("ab")
    try:
        return subprocess.Popen(
            [flower_executable("flower-superlink"), *superlink_argv(spec)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    finally:
        log.close()


def _wait_ready(
    address: str, proc: subprocess.Popen | None, log: Path, timeout: float = 60.0
) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"the SuperLink exited with code {proc.returncode} at start-up (port {address} "
                f"in use? bad certificate?); its last lines are in {log}"
            )
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(
        f"the SuperLink at {address} did not answer within {timeout:.0f} s; check that it runs "
        f"and is reachable from here (see {log} when bitfed-server started it)"
    )


def _stop(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _relay(stream: IO[str], sink: IO[str], found: dict[str, str]) -> None:
    for line in stream:
        sink.write(line)
        sink.flush()
        if "run_id" not in found and (m := _RUN_ID.search(line)):
            found["run_id"] = m.group(1)


def _run_status(run_id: str, env: dict[str, str]) -> str:
    rc, out = _flwr(["list", CONNECTION, "--run-id", run_id, "--format", "json"], env)
    if rc != 0 or "{" not in out:
        return "unknown"
    runs = json.loads(out[out.index("{") :]).get("runs", [])
    return runs[0].get("status", "unknown") if runs else "unknown"


def print_results(run_dir: Path) -> None:
    """Print ``bitfed-sim``'s per-round table and summary of a finished run.

    Also writes its ``rounds.csv`` and ``rounds.png`` beside ``metrics.json`` in ``run_dir``.
    """
    from server.report import format_table, summary, write_outputs

    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        print(f"bitfed-server: no {metrics_file}; nothing to tabulate", file=sys.stderr)
        return
    metrics = json.loads(metrics_file.read_text())
    paths = write_outputs(run_dir, metrics)
    print(format_table(metrics["rounds"]))
    print(summary(metrics).replace("bitfed-sim:", "bitfed-server:", 1))
    print(f"bitfed-server: wrote {metrics_file}, {paths['csv']}, {paths['png']}", flush=True)


def _warn_insecure() -> None:
    bar = "!" * 78
    print(
        f"{bar}\nbitfed-server: --insecure: plain HTTP, NO encryption, NO SuperNode "
        f"authentication.\nAnyone who can reach this port can join or read the federation. "
        f"LOCAL DEVELOPMENT ONLY.\n{bar}",
        file=sys.stderr,
    )


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bitfed-server",
        description="Start a bitfed aggregation server (Flower SuperLink) and run the "
        "federation on the registered devices. Positional arguments are Hydra overrides, "
        "as for bitfed-sim (e.g. federation.num_rounds=3 model=cnv).",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/config.yaml")
    parser.add_argument("--host", default="0.0.0.0", help="listen address (default: all)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="the one SuperLink port")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path.home() / ".bitfed" / "server",
        help="database, checkpoints, private FLWR_HOME (reuse it to resume)",
    )
    parser.add_argument(
        "--certs-dir", type=Path, help="ca.crt, server.pem, server.key (default: STATE/certs)"
    )
    parser.add_argument(
        "--dev-certs",
        metavar="HOSTS",
        help="if certs-dir has none, generate a self-signed development CA and server "
        "certificate for these comma-separated host names/IPs (development only)",
    )
    parser.add_argument(
        "--supernode-key",
        action="append",
        type=Path,
        default=[],
        metavar="PUB",
        help="register this SuperNode public key (repeatable)",
    )
    parser.add_argument(
        "--insecure", action="store_true", help="plain HTTP, no node auth: DEVELOPMENT ONLY"
    )
    parser.add_argument("--isolation", choices=ISOLATIONS, default="subprocess")
    parser.add_argument("--app", type=Path, default=ROOT, help="the Flower app to run")
    parser.add_argument("--config-dir", type=Path, default=CONF_DIR, help="Hydra conf/")
    parser.add_argument(
        "--connect",
        metavar="HOST:PORT",
        help="use a SuperLink that is already running (e.g. compose) instead of starting one",
    )
    parser.add_argument(
        "--no-run",
        action="store_true",
        help="do not submit a run: only start the SuperLink (serve until Ctrl-C) "
        "and register keys; with --connect, register and exit",
    )
    parser.add_argument(
        "--restarts",
        type=int,
        default=2,
        help="restart a SuperLink that dies mid-run this many times (same database; the run "
        "resumes from its last checkpoint)",
    )
    return parser.parse_args(argv)


class _Server:
    """One bitfed-server invocation: the SuperLink it owns (if any) and the runs it submits."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        if args.connect:
            check_address("--connect", args.connect)
        self.layout = ServerLayout(
            args.state_dir.expanduser().resolve(),
            (args.certs_dir or args.state_dir.expanduser().resolve() / "certs").resolve(),
        )
        tls = None if args.insecure else TlsFiles.in_dir(self.layout.certs_dir)
        self.spec = SuperLinkSpec(
            host=args.host,
            port=args.port,
            database=str(self.layout.database),
            tls=tls,
            node_auth=not args.insecure,
            isolation=args.isolation,
        )
        self.address = args.connect or cli_address(self.spec)
        self.env = flower_env(home=self.layout.flwr_home)
        self.link: subprocess.Popen | None = None

    def prepare(self) -> None:
        """Check inputs, make development certificates if asked, write the CLI connection."""
        self.layout.state_dir.mkdir(parents=True, exist_ok=True)
        tls = self.spec.tls
        if tls is not None:
            wanted = [tls.ca_cert] if self.args.connect else list(vars(tls).values())
            missing = [p for p in wanted if not Path(p).is_file()]
            if missing and self.args.dev_certs and not self.args.connect:
                hosts = [h.strip() for h in self.args.dev_certs.split(",") if h.strip()]
                generate_server_credentials(self.layout.certs_dir, hosts)
                print(
                    f"bitfed-server: development certificates for {hosts} written to "
                    f"{self.layout.certs_dir}"
                )
                missing = []
            if missing:
                raise ValueError(
                    f"TLS is on but {missing[0]} is missing; generate development certificates "
                    f"with `python -m server.certs --out {self.layout.certs_dir} --hosts "
                    f"<names/IPs nodes dial>` (or --dev-certs HOSTS), point --certs-dir at "
                    f"yours, or use --insecure for local development only"
                )
        for key in self.args.supernode_key:
            if not key.is_file():
                raise ValueError(f"--supernode-key {key}: no such file")
        if self.args.restarts < 0:
            raise ValueError(f"--restarts must be >= 0, got {self.args.restarts}")
        write_connection(self.layout.flwr_home, self.address, tls.ca_cert if tls else None)

    def start_link(self) -> None:
        """Start the SuperLink (unless --connect), wait for its port, register the keys."""
        if not self.args.connect:
            _check_port_free(self.spec.host, self.spec.port, wait=15.0 if self.link else 0.0)
            self.link = _start_superlink(self.spec, self.layout, self.env)
            print(
                f"bitfed-server: SuperLink pid {self.link.pid} on {self.spec.host}:"
                f"{self.spec.port} ({'TLS' if self.spec.tls else 'INSECURE'}"
                f"{', node auth' if self.spec.node_auth else ''}); state {self.layout.database}; "
                f"log {self.layout.superlink_log}",
                flush=True,
            )
        _wait_ready(self.address, self.link, self.layout.superlink_log)
        for line in register_supernodes([k.resolve() for k in self.args.supernode_key], self.env):
            print(f"bitfed-server: {line}", flush=True)

    def submit(self, run_config_file: Path) -> tuple[int, str | None]:
        """Submit the run, stream its output; return (flwr exit code, run id)."""
        proc = subprocess.Popen(
            [
                flower_executable("flwr"),
                "run",
                str(self.args.app.resolve()),
                CONNECTION,
                "--stream",
                "--run-config",
                str(run_config_file),
            ],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_die_with_parent,
        )
        found: dict[str, str] = {}
        assert proc.stdout is not None
        relay = threading.Thread(target=_relay, args=(proc.stdout, sys.stdout, found))
        relay.start()
        try:
            while proc.poll() is None:
                if self.link is not None and self.link.poll() is not None:
                    _stop(proc, grace=2.0)  # its stream is gone with the SuperLink
                    break
                time.sleep(0.5)
        finally:
            _stop(proc, grace=2.0)
            relay.join(timeout=5.0)
        return proc.returncode, found.get("run_id")

    def run(self, run_config_file: Path) -> int:
        """Submit, supervise and, if the SuperLink dies, restart it and submit again."""
        restarts = self.args.restarts
        while True:
            rc, run_id = self.submit(run_config_file)
            if self.link is not None and self.link.poll() is not None:
                code = self.link.returncode
                if restarts == 0:
                    print(
                        f"bitfed-server: the SuperLink exited (code {code}) and no restarts "
                        f"are left; run bitfed-server again with --state-dir "
                        f"{self.layout.state_dir} to resume from the last checkpoint",
                        file=sys.stderr,
                    )
                    return 1
                restarts -= 1
                print(
                    f"bitfed-server: the SuperLink exited (code {code}) during run {run_id}; "
                    f"restarting it on {self.layout.database} and submitting the run again "
                    f"(it resumes from the last checkpoint; {restarts} restarts left)",
                    flush=True,
                )
                self.start_link()
                continue
            status = _run_status(run_id, self.env) if run_id else "not started"
            print(f"bitfed-server: run {run_id} {status}", flush=True)
            return 0 if rc == 0 and status == "finished:completed" else 1

    def serve(self) -> int:
        """--no-run: keep the SuperLink up until it exits or we are interrupted."""
        if self.link is None:
            return 0
        print("bitfed-server: serving; Ctrl-C stops the SuperLink", flush=True)
        code = self.link.wait()
        print(
            f"bitfed-server: the SuperLink exited (code {code}); see {self.layout.superlink_log}",
            file=sys.stderr,
        )
        return 1 if code else 0

    def close(self) -> None:
        """Stop the SuperLink we started."""
        _stop(self.link)


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``bitfed-server``."""
    args = _parse(argv)
    if args.insecure:
        _warn_insecure()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: stop children
    server: _Server | None = None
    try:
        server = _Server(args)
        server.prepare()
        cfg = None if args.no_run else compose_experiment(args.overrides, args.config_dir)
        server.start_link()
        if cfg is None:
            sys.exit(server.serve())
        if not args.connect:  # the ServerApp runs here: give it a known, absolute run folder
            from core.runs import run_folder

            cfg.output_dir = str(run_folder(cfg).resolve())
        run_config = deployment_run_config(cfg, None if args.connect else server.layout)
        if args.connect and not run_config["federation.checkpoint_dir"]:
            print(
                "bitfed-server: note: federation.checkpoint_dir is unset; the ServerApp at "
                f"{args.connect} checkpoints into its run folder, so a restart there starts over",
                file=sys.stderr,
            )
        write_run_config(run_config, server.layout.run_config)
        code = server.run(server.layout.run_config)
        if code == 0 and not args.connect:
            server.close()
            print_results(Path(cfg.output_dir))
        sys.exit(code)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        fail("bitfed-server", err)
    except RuntimeError as err:
        fail("bitfed-server", err, status=1)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
