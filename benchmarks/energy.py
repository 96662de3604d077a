"""Energy of one training step: the counted-work model, cross-checked by cachegrind's counts.

Two parts (issue 18):

1. **Modelled** (:mod:`core.energy`): the arithmetic and memory traffic of one training step
   (forward, backward, optimizer update) counted from the model's real layer shapes, turned into
   joules with the 45 nm per-operation and per-byte energies of Horowitz (ISSCC 2014). Per model
   and recipe: joules per step, compute / memory split, and ``standard / recipe`` ratios, for
   MLP (b100), CNV (b100), BinaryNet (b100) and ResNetE-18 (b32, 224x224).
2. **Measured cross-check**: one real training step of ``standard`` and ``lowcost`` for the MLP
   and CNV run under valgrind with its cache simulator (``--cache-sim=yes``): instructions, data
   references and simulated cache misses per step, counted rather than timed, so repeatable on
   a shared machine. Valgrind 3.19's cachegrind cannot start and stop counting inside a
   process, and a whole-process count is dominated by importing torch (~5e9 instructions, ~3
   minutes under cachegrind per process), so the steps run under ``--tool=callgrind`` (the same
   cache simulator as cachegrind) with ``--instr-atstart=no`` and callgrind's client requests
   (a 10-line C helper compiled at run time, called through ctypes): import, model build and
   :data:`CG_WARMUP` warm-up steps run uninstrumented; then :data:`CG_STEPS` steps are counted,
   each dumped on its own (the first starts with empty simulated caches, the second with what
   the first left: the figures reported are the second's; the first shows how repeatable the
   counts are). The simulated caches are a Raspberry Pi 3B+'s (Cortex-A53: L1i/L1d 32 KiB, L2 512
   KiB, 64 B lines), the paper's device, so last-level misses stand for its DRAM traffic.

Threads: 1 (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, SkipBenchmark, benchmark_parser, run_benchmark

__all__ = [
    "NAME",
    "MODEL_CONFIGS",
    "VALGRIND_CONFIGS",
    "CACHE_FLAGS",
    "build_parser",
    "measure",
    "plot",
    "main",
    "valgrind_per_step",
    "parse_callgrind_dump",
    "federation_rounds",
    "federation_ratios",
    "refresh_federation30",
]

NAME = "energy"
RECIPES = ("standard", "lowcost", "lowcost-po2")
#: (model, batch, in_shape) of the modelled energy table (the issue's settings).
MODEL_CONFIGS = (
    ("mlp", 100, (1, 28, 28)),
    ("cnv", 100, (3, 32, 32)),
    ("binarynet", 100, (3, 32, 32)),
    ("resnete18", 32, (3, 224, 224)),
)
#: (model, recipe, batch, in_shape) of the valgrind cross-check (CNV at batch 16: a step
#: under valgrind is ~50-100x slower than native).
VALGRIND_CONFIGS = (
    ("mlp", "standard", 100, (1, 28, 28)),
    ("mlp", "lowcost", 100, (1, 28, 28)),
    ("cnv", "standard", 16, (3, 32, 32)),
    ("cnv", "lowcost", 16, (3, 32, 32)),
)
QUICK_VALGRIND_CONFIGS = (
    ("mlp", "standard", 16, (1, 28, 28)),
    ("mlp", "lowcost", 16, (1, 28, 28)),
)
CG_WARMUP, CG_STEPS = 2, 2
#: Raspberry Pi 3B+ (BCM2837B0, Cortex-A53) caches: size, associativity, line bytes.
CACHE_FLAGS = ("--I1=32768,2,64", "--D1=32768,4,64", "--LL=524288,16,64")
CACHE_LINE_BYTES = 64
CG_EVENTS = ("Ir", "Dr", "Dw", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw")
_HELPER_C = r"""
#include <valgrind/callgrind.h>
void bitfed_cg_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void bitfed_cg_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
void bitfed_cg_zero(void) { CALLGRIND_ZERO_STATS; }
void bitfed_cg_dump(const char *label) { CALLGRIND_DUMP_STATS_AT(label); }
"""


# --------------------------------------------------------------------------------------------
# Callgrind: worker (inside valgrind) and driver
# --------------------------------------------------------------------------------------------


def _build_helper(folder: Path) -> Path:
    """Compile the client-request helper (needs ``cc`` and ``valgrind/callgrind.h``)."""
    source, lib = folder / "bitfed_cg.c", folder / "libbitfed_cg.so"
    source.write_text(_HELPER_C)
    done = subprocess.run(
        ["cc", "-O1", "-shared", "-fPIC", "-o", str(lib), str(source)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SkipBenchmark(
            "cannot build the callgrind client-request helper (needs cc and valgrind's "
            f"callgrind.h: apt-get install -y gcc valgrind): {done.stderr.strip()[-200:]}"
        )
    return lib


def _worker(plan: list[list[Any]], helper: str) -> None:
    """Run each ``[model, recipe, batch, in_shape]``, counting only the measured steps.

    Per configuration: build, :data:`CG_WARMUP` uninstrumented steps, then :data:`CG_STEPS`
    instrumented steps, each dumped as ``model/recipe/i`` (step 0 starts with empty simulated
    caches, step 1 with the caches step 0 left). Standard models get float32 images in [-1, 1],
    low-cost ones the uint8 codes of the same images (each recipe's natural input, as
    ``core.memory`` measures them).
    """
    import ctypes

    import torch

    from core import build_model, build_optimizer, from_recipe

    lib = ctypes.CDLL(helper)
    torch.set_num_threads(1)
    for model_name, recipe, batch, in_shape in plan:
        torch.manual_seed(0)
        rec = from_recipe(recipe)
        model = build_model(model_name, rec, num_classes=10, in_shape=tuple(in_shape))
        optimizer = build_optimizer(model, rec)
        gen = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (batch, *in_shape), generator=gen, dtype=torch.uint8)
        x = pixels if rec.lowcost else pixels.float().div_(127.5).sub_(1.0)
        y = torch.randint(0, 10, (batch,), generator=gen)
        model.train()
        for _ in range(CG_WARMUP):
            _train_step(model, optimizer, x, y)
        lib.bitfed_cg_start()
        lib.bitfed_cg_zero()
        for i in range(CG_STEPS):
            _train_step(model, optimizer, x, y)
            lib.bitfed_cg_dump(f"{model_name}/{recipe}/{i}".encode())
        lib.bitfed_cg_stop()


def _train_step(model: Any, optimizer: Any, x: Any, y: Any) -> None:
    """One step as a typical loop writes it (``core.memory.training_step``)."""
    import torch.nn.functional as F

    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def parse_callgrind_dump(text: str) -> tuple[str, dict[str, int]]:
    """Label and event totals of one callgrind dump: ``("mlp/lowcost/0", {"Ir": ...})``."""
    events: list[str] | None = None
    label, totals = "", None
    for line in text.splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("desc: Trigger:"):
            label = line.split("Client Request:", 1)[-1].strip()
        elif line.startswith(("summary:", "totals:")) and totals is None:
            if events is None:
                raise ValueError("callgrind dump has totals but no events line")
            totals = dict(zip(events, (int(v) for v in line.split()[1:])))
    if totals is None:
        raise ValueError("callgrind dump has no totals line; did valgrind finish?")
    return label, totals


def valgrind_per_step(
    configs: tuple[tuple[str, str, int, tuple[int, ...]], ...], timeout: float = 1800.0
) -> dict[str, Any]:
    """Per-step valgrind counts of each ``(model, recipe, batch, in_shape)``, in one process.

    Returns ``{"per_step": [...], "tool": ..., "cache_flags": [...]}``; each row holds the
    events of every measured step (``steps``), those of the last one (warm simulated caches) as
    its figures, and ``dram_bytes = (DLmr + DLmw) * 64`` (last-level read and write misses, one
    line each; write-backs of dirty lines are not simulated, so it is a lower bound of DRAM
    traffic).
    """
    for tool in ("valgrind", "cc"):
        if shutil.which(tool) is None:
            raise SkipBenchmark(f"{tool} not found: apt-get install -y valgrind gcc")
    plan = [[m, r, b, list(s)] for m, r, b, s in configs]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="bitfed-cg-") as tmp:
        helper = _build_helper(Path(tmp))
        out = Path(tmp) / "callgrind.out"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--cache-sim=yes",
            "--instr-atstart=no",
            *CACHE_FLAGS,
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "benchmarks.energy",
            "--valgrind-worker",
            json.dumps(plan),
            "--helper",
            str(helper),
        ]
        started = time.perf_counter()
        done = subprocess.run(
            cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise RuntimeError(f"valgrind run failed ({done.returncode}): {tail}")
        dumps = dict(parse_callgrind_dump(p.read_text()) for p in Path(tmp).glob("callgrind.out.*"))
    per_step = []
    for model_name, recipe, batch, shape in configs:
        steps = []
        for i in range(CG_STEPS):
            key = f"{model_name}/{recipe}/{i}"
            if key not in dumps:
                raise RuntimeError(f"valgrind produced no dump for {key}; got {sorted(dumps)}")
            steps.append(dumps[key])
        row: dict[str, Any] = {
            "model": model_name,
            "recipe": recipe,
            "batch": batch,
            "in_shape": list(shape),
        }
        row |= {k: steps[-1][k] for k in CG_EVENTS}  # the warm-cache step
        row["dram_bytes"] = (row["DLmr"] + row["DLmw"]) * CACHE_LINE_BYTES
        row["steps"] = steps
        per_step.append(row)
        print(
            f"valgrind {model_name}/{recipe} b{batch}: {row['Ir']:,.0f} instructions/step, "
            f"{row['Dr'] + row['Dw']:,.0f} data refs, {row['DLmr'] + row['DLmw']:,.0f} LL misses",
            flush=True,
        )
    return {
        "per_step": per_step,
        "tool": "valgrind --tool=callgrind --cache-sim=yes --instr-atstart=no",
        "valgrind": _valgrind_version(),
        "cache_flags": list(CACHE_FLAGS),
        "cache_model": "Raspberry Pi 3B+ (Cortex-A53): L1i 32 KiB 2-way, L1d 32 KiB 4-way, "
        "L2 512 KiB 16-way, 64 B lines",
        "warmup_steps": CG_WARMUP,
        "measured_steps": CG_STEPS,
        "seconds": round(seconds, 1),
    }


def _valgrind_version() -> str:
    done = subprocess.run(["valgrind", "--version"], capture_output=True, text=True)
    return done.stdout.strip()


# --------------------------------------------------------------------------------------------
# Benchmark entry points
# --------------------------------------------------------------------------------------------


def _modelled(configs: tuple[tuple[str, int, tuple[int, ...]], ...]) -> list[dict[str, Any]]:
    """Rows of :func:`core.energy.energy_rows` for every configuration and recipe.

    Each row also holds ``ratio_by_device_class``: ``standard / recipe`` priced with every
    :data:`core.energy.DEVICE_CLASSES` entry (DRAM at 1.3 or 2.6 nJ, or all traffic as SRAM).
    """
    from core.energy import DEVICE_CLASSES, energy_rows

    models = []
    for model_name, batch, shape in configs:
        t0 = time.perf_counter()
        rows = energy_rows(model_name, batch, shape, RECIPES)
        for row in rows:
            row["total_counts"] = row.pop("counts")["total"]  # phases: see "phases" below
        base = rows[0]["total_counts"]
        for row in rows:
            row["ratio_by_device_class"] = {
                name: _reprice(base, k) / _reprice(row["total_counts"], k)
                for name, k in DEVICE_CLASSES.items()
            }
        seconds = time.perf_counter() - t0
        models.append({"model": model_name, "batch": batch, "in_shape": list(shape), "rows": rows})
        models[-1]["count_seconds"] = round(seconds, 1)
        line = ", ".join(f"{r['recipe']} {r['total_j'] * 1e3:.2f} mJ" for r in rows)
        ratio = rows[1]["ratio"]["total"]
        print(f"{model_name} b{batch}: {line}; standard/lowcost {ratio:.2f}x ({seconds:.0f} s)")
    return models


#: The paper's proposed method in C++ on a Raspberry Pi 3B+ (docs/method.md §4): model, batch,
#: sample shape, seconds per batch, measured whole-board joules per batch.
PAPER_PI = (("mlp", 200, (1, 28, 28), 0.98, 1.42), ("binarynet", 40, (3, 32, 32), 121.20, 136.53))


def _paper_settings(quick: bool) -> list[dict[str, Any]]:
    """Modelled joules per batch at the paper's batch sizes, beside its measured figures.

    The paper's figures are the whole board's energy for its low-cost method (joules = average
    power x seconds per batch), so they compare with ``modelled_j["lowcost"]`` only in order
    of magnitude: the model counts the arithmetic and DRAM traffic, not static power.
    """
    from core.energy import count_step, step_energy

    out = []
    for model_name, batch, shape, seconds, measured in PAPER_PI[: 1 if quick else 2]:
        modelled = {
            r: step_energy(count_step(model_name, r, batch, shape)).total_j for r in RECIPES[:2]
        }
        out.append(
            {
                "model": model_name,
                "batch": batch,
                "paper_lowcost_j_per_batch": measured,
                "paper_seconds_per_batch": seconds,
                "paper_average_power_w": measured / seconds,
                "modelled_j": modelled,
                "modelled_lowcost_share_of_measured": modelled["lowcost"] / measured,
            }
        )
    return out


def _reprice(counts: dict[str, Any], constants: Any) -> float:
    """Joules of a ``WorkCounts.as_dict()`` under ``constants`` (``sum n_k e_k + e_mem b``)."""
    compute = sum(n * constants.op_pj(k) for k, n in counts["ops"].items())
    return 1e-12 * (compute + constants.memory_pj_per_byte * counts["total_bytes"])


def _phases(model_name: str, recipe: str, batch: int, shape: tuple[int, ...]) -> dict[str, Any]:
    """Modelled energy and counts of one step split into forward, backward and optimizer."""
    from core.energy import count_step, step_energy

    step = count_step(model_name, recipe, batch, shape)
    out = {}
    for phase in ("forward", "backward", "optimizer", "total"):
        work = getattr(step, phase)
        energy = step_energy(work)
        out[phase] = {
            "total_j": energy.total_j,
            "compute_j": energy.compute_j,
            "memory_j": energy.memory_j,
            **work.as_dict(),
        }
    return out


def compare(valgrind: dict[str, Any]) -> list[dict[str, Any]]:
    """Per model, ``standard / lowcost`` of the valgrind counts beside the model's ratios.

    The model is evaluated at the valgrind batch. Valgrind's memory-side energy prices every
    data reference as a 32 KiB-SRAM access, every L1 miss as a line (8 x 64 bit) from a 1 MiB
    SRAM and every last-level miss as a line from DRAM, with the same Horowitz constants.
    """
    from core.energy import DEFAULT_CONSTANTS as K
    from core.energy import count_step, step_energy

    rows = {(r["model"], r["recipe"]): r for r in valgrind["per_step"]}
    out = []
    for model_name in dict.fromkeys(m for m, _ in rows):
        std, low = rows.get((model_name, "standard")), rows.get((model_name, "lowcost"))
        if std is None or low is None:
            continue
        shape = tuple(std["in_shape"])
        counted = {r: count_step(model_name, r, std["batch"], shape) for r in RECIPES[:2]}
        mod = {r: step_energy(c) for r, c in counted.items()}
        traffic = {r: c.total.total_bytes for r, c in counted.items()}

        def mem_energy(v: dict[str, Any]) -> float:
            lines = 8  # 64-bit accesses per 64-byte line
            return 1e-12 * (
                (v["Dr"] + v["Dw"]) * K.sram_32kb_pj
                + (v["D1mr"] + v["D1mw"]) * lines * K.sram_1mb_pj
                + (v["DLmr"] + v["DLmw"]) * lines * K.dram_pj
            )

        def ratio(a: float, b: float) -> float:
            return a / b if b else float("inf")

        m_std, m_low = mod["standard"], mod["lowcost"]
        entry = {
            "model": model_name,
            "batch": std["batch"],
            "model_ratio": {
                "total_energy": ratio(m_std.total_j, m_low.total_j),
                "compute_energy": ratio(m_std.compute_j, m_low.compute_j),
                "memory_energy": ratio(m_std.memory_j, m_low.memory_j),
            },
            "valgrind_ratio": {
                "instructions": ratio(std["Ir"], low["Ir"]),
                "data_refs": ratio(std["Dr"] + std["Dw"], low["Dr"] + low["Dw"]),
                "dram_bytes": ratio(std["dram_bytes"], low["dram_bytes"]),
                "memory_energy": ratio(mem_energy(std), mem_energy(low)),
            },
            "agreement": {  # valgrind's ratio / the model's ratio (1 = same saving)
                "dram_bytes_vs_model_traffic": ratio(
                    ratio(std["dram_bytes"], low["dram_bytes"]),
                    ratio(traffic["standard"], traffic["lowcost"]),
                ),
                "instructions_vs_model_compute": ratio(
                    ratio(std["Ir"], low["Ir"]), ratio(m_std.compute_j, m_low.compute_j)
                ),
            },
            "valgrind_dram_over_model_traffic": {
                r: ratio(v["dram_bytes"], traffic[r])
                for r, v in (("standard", std), ("lowcost", low))
            },
            "model_traffic_bytes": traffic,
            "valgrind_dram_bytes": {"standard": std["dram_bytes"], "lowcost": low["dram_bytes"]},
            "model_energy_j": {"standard": m_std.total_j, "lowcost": m_low.total_j},
            "valgrind_memory_energy_j": {"standard": mem_energy(std), "lowcost": mem_energy(low)},
        }
        out.append(entry)
        mr, vr = entry["model_ratio"], entry["valgrind_ratio"]
        print(
            f"{model_name} b{std['batch']}: model total {mr['total_energy']:.2f}x, memory "
            f"{mr['memory_energy']:.2f}x, compute {mr['compute_energy']:.2f}x | valgrind "
            f"instructions {vr['instructions']:.2f}x, DRAM bytes {vr['dram_bytes']:.2f}x, "
            f"memory energy {vr['memory_energy']:.2f}x"
        )
    return out


def federation_rounds(step_j: dict[str, float], path: Path) -> dict[str, Any] | None:
    """Modelled device energy per round of the 30-round MNIST federation (``federation30.json``).

    Per run and radio: per round ``steps * E_step + radio(bytes up, bytes down)`` with the
    run's own per-client bytes of each round (:func:`core.energy.round_energy`), steps = one
    local epoch of the mean client's training share (``60,000 / clients x (1 - val_fraction)``
    samples, batch ``batch_size``: 54 steps for 10 clients, batch 100 and the default 10 %
    local validation split), the cumulative joules after each round beside the test accuracy,
    and :func:`federation_ratios`. Reads only the saved JSON: nothing is trained.
    """
    from core.config import PartitionConfig
    from core.energy import round_energy

    if not path.exists():
        return None
    fed = json.loads(path.read_text())
    if "runs" not in fed:
        return None
    config = fed["config"]
    val = config.get("val_fraction", PartitionConfig().val_fraction)
    steps = math.ceil(60000 / config["clients"] * (1 - val) / config["batch_size"])
    runs = []
    for run in fed["runs"]:
        per_radio = {}
        for radio in ("wifi", "lte"):
            cumulative, rounds = 0.0, []
            for rnd in run["rounds"]:
                if rnd["uplink_bytes"] is None:
                    continue
                e = round_energy(
                    step_j[run["recipe"]],
                    steps,
                    rnd["uplink_bytes"],
                    rnd["downlink_bytes"],
                    radio=radio,
                )
                cumulative += e["total_j"]
                rounds.append(
                    {
                        "round": rnd["round"],
                        "accuracy": rnd["accuracy"],
                        "compute_j": e["compute_j"],
                        "radio_j": e["radio_j"],
                        "radio_tail_j": e["radio_tail_j"],
                        "total_j": e["total_j"],
                        "cumulative_j": cumulative,
                    }
                )
            per_radio[radio] = {"total_j": cumulative, "rounds": rounds}
        runs.append(
            {
                "variant": run["variant"],
                "partition": run["partition"],
                "recipe": run["recipe"],
                "final_accuracy": run["final_accuracy"],
                **per_radio,
            }
        )
    return {
        "source": str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path),
        "steps_per_round": steps,
        "step_j": step_j,
        "runs": runs,
        "ratios": federation_ratios(runs),
        "note": "modelled per device (compute + radio incl. 2 promotions + 2 tails per round)",
    }


def federation_ratios(
    runs: list[dict[str, Any]], baseline: str = "float32 fedavg"
) -> list[dict[str, Any]]:
    """``baseline / variant`` of the cumulative device energy, per partition and radio.

    ``runs`` are :func:`federation_rounds`' runs; for each partition and each other variant:
    ``{"partition", "variant", "baseline", "wifi", "lte"}`` with the ratios (above 1: the
    variant spends less), and the joules and the compute share behind them.
    """
    out = []
    base = {r["partition"]: r for r in runs if r["variant"] == baseline}
    for run in runs:
        ref = base.get(run["partition"])
        if run["variant"] == baseline or ref is None:
            continue
        entry: dict[str, Any] = {
            "partition": run["partition"],
            "variant": run["variant"],
            "baseline": baseline,
        }
        for radio in ("wifi", "lte"):
            mine, theirs = run[radio]["total_j"], ref[radio]["total_j"]
            entry[radio] = theirs / mine if mine else float("inf")
            entry[f"{radio}_j"] = {"variant": mine, "baseline": theirs}
        entry["compute_j"] = {
            "variant": sum(r["compute_j"] for r in run["wifi"]["rounds"]),
            "baseline": sum(r["compute_j"] for r in ref["wifi"]["rounds"]),
        }
        out.append(entry)
    return out


def refresh_federation30(energy_path: Path, fed_path: Path) -> dict[str, Any]:
    """Recompute ``energy.json``'s federation part from the saved files alone; rewrite it.

    Uses the per-step joules already in ``energy_path`` (the MLP at batch 100) and the per-round
    bytes in ``fed_path`` (``federation30.json``): no training, no counting. Redraws
    ``energy.png`` from the rewritten result; returns the part.
    """
    from benchmarks.common import write_json

    energy = json.loads(energy_path.read_text())
    mlp = next(m for m in energy["models"] if m["model"] == "mlp")
    step_j = {r["recipe"]: r["total_j"] for r in mlp["rows"]}
    part = federation_rounds(step_j, fed_path)
    if part is None:
        raise SkipBenchmark(f"{fed_path} has no federation runs")
    part["refreshed"] = (
        "python -m benchmarks.energy --refresh-federation30 "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}), from the saved JSON"
    )
    energy["federation30"] = part
    write_json(energy_path, energy)
    import matplotlib

    matplotlib.use("Agg")
    plot(energy, energy_path.with_suffix(".png"))  # its right panel shows this part
    return part


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Modelled energy for every configuration, then the valgrind cross-check."""
    from core.energy import DEFAULT_CONSTANTS

    configs = MODEL_CONFIGS[:2] if args.quick else MODEL_CONFIGS
    models = _modelled(configs)
    phases = {f"{m}/{r}": _phases(m, r, b, s) for m, b, s in configs[:2] for r in RECIPES[:2]}
    mlp_rows = {r["recipe"]: r["total_j"] for r in models[0]["rows"]}
    result: dict[str, Any] = {
        "config": {
            "models": [[m, b, list(s)] for m, b, s in configs],
            "recipes": list(RECIPES),
            "constants": dataclasses.asdict(DEFAULT_CONSTANTS),
            "threads": 1,
            "paper": {
                "claim": "2-6x lower energy than standard BNN training (Wang et al., arXiv "
                "2102.04270, abstract)",
                "measured_j_per_batch": {"mlp b200": 1.42, "binarynet b40": 136.53},
                "device": "Raspberry Pi 3B+ (whole board)",
            },
        },
        "models": models,
        "paper_settings": _paper_settings(quick=args.quick),
        "phases": phases,
        "federation30": federation_rounds(mlp_rows, args.out / "federation30.json"),
    }
    if args.skip_valgrind:
        result["valgrind"] = {"skipped": "--skip-valgrind"}
        return result
    if args.valgrind_from:
        valgrind = json.loads(Path(args.valgrind_from).read_text())
        if "per_step" not in valgrind:  # a whole energy.json: its "valgrind" part
            valgrind = valgrind["valgrind"]
        for row in valgrind["per_step"]:  # figures = the last (warm-cache) step
            row |= {k: row["steps"][-1][k] for k in CG_EVENTS}
            row["dram_bytes"] = (row["DLmr"] + row["DLmw"]) * CACHE_LINE_BYTES
        valgrind["reused_from"] = str(args.valgrind_from)
    else:
        cg = QUICK_VALGRIND_CONFIGS if args.quick else VALGRIND_CONFIGS
        valgrind = valgrind_per_step(cg)
    result["valgrind"] = valgrind
    result["comparison"] = compare(valgrind)
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    """Left: modelled J/step relative to standard, compute and memory stacked, per model.

    Right: ``standard / lowcost`` of the model (total, memory) and of valgrind's counts
    (instructions, DRAM bytes) where valgrind ran.
    """
    import matplotlib.pyplot as plt

    from benchmarks.common import save_figure

    models = result["models"]
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.8 / len(RECIPES)
    for j, recipe in enumerate(RECIPES):
        xs = [i + (j - 1) * width for i in range(len(models))]
        base = [next(r for r in m["rows"] if r["recipe"] == "standard")["total_j"] for m in models]
        rows = [next(r for r in m["rows"] if r["recipe"] == recipe) for m in models]
        comp = [r["compute_j"] / b for r, b in zip(rows, base)]
        mem = [r["memory_j"] / b for r, b in zip(rows, base)]
        ax.bar(xs, comp, width, color=f"C{j}", alpha=0.5, label=f"{recipe} compute")
        ax.bar(xs, mem, width, bottom=comp, color=f"C{j}", label=f"{recipe} memory")
        for x, c, m in zip(xs, comp, mem):
            ax.text(x, c + m, f"{c + m:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(
        range(len(models)), [f"{m['model']}\nbatch {m['batch']}" for m in models], fontsize=8
    )
    ax.set(ylabel="modelled J/step / standard's", title="Modelled energy per step (45 nm)")
    ax.legend(fontsize=6, ncol=2)
    comparison = result.get("comparison") or []
    labels, series = [], {"model total": [], "model memory": [], "valgrind instr.": [],
                          "valgrind DRAM bytes": []}  # fmt: skip
    for c in comparison:
        labels.append(f"{c['model']} b{c['batch']}")
        series["model total"].append(c["model_ratio"]["total_energy"])
        series["model memory"].append(c["model_ratio"]["memory_energy"])
        series["valgrind instr."].append(c["valgrind_ratio"]["instructions"])
        series["valgrind DRAM bytes"].append(c["valgrind_ratio"]["dram_bytes"])
    w = 0.8 / len(series)
    for j, (name, values) in enumerate(series.items()):
        xs = [i + (j - 1.5) * w for i in range(len(labels))]
        bx.bar(xs, values, w, label=name)
        for x, v in zip(xs, values):
            bx.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    bx.axhline(1.0, color="0.3", lw=0.8)
    bx.set_xticks(range(len(labels)), labels, fontsize=8)
    bx.set(ylabel="standard / lowcost", title="Model vs valgrind counts (above 1: lowcost less)")
    if labels:
        bx.legend(fontsize=7)
    else:
        bx.text(0.5, 0.5, "valgrind not run", ha="center", transform=bx.transAxes)
    _plot_federation(cx, result.get("federation30"))
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_figure(fig, path, result["machine"])


