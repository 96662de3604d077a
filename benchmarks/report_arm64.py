"""BENCHMARKS.md's aarch64 sections (issue 19), from ``arm64.json`` and ``arm64_compose.json``.

:func:`render_arm64`: the digits MLP trained centrally with the same seeds on x86-64 (the host's
torch) and on aarch64 (Debian arm64 under qemu-user, an emulated Cortex-A72, torch 2.9.1 as a
device installs it): test accuracy per recipe and seed, and the difference.
:func:`render_arm64_compose`: the compose federation with one arm64 device (its image size and
build time, the rounds it completed with every reply, seconds per round, containers' cgroup
peaks). Both are registered in ``benchmarks/report.py``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["render_arm64", "render_arm64_compose"]

Doc = list[str]
MIB = 2**20


def _table(header: list[str], rows: list[list[str]]) -> Doc:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _accuracies(platform: dict[str, Any]) -> dict[tuple[str, int], float]:
    return {(r["recipe"], int(r["seed"])): float(r["accuracy"]) for r in platform["runs"]}


def _env(platform: dict[str, Any]) -> str:
    env = platform.get("environment", {})
    return f"torch {env.get('torch', '?')}, CPU capability {env.get('capability', '?')}"


def _pp(value: float) -> str:
    return f"{value * 100:+.2f}"


def render_arm64(res: dict[str, Any]) -> Doc:
    """Accuracy per recipe and seed, x86-64 vs aarch64, with the difference in points."""
    cfg = res["config"]
    x86, arm = res["platforms"]["x86_64"], res["platforms"]["aarch64"]
    a, b = _accuracies(x86), _accuracies(arm)
    doc = [
        f"The digits MLP (64-256-256-256-256-10) trained centrally for {cfg['epochs']} epochs "
        f"(batch {cfg['batch']}, {cfg['threads']} torch thread) with the same seeds on two "
        f"CPUs: x86-64 ({_env(x86)}) and aarch64 (Debian bookworm arm64 under qemu-user, "
        f"emulated {arm.get('qemu_cpu', '?')} = Raspberry Pi 4 class, {_env(arm)}: the torch a "
        "device installs from `constraints-device-aarch64.txt`). Test accuracy on the digits "
        "test split; difference = aarch64 − x86-64 in percentage points. Emulation changes "
        "speed, not arithmetic: the aarch64 figures are a device's.",
        "",
    ]
    rows, diffs = [], {}
    for recipe in cfg["recipes"]:
        for seed in cfg["seeds"]:
            key = (recipe, int(seed))
            if key not in a or key not in b:
                continue
            diff = b[key] - a[key]
            diffs.setdefault(recipe, []).append(diff)
            rows.append([recipe, str(seed), f"{a[key]:.4f}", f"{b[key]:.4f}", _pp(diff)])
        mine = [s for s in cfg["seeds"] if (recipe, int(s)) in a and (recipe, int(s)) in b]
        if mine:
            mean_a = sum(a[(recipe, int(s))] for s in mine) / len(mine)
            mean_b = sum(b[(recipe, int(s))] for s in mine) / len(mine)
            rows.append(
                [f"**{recipe} mean**", "", f"{mean_a:.4f}", f"{mean_b:.4f}", _pp(mean_b - mean_a)]
            )
    doc += _table(["recipe", "seed", "x86-64", "aarch64", "difference (pp)"], rows)
    notes = []
    for recipe, values in diffs.items():
        seeds = [s for s in cfg["seeds"] if (recipe, int(s)) in a and (recipe, int(s)) in b]
        same = [str(s) for s, v in zip(seeds, values) if abs(v) < 5e-5]
        if len(same) == len(values):
            notes.append(f"`{recipe}`: identical on both CPUs for every seed")
            continue
        worst = max(abs(v) for v in values)
        notes.append(
            f"`{recipe}`: "
            + (f"identical for seed {', '.join(same)}, " if same else "")
            + f"differs by up to {worst * 100:.2f} points"
        )
    if notes:
        doc += [
            "; ".join(notes) + ". Where they differ, the two torch builds' float32 results "
            "differ in the last bits, and the "
            "difference grows over the epochs into another run of the same training: compare "
            "the means.",
            "",
        ]
    secs = arm.get("wall_seconds")
    if secs is not None:
        doc += [
            f"The aarch64 runs took {secs / 60:.1f} minutes under emulation "
            f"({x86.get('wall_seconds', 0):.0f} s natively on x86-64).",
            "",
        ]
    return doc


def render_arm64_compose(res: dict[str, Any]) -> Doc:
    """The mixed amd64/arm64 compose federation: image, rounds, replies, time, memory."""
    cfg, images, dev = res["config"], res["images"], res["arm64_device"]
    full, last = images.get("arm64_full_build_seconds"), images.get("arm64_build") or {}
    builds = []
    if full is not None:
        builds.append(f"from scratch **{full:,.0f} s** ({full / 60:.0f} min)")
    if last.get("seconds") is not None:
        builds.append(
            f"{'this image, reusing cached layers' if full is not None else 'this image'} "
            f"{last['seconds']:,.0f} s ({last.get('date', '?')})"
        )
    build_txt = "; ".join(builds) or "not recorded (built elsewhere)"
    rounds = {int(k): v for k, v in res["rounds"].items()}
    done = sorted(k for k in rounds if k > 0)
    doc = [
        f"`compose.yaml` + `compose.arm64.yaml`: {cfg['devices']} devices, device "
        f"{cfg['arm64_device']} (`{dev['service']}`) from the linux/arm64 image under qemu-user "
        f"on the x86-64 Docker host, the SuperLink, the ServerApp executor and the other devices "
        f"amd64; each device one container (a SuperNode starting its ClientApps), the emulated "
        f"one capped at {cfg['arm64_device_memory']} for this run (the others at compose.yaml's "
        f"cap); the digits MLP, "
        f"{cfg['rounds']} rounds submitted from the host with `bitfed-server --connect` "
        f"(`federation.round_timeout={cfg['round_timeout']:.0f}`).",
        "",
        f"- arm64 image `{images['arm64']}` ({images.get('arm64_architecture', '?')}): "
        f"**{images['arm64_bytes']:,} bytes** ({images['arm64_bytes'] / MIB:,.0f} MiB; amd64 "
        f"{images['amd64_bytes'] / MIB:,.0f} MiB); offline build under emulation "
        f"(`make image-offline-arm64`): {build_txt}.",
        f"- device {cfg['arm64_device']} ran `uname -m` = `{dev['uname_m']}` and "
        f"{dev['clientapp_processes']} ClientApp process(es).",
        f"- **{'completed' if res['completed'] else 'did not complete'}**: {len(done)} of "
        f"{cfg['rounds']} rounds, "
        + (
            "every round with all replies valid"
            if res.get("all_replies_valid")
            else "**not every round had all replies valid**"
        )
        + (
            f"; **{res['seconds_per_round']:.0f} s per round** "
            f"({', '.join(f'{s:.0f}' for s in res['round_seconds'])} s)"
            if res.get("seconds_per_round") is not None
            else ""
        )
        + f"; the whole run {res['run_seconds']:.0f} s.",
    ]
    if cfg.get("emulation_patch"):
        doc.append(f"- emulation only: {cfg['emulation_patch']}.")
    doc.append("")
    rows = []
    for k in sorted(rounds):
        r = rounds[k]
        replies = "–" if k == 0 else f"{r.get('valid', '?')}/{r.get('sampled', '?')}"
        rows.append([str(k), f"{r['accuracy']:.4f}", replies])
    doc += _table(["round", "accuracy", "valid / sampled replies"], rows)
    peaks = res.get("clientapp_peak_rss", {})
    rows = []
    for service, c in sorted(res["containers"].items()):
        peak = c.get("peak")
        rows.append(
            [
                service,
                res.get("platforms", {}).get(service, "?"),
                "–" if peak is None else f"{peak / MIB:,.0f}",
                "–" if service not in peaks else f"{peaks[service] / MIB:,.0f}",
            ]
        )
    doc += _table(["container", "platform", "cgroup peak MiB", "ClientApp peak RSS MiB"], rows)
    doc += [
        "cgroup peak: `memory.max_usage_in_bytes` (cgroup v1; resident memory plus the page "
        "cache the container touched). The arm64 device's ClientApp RSS is that of its "
        "qemu-user process (the guest plus the emulator and its translation cache): on a real "
        "board it is the guest's alone.",
        "",
    ]
    return doc
