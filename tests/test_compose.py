"""compose.yaml and its overlays: valid for Debian's docker-compose (v1), and running exactly the
commands that server/deploy.py and client/deploy.py build (which the process-level tests run)."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from client.deploy import SuperNodeSpec, supernode_argv
from glue.flower_env import superexec_argv
from server.deploy import SuperLinkSpec, TlsFiles, _parse, superlink_argv

ROOT = Path(__file__).resolve().parents[1]
BASE, TLS, STATE = "compose.yaml", "compose.tls.yaml", "compose.state.yaml"
ARM64 = "compose.arm64.yaml"
NUM_CLIENTS = 3
SECRETS = "/run/secrets"
DEVICE_STATE = "/app/device-state"  # the ClientApp's replica + residual (node config state-dir)


def _install_docker_compose() -> str | None:
    """Debian's docker-compose v1, installed once with apt where we are root; else None."""
    if shutil.which("docker-compose"):
        return shutil.which("docker-compose")
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    install = ["apt-get", "install", "-y", "--no-install-recommends", "docker-compose"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in ([install], [["apt-get", "update"], install]):
        try:
            if all(
                subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == 0
                for cmd in step
            ):
                break
        except (OSError, subprocess.TimeoutExpired):
            return None
    return shutil.which("docker-compose")


@pytest.fixture(scope="module")
def compose_bin() -> str:
    found = _install_docker_compose()
    if found is None:
        pytest.skip(
            "docker-compose (v1) is not installed and apt-get is unavailable or not root: "
            "install it with `apt-get install --no-install-recommends docker-compose`"
        )
    return found


def _config(compose_bin: str, *files: str) -> dict:
    args = [compose_bin]
    for name in files:
        args += ["-f", str(ROOT / name)]
    # Debian's docker-compose runs on the system Python: keep this process's Python settings
    # (PYTHONPATH and the like, which Ray and other tests set) away from it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(
        [*args, "config"], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def _cmd(service: dict) -> list[str]:
    return [*service["entrypoint"], *service["command"]]


def _link_spec(tls: bool) -> SuperLinkSpec:
    return SuperLinkSpec(
        host="0.0.0.0",
        port=8000,
        database="state/state.db",
        tls=TlsFiles.in_dir(SECRETS) if tls else None,
        node_auth=tls,
        isolation="process",
    )


def _node_spec(k: int, tls: bool) -> SuperNodeSpec:
    return SuperNodeSpec(
        superlink="superlink:8000",
        data_root="/app/data",
        partition_id=k - 1,
        num_partitions=NUM_CLIENTS,
        root_certificates=f"{SECRETS}/ca.crt" if tls else None,
        auth_key=f"{SECRETS}/supernode-{k}" if tls else None,
        insecure=not tls,
        host="0.0.0.0",
        port=9094,
        isolation="subprocess",  # a device is one container: the SuperNode starts its ClientApps
        state_dir=DEVICE_STATE,
    )


@pytest.mark.parametrize(
    "files", [(BASE,), (BASE, TLS), (BASE, STATE), (BASE, TLS, STATE)], ids="+".join
)
def test_compose_files_validate(compose_bin: str, files: tuple[str, ...]) -> None:
    services = _config(compose_bin, *files)["services"]
    expected = {"superlink", "superexec-serverapp"}
    expected |= {f"supernode-{k}" for k in range(1, NUM_CLIENTS + 1)}
    if TLS in files:
        expected.add("register")
    assert set(services) == expected
    image = services["superlink"]["image"]
    assert all(s["image"] == image for s in services.values())  # one image, one Dockerfile


@pytest.mark.parametrize("tls", [False, True], ids=["insecure", "tls"])
def test_compose_runs_the_commands_the_builders_make(compose_bin: str, tls: bool) -> None:
    files = (BASE, TLS, STATE) if tls else (BASE,)
    services = _config(compose_bin, *files)["services"]
    ca = f"{SECRETS}/ca.crt" if tls else None
    assert _cmd(services["superlink"]) == ["flower-superlink", *superlink_argv(_link_spec(tls))]
    assert _cmd(services["superexec-serverapp"]) == [
        "flower-superexec",
        *superexec_argv("superlink:8000", ca),
    ]
    for k in range(1, NUM_CLIENTS + 1):
        node = services[f"supernode-{k}"]
        assert _cmd(node) == ["flower-supernode", *supernode_argv(_node_spec(k, tls))]
        if tls:
            assert node["depends_on"]["register"]["condition"] == "service_completed_successfully"
    if tls:  # the one-shot registration is a real bitfed-server command line
        register = services["register"]
        assert register["entrypoint"] == ["bitfed-server"]
        args = _parse(register["command"])
        assert (args.connect, args.no_run, args.certs_dir) == (
            "superlink:8000",
            True,
            Path(SECRETS),
        )
        assert [str(k) for k in args.supernode_key] == [
            f"{SECRETS}/supernode-{k}.pub" for k in range(1, NUM_CLIENTS + 1)
        ]


def _flags(argv: list[str]) -> set[str]:
    return {a for a in argv if a.startswith("--")}


def test_compose_tls_uses_the_flags_of_the_process_deployment(compose_bin: str) -> None:
    """Compose differs from the process-level test (tests/server/test_deploy.py) only in values
    and in where the ServerApp executor runs (--isolation process), never in a security flag."""
    services = _config(compose_bin, BASE, TLS)["services"]
    process_link = SuperLinkSpec(
        host="127.0.0.1", port=1, database="/x/state.db", tls=TlsFiles.in_dir("/x")
    )
    assert _flags(services["superlink"]["command"]) == _flags(superlink_argv(process_link))
    process_node = SuperNodeSpec(
        superlink="127.0.0.1:1",
        data_root="/d",
        partition_id=0,
        num_partitions=3,
        root_certificates="/x/ca.crt",
        auth_key="/x/k",
        port=2,
    )
    assert _flags(services["supernode-1"]["command"]) == _flags(supernode_argv(process_node))


def test_repeated_blocks_come_from_anchors() -> None:
    text = (ROOT / BASE).read_text()
    assert text.count("image:") == 1 and text.count("build:") == 1
    assert len(re.findall(r"<<: \*device", text)) == NUM_CLIENTS
    # --insecure lives only in the local-development base file, and it says so
    assert "--insecure" not in (ROOT / TLS).read_text().split("services:", 1)[1]
    assert "LOCAL DEVELOPMENT ONLY" in text


def test_dockerfile_pins_cpu_torch_constraints_and_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in text
    # the arch picks the pinned set: amd64 (or no TARGETARCH: the classic builder) constraints.txt
    # with PyTorch's CPU index, arm64 the device constraints (torch from PyPI, no CUDA index)
    arches = {
        arch: (constraints, index.strip())
        for arch, constraints, index in re.findall(
            r"^\s+(\S+)\) c=(/opt/bitfed/[\w.-]+); (index=[^;]*);", text, re.M
        )
    }
    assert arches == {
        '""|amd64': ("/opt/bitfed/constraints.txt", 'index="--index-url ${TORCH_INDEX}"'),
        "arm64": ("/opt/bitfed/constraints-device-aarch64.txt", "index="),
    }
    pip_lines = re.findall(r"pip install .*", text)
    assert len(pip_lines) == 3 and all("constraints.active.txt" in p for p in pip_lines[1:])
    assert "/opt/bitfed/constraints.txt" not in "".join(pip_lines)
    assert re.search(r"useradd --uid 49999", text) and re.search(r"^USER app$", text, re.M)
    assert "HOME=/app" in text and "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in text
    for source in ("core", "client", "server", "conf", "pyproject.toml", "constraints.txt"):
        assert (ROOT / source).exists()


def _limit_bytes(service: dict) -> int:
    text = str(service["deploy"]["resources"]["limits"]["memory"]).lower()
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def test_each_device_is_capped_and_keeps_its_state_on_its_own_volume(compose_bin: str) -> None:
    services = _config(compose_bin, BASE, TLS, STATE)["services"]
    mounts = {}
    for k in range(1, NUM_CLIENTS + 1):
        node = services[f"supernode-{k}"]
        # a device class: SuperNode, its ClientApp executor and ClientApps in one 512 MiB cgroup
        assert _limit_bytes(node) == 512 * 2**20
        assert node["command"][node["command"].index("--isolation") + 1] == "subprocess"
        assert f'state-dir="{DEVICE_STATE}"' in " ".join(node["command"])
        (volume,) = [v for v in node["volumes"] if v.endswith(f":{DEVICE_STATE}:rw")]
        mounts[k] = volume.split(":")[0]
    assert len(set(mounts.values())) == NUM_CLIENTS  # one volume per device, none shared
    assert "bitfed-state:/app/state:rw" in services["superexec-serverapp"]["volumes"]


def test_superlink_port_is_published_on_loopback_unless_asked(compose_bin: str) -> None:
    (published,) = _config(compose_bin, BASE)["services"]["superlink"]["ports"]
    assert published.startswith("127.0.0.1:8000:8000")


def test_dockerfile_default_is_the_online_build_and_offline_only_swaps_sources() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:\$\{PYTHON_VERSION\}-slim-bookworm$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    # offline sources are pip's own environment variables, unset by default ...
    assert re.findall(r"^ARG (PIP_NO_INDEX|PIP_FIND_LINKS)$", text, re.M) == [
        "PIP_NO_INDEX",
        "PIP_FIND_LINKS",
    ]
    # ... and no wheel is ever copied into a layer
    copies = re.findall(r"^COPY .*$", text, re.M)
    assert copies and not any("wheel" in line or "build" in line for line in copies)
    ignored = (ROOT / ".dockerignore").read_text().split()
    for folder in ("tests", "benchmarks", ".venv", ".git", "build"):
        assert folder in ignored


def test_arm64_overlay_runs_device_3_from_the_arm64_image_and_nothing_else(
    compose_bin: str,
) -> None:
    plain = _config(compose_bin, BASE)["services"]
    mixed = _config(compose_bin, BASE, ARM64)["services"]
    assert set(mixed) == set(plain)  # the overlay adds no service
    node = mixed["supernode-3"]
    assert node["platform"] == "linux/arm64" and node["image"] == "bitfed:0.1.0-arm64"
    assert {k: v for k, v in node.items() if k not in ("platform", "image")} == {
        k: v for k, v in plain["supernode-3"].items() if k != "image"
    }
    for name, service in mixed.items():
        if name != "supernode-3":
            assert service == plain[name] and "platform" not in service, name
