"""``bitfed-client``: run this device as a Flower SuperNode of a bitfed federation.

A SuperNode (``flower-supernode``, Flower 1.42) dials the SuperLink over HTTPS, proves its
identity with an EC key registered on the server (``--enable-supernode-auth``), and starts a
ClientApp process per message it receives. This module builds its command line in one place,
:func:`supernode_argv`, which both ``bitfed-client`` and the compose file use (a test keeps them
equal), then replaces itself with that process (``exec``: no extra Python process stays resident
on the device, and the PID a supervisor sees is the SuperNode's).

The node config tells the ClientApp which shard is this device's::

    partition-id=K num-partitions=N data-root="DIR" [state-dir="DIR"] [memory-budget="48MiB"]

``memory-budget`` (``--memory-budget``) caps the training batch at the largest that fits that
much memory, measured under the run's model and recipe (:mod:`client.budget`).

The SuperNode, its ClientApp executor and each ClientApp start through the scripts of
:mod:`glue.lean_flower` (written to ``$FLWR_HOME/bitfed-lean-bin``, first on the SuperNode's
``PATH``): Flower's own entry points without the SQL stores a device never opens, about 29 MiB
less memory per process. ``--plain-flower`` runs Flower's scripts unchanged.

Reconnection: no ``--max-retries``/``--max-wait-time`` is passed unless asked for, so the
SuperNode retries for ever with backoff and rejoins a restarted SuperLink by itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.hydra_entry import fail
from glue.flower_env import check_address, flower_env, flower_executable
from glue.lean_flower import install as install_lean_flower

__all__ = [
    "DEFAULT_SUPERNODE_PORT",
    "SuperNodeSpec",
    "main",
    "node_config",
    "supernode_argv",
]

DEFAULT_SUPERNODE_PORT = 9094  # the SuperNode's own Runtime API (for its ClientApp processes)
ISOLATIONS = ("subprocess", "process")


@dataclass(frozen=True)
class SuperNodeSpec:
    """Everything ``flower-supernode`` needs on one device. Paths are used exactly as given."""

    superlink: str  # HOST:PORT of the SuperLink
    data_root: str  # folder with this device's dataset files (passed to the ClientApp)
    partition_id: int | None = None  # this device's shard ...
    num_partitions: int | None = None  # ... out of this many (both or neither)
    root_certificates: str | None = None  # CA certificate that signed the SuperLink's cert
    auth_key: str | None = None  # EC private key (OpenSSH) registered on the SuperLink
    insecure: bool = False  # plain HTTP: local development only
    host: str = "127.0.0.1"  # the SuperNode's own Runtime API (0.0.0.0 in a container)
    port: int = DEFAULT_SUPERNODE_PORT  # distinct per SuperNode on one host
    isolation: str = "subprocess"  # subprocess: ClientApps spawned here; process: own executor
    max_wait_time: float | None = None  # give up reconnecting after this long (None = never)
    state_dir: str | None = None  # where the ClientApp keeps its replica/residual on the device
    memory_budget: str | None = None  # training-memory budget, e.g. "48MiB" (client.budget)

    def __post_init__(self) -> None:
        check_address("--superlink", self.superlink)
        if (self.partition_id is None) != (self.num_partitions is None):
            raise ValueError("give both --partition-id and --num-partitions, or neither")
        if self.num_partitions is not None and self.partition_id is not None:
            if self.num_partitions <= 0:
                raise ValueError(f"--num-partitions must be > 0, got {self.num_partitions}")
            if not 0 <= self.partition_id < self.num_partitions:
                raise ValueError(
                    f"--partition-id must be in [0, {self.num_partitions}), got {self.partition_id}"
                )
        for flag, path in (("--data-root", self.data_root), ("--state-dir", self.state_dir)):
            if path is not None and (not path or any(c in path for c in "\"'\n")):
                raise ValueError(f"{flag} {path!r} must be a path without quotes")
        if self.insecure and (self.root_certificates or self.auth_key):
            raise ValueError(
                "--insecure cannot be combined with --root-certificates/--auth-key; drop one"
            )
        if not self.insecure and not self.root_certificates:
            raise ValueError(
                "TLS is on by default: pass --root-certificates CA.crt "
                "(or --insecure for local development only)"
            )
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"--isolation must be one of {ISOLATIONS}, got {self.isolation!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {self.port}")
        if self.max_wait_time is not None and self.max_wait_time <= 0:
            raise ValueError(f"--max-wait-time must be > 0, got {self.max_wait_time}")
        if self.memory_budget is not None:
            from core.planner import parse_bytes  # imports torch: only when a budget is given

            try:
                parse_bytes(self.memory_budget)
            except ValueError as err:
                raise ValueError(f"--memory-budget: {err}") from None


def node_config(spec: SuperNodeSpec) -> str:
    """Build ``--node-config``: ``partition-id=K num-partitions=N data-root="D" [state-dir=..]``.

    ``memory-budget="SIZE"`` follows when the spec has one.
    """
    items = []
    if spec.partition_id is not None:
        items += [f"partition-id={spec.partition_id}", f"num-partitions={spec.num_partitions}"]
    items.append(f'data-root="{spec.data_root}"')
    if spec.state_dir is not None:
        items.append(f'state-dir="{spec.state_dir}"')
    if spec.memory_budget is not None:
        items.append(f'memory-budget="{spec.memory_budget}"')
    return " ".join(items)


def supernode_argv(spec: SuperNodeSpec) -> list[str]:
    """Arguments of ``flower-supernode`` (without the program name) for ``spec``.

    The single source of the SuperNode command: ``bitfed-client`` runs it and ``compose.yaml``
    must contain it verbatim (``tests/test_compose.py``).
    """
    argv = ["--superlink", spec.superlink]
    if spec.insecure:
        argv.append("--insecure")
    else:
        argv += ["--root-certificates", str(spec.root_certificates)]
    if spec.auth_key:
        argv += ["--auth-supernode-private-key", spec.auth_key]
    argv += ["--node-config", node_config(spec)]
    argv += ["--isolation", spec.isolation, "--host", spec.host, "--port", str(spec.port)]
    if spec.max_wait_time is not None:
        argv += ["--max-wait-time", f"{spec.max_wait_time:g}"]
    return argv


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bitfed-client",
        description="Join a bitfed federation from this device (starts a Flower SuperNode).",
    )
    parser.add_argument("--superlink", required=True, help="HOST:PORT of the bitfed server")
    parser.add_argument("--data-root", required=True, help="folder with this device's dataset")
    parser.add_argument("--partition-id", type=int, help="this device's shard K (0-based)")
    parser.add_argument("--num-partitions", type=int, help="number of shards N")
    parser.add_argument("--root-certificates", help="CA certificate of the server (TLS)")
    parser.add_argument("--auth-key", help="this device's EC private key (OpenSSH format)")
    parser.add_argument(
        "--insecure", action="store_true", help="plain HTTP, no auth: LOCAL DEVELOPMENT ONLY"
    )
    parser.add_argument(
        "--state-dir", help="where this device keeps its model replica and residual"
    )
    parser.add_argument(
        "--memory-budget",
        help="training-memory budget (48MiB, 1GiB, bytes): train the largest batch that fits",
    )
    parser.add_argument("--host", default="127.0.0.1", help="SuperNode Runtime API host")
    parser.add_argument("--port", type=int, default=DEFAULT_SUPERNODE_PORT, help="its port")
    parser.add_argument("--isolation", choices=ISOLATIONS, default="subprocess")
    parser.add_argument(
        "--max-wait-time", type=float, help="stop reconnecting after SECONDS (default: never)"
    )
    parser.add_argument(
        "--plain-flower",
        action="store_true",
        help="start Flower's own scripts (default: glue.lean_flower's, without unused SQL stores)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the command, start nothing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``bitfed-client``: validate, then ``exec`` ``flower-supernode`` with our flags."""
    args = _parse(argv)
    try:
        spec = SuperNodeSpec(
            superlink=args.superlink,
            data_root=_absolute(args.data_root),
            partition_id=args.partition_id,
            num_partitions=args.num_partitions,
            root_certificates=_existing_file("--root-certificates", args.root_certificates),
            auth_key=_existing_file("--auth-key", args.auth_key),
            insecure=args.insecure,
            host=args.host,
            port=args.port,
            isolation=args.isolation,
            max_wait_time=args.max_wait_time,
            state_dir=_absolute(args.state_dir),
            memory_budget=args.memory_budget,
        )
        if not Path(spec.data_root).is_dir():
            raise ValueError(f"--data-root {spec.data_root} is not a folder; create it first")
        env = flower_env()
        if args.plain_flower:
            program = flower_executable("flower-supernode")
        else:
            lean = _lean_flower_folder(env)
            install_lean_flower(lean)
            program = str(lean / "flower-supernode")
            env["PATH"] = os.pathsep.join([str(lean), env.get("PATH", "")])
    except (ValueError, OSError) as err:
        fail("bitfed-client", err)
    if spec.insecure:
        print(
            "bitfed-client: WARNING: --insecure: traffic is NOT encrypted and the node is NOT "
            "authenticated. Use this for local development only.",
            file=sys.stderr,
        )
    elif spec.auth_key is None:
        print(
            "bitfed-client: note: no --auth-key; a server with SuperNode authentication "
            "(the bitfed-server default) will refuse this node.",
            file=sys.stderr,
        )
    command = [program, *supernode_argv(spec)]
    if args.dry_run:
        print(" ".join(command))
        return
    sys.stdout.flush()
    os.execve(program, command, env)


def _lean_flower_folder(env: dict[str, str]) -> Path:
    """``$FLWR_HOME/bitfed-lean-bin`` (Flower's default home ``~/.flwr`` when unset)."""
    home = Path(env.get("FLWR_HOME") or Path.home() / ".flwr").expanduser()
    return home / "bitfed-lean-bin"


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _existing_file(flag: str, path: str | None) -> str | None:
    if path is None:
        return None
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise ValueError(f"{flag} {path}: no such file")
    return str(resolved)


if __name__ == "__main__":
    main()