def _plot_federation(ax: Any, fed: dict[str, Any] | None) -> None:
    """Test accuracy against cumulative modelled device energy, 30-round MNIST federation."""
    if not fed:
        ax.text(0.5, 0.5, "no federation30.json", ha="center", transform=ax.transAxes)
        return
    for i, run in enumerate(r for r in fed["runs"] if r["partition"] == "IID"):
        for radio, style in (("wifi", "-"), ("lte", ":")):
            rounds = run[radio]["rounds"]
            xs = [r["cumulative_j"] for r in rounds]
            ys = [r["accuracy"] for r in rounds]
            ax.plot(xs, ys, style, color=f"C{i}", label=f"{run['variant']}, {radio}")
    ax.set_xscale("log")
    ax.set(
        xlabel="cumulative modelled energy per device (J, log)",
        ylabel="test accuracy",
        title="MNIST IID federation: accuracy vs device energy",
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def build_parser() -> argparse.ArgumentParser:
    """Arguments: the common ones plus ``--skip-valgrind`` (and the internal worker flag)."""
    parser = benchmark_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument(
        "--skip-valgrind", action="store_true", help="only the modelled energy (seconds)"
    )
    parser.add_argument(
        "--valgrind-from",
        default=None,
        help="reuse the valgrind counts of an earlier energy.json instead of running valgrind",
    )
    parser.add_argument(
        "--refresh-federation30",
        action="store_true",
        help="only recompute energy.json's federation30 part from the saved JSON files (seconds)",
    )
    parser.add_argument("--valgrind-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--helper", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.energy [--quick] [--skip-valgrind]``."""
    args = build_parser().parse_args(argv)
    if args.valgrind_worker is not None:
        _worker(json.loads(args.valgrind_worker), args.helper)
        return 0
    if args.refresh_federation30:
        part = refresh_federation30(args.out / f"{NAME}.json", args.out / "federation30.json")
        for r in part["ratios"]:
            print(
                f"{r['partition']}: {r['baseline']} / {r['variant']} device energy: "
                f"Wi-Fi {r['wifi']:.2f}x, LTE {r['lte']:.2f}x"
            )
        return 0
    return run_benchmark(NAME, measure, plot, args)


if __name__ == "__main__":
    raise SystemExit(main())
