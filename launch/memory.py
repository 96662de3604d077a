"""Entry point ``bitfed-memory``: measured and modelled memory of one training step per recipe.

``bitfed-memory --model NAME --batch-size B [--recipes standard,lowcost,lowcost-po2] [--json]``

``bitfed-memory --model NAME --budget 64MiB [--recipe lowcost] [--json]``: the batch planner.
For each recipe, the largest training batch whose measured whole-step peak fits the budget
(:func:`core.planner.largest_batch`, run in one fresh subprocess per recipe), the probe that
proves it (its batch and measured peak), and the first probe that did not fit. An answer beyond
``--max-batch`` (every probe fitted) is extrapolated from the last two probes and labelled so.

Each recipe runs in a fresh subprocess (glibc pinned by :data:`core.memory.MALLOC_ENV`): one warm
step, then the measurements of :func:`core.memory.measure_step`; its step time is the median of
``--steps`` steps in a second fresh subprocess with stock glibc (pinning slows large allocations
and would bias the time ratio). With ``--json`` it prints one JSON
object ``{"model", "batch_size", "recipes": {NAME: {...}}, "ratios": {NAME: {...}}}``; the
ratios are ``standard / NAME`` for memory (``peak_step``, ``peak_step_process``, ``saved``,
``state``, ``analytical``) and ``NAME / standard`` for ``step_seconds``. Without it, a table.
Each recipe is fed its natural input, named ``input_dtype`` in its result: ``standard`` a
float32 batch (what a typical PyTorch user feeds), the low-cost recipes the uint8 pixel codes
(see :func:`core.memory.measure_recipe`). On a machine with CUDA each recipe is also measured
on the GPU (``torch.cuda.max_memory_allocated``).

``bitfed-memory --model NAME --batch-size B --energy [--energy-device CLASS | --energy-constants
FILE] [--json]``: the **modelled** energy of one training step per recipe instead
(:mod:`core.energy`: counted operations x Horowitz's 45 nm per-operation energies + counted
memory traffic x DRAM energy per byte), total and its compute / memory split, and ``standard /
recipe``. Counted from the model's traced shapes in this process, in about a second; nothing is
measured (these machines have no power meter).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any, NoReturn

import torch

from core.config import MODELS, RECIPES
from core.energy import EnergyConstants, get_constants, load_constants
from core.energy.report import energy_rows, format_energy_table
from core.memory import GAP_TOLERANCE, MALLOC_ENV, default_in_shape, measure_recipe
from core.planner import MIN_TRAIN_BATCH, largest_batch, measured_peak, parse_bytes

__all__ = [
    "main",
    "compute_ratios",
    "format_table",
    "format_plans",
    "measure_recipe_isolated",
    "plan_recipe_isolated",
]

_MIB = 2**20


class _OneLineParser(argparse.ArgumentParser):
    """``argparse`` that reports bad input in one line instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        """Print ``bitfed-memory: error: ...`` and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _OneLineParser(
        prog="bitfed-memory",
        description="Measure the memory of one BNN training step per recipe (each in a fresh "
        "subprocess) beside the paper-style analytical model (docs/method.md §5).",
    )
    parser.add_argument("--model", required=True, help=f"one of {', '.join(MODELS)}")
    parser.add_argument("--batch-size", type=int, help="measure one step at this batch")
    parser.add_argument(
        "--budget",
        default="",
        help="plan instead: the largest batch whose step fits SIZE (64MiB, 48MB, 1GiB, bytes)",
    )
    parser.add_argument(
        "--max-batch", type=int, default=4096, help="--budget: largest batch probed"
    )
    parser.add_argument(
        "--recipes",
        "--recipe",
        default=",".join(RECIPES),
        help="comma-separated (default: all)",
    )
    parser.add_argument(
        "--energy",
        action="store_true",
        help="print the modelled energy of one step per recipe (core.energy; not measured)",
    )
    parser.add_argument(
        "--energy-device",
        default="horowitz-45nm",
        help="--energy: device class of the constants (horowitz-45nm, horowitz-45nm-dram-high, "
        "horowitz-45nm-sram)",
    )
    parser.add_argument(
        "--energy-constants",
        default="",
        help="--energy: a JSON or TOML file overriding fields of --energy-device's constants",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--in-shape", default="", help="C,H,W (default: the model's dataset)")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument(
        "--device", default="auto", help="auto (CPU, plus CUDA when present), cpu or cuda"
    )
    parser.add_argument("--po2-bias", type=int, default=8, help="b_off of lowcost-po2")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per recipe")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--phase", default="all", choices=("all", "memory", "time", "plan"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args(argv)

    if args.model not in MODELS:
        parser.error(f"unknown model {args.model!r}; choose one of {', '.join(MODELS)}")
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    bad = [r for r in args.recipes if r not in RECIPES]
    if bad or not args.recipes:
        parser.error(f"unknown recipe(s) {bad}; choose from {', '.join(RECIPES)}")
    if args.energy:
        if args.budget:
            parser.error("give --energy (modelled energy per step) or --budget (plan), not both")
        if args.batch_size is None:
            parser.error("--energy needs --batch-size B (the batch of the step it models)")
        try:
            args.energy_constants = _energy_constants(args.energy_device, args.energy_constants)
        except OSError as err:
            parser.error(f"cannot read --energy-constants {args.energy_constants}: {err.strerror}")
        except ValueError as err:
            parser.error(f"--energy: {' '.join(str(err).split())}")
    elif args.energy_constants or args.energy_device != "horowitz-45nm":
        parser.error("--energy-device and --energy-constants need --energy")
    if args.budget:
        if args.batch_size is not None:
            parser.error("give --batch-size (measure) or --budget (plan), not both")
        try:
            args.budget = parse_bytes(args.budget)
        except ValueError as err:
            parser.error(f"--budget: {err}")
        args.batch_size = 1  # unused when planning; keeps the checks below uniform
    elif args.batch_size is None:
        parser.error("give --batch-size B (measure one step) or --budget SIZE (largest batch)")
    for name in ("batch_size", "num_classes", "steps", "max_batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    if args.device not in ("auto", "cpu", "cuda"):
        parser.error(f"--device must be auto, cpu or cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device; use --device cpu")
    try:
        args.in_shape = (
            tuple(int(d) for d in args.in_shape.split(","))
            if args.in_shape
            else default_in_shape(args.model)
        )
        if any(d < 1 for d in args.in_shape):
            raise ValueError
    except ValueError:
        parser.error(f"--in-shape must be positive integers like 3,32,32, got {args.in_shape!r}")
    return args


def _energy_constants(device: str, path: str) -> EnergyConstants:
    """Return ``--energy-device``'s constants, overridden by the file ``--energy-constants``."""
    base = get_constants(device)
    return load_constants(path, base) if path else base


def _energy_main(args: argparse.Namespace) -> None:
    """``--energy``: count and price one step per recipe (core.energy), print table or JSON."""
    try:
        rows = energy_rows(
            args.model,
            args.batch_size,
            args.in_shape,
            tuple(args.recipes),
            constants=args.energy_constants,
            num_classes=args.num_classes,
        )
    except ValueError as err:
        print(f"bitfed-memory: error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(1) from None
    if args.json:
        keep = ("recipe", "total_j", "compute_j", "memory_j", "macs", "traffic_bytes", "ratio")
        report = {
            "model": args.model,
            "batch_size": args.batch_size,
            "in_shape": list(args.in_shape),
            "device_class": args.energy_constants.device_class,
            "note": "modelled, not measured (core.energy)",
            "recipes": {r["recipe"]: {k: r[k] for k in keep} for r in rows},
        }
        print(json.dumps(report, indent=2))
    else:
        print(format_energy_table(rows))


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if not num or not den else num / den


def compute_ratios(recipes: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Return per non-standard recipe: ``standard / recipe`` memory, ``recipe / standard`` time.

    Empty when ``standard`` was not measured.
    """
    std = recipes.get("standard")
    if std is None:
        return {}
    out = {}
    for name, res in recipes.items():
        if name == "standard":
            continue
        m, s = res["measured"], std["measured"]
        out[name] = {
            "peak_step": _ratio(s["peak_step_bytes"], m["peak_step_bytes"]),
            "peak_step_process": _ratio(s["peak_step_process_bytes"], m["peak_step_process_bytes"]),
            "saved": _ratio(s["saved_bytes"], m["saved_bytes"]),
            "state": _ratio(s["state"]["total"], m["state"]["total"]),
            "analytical": _ratio(std["analytical"]["total"], res["analytical"]["total"]),
            "step_seconds": _ratio(res["step_seconds"], std["step_seconds"]),
        }
        if "cuda" in res and "cuda" in std:
            out[name]["cuda_max_allocated"] = _ratio(
                std["cuda"].get("cuda_max_allocated_bytes"),
                res["cuda"].get("cuda_max_allocated_bytes"),
            )
    return out


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / _MIB:.2f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_table(report: dict[str, Any]) -> str:
    """Render a ``bitfed-memory`` report (the ``--json`` object) as a readable table."""
    shape = "x".join(str(d) for d in report["in_shape"])
    lines = [
        f"bitfed-memory: model={report['model']} batch={report['batch_size']} input={shape} "
        f"torch={report['torch']} threads={report['threads']}   (sizes in MiB)",
        f"{'recipe':<12} {'analytic':>9} {'saved':>9} {'state':>9} {'peak':>9} "
        f"{'peak(RSS)':>10} {'gap':>6} {'step s':>8}  saved by dtype",
    ]
    for name, res in report["recipes"].items():
        m = res["measured"]
        gap = "-" if m["peak_gap"] is None else f"{100 * m['peak_gap']:.0f}%"
        gap += "!" if m["flagged"] else ""
        dtypes = ", ".join(f"{k} {_mib(v)}" for k, v in m["saved_by_dtype"].items())
        lines.append(
            f"{name:<12} {_mib(res['analytical']['total']):>9} {_mib(m['saved_bytes']):>9} "
            f"{_mib(m['state']['total']):>9} {_mib(m['peak_step_bytes']):>9} "
            f"{_mib(m['peak_step_process_bytes']):>10} {gap:>6} {res['step_seconds']:>8.4g}  "
            f"{dtypes}"
        )
        cats = ", ".join(f"{k} {_mib(v)}" for k, v in m["peak_categories"].items() if v)
        fed = f"input {res['input_dtype']}; " if "input_dtype" in res else ""
        lines.append(f"{'':<12} {fed}at peak ({m['peak_where']}): {cats}")
        if "cuda" in res:
            gpu = res["cuda"]
            lines.append(
                f"{'':<12} cuda: not measured ({gpu['error']})"
                if "error" in gpu
                else f"{'':<12} cuda max_memory_allocated {_mib(gpu['cuda_max_allocated_bytes'])}"
            )
    if report["ratios"]:
        lines.append(
            "ratios (memory: standard/recipe; step time: recipe/standard):"
            f"\n{'recipe':<12} {'peak':>7} {'peak(RSS)':>10} {'saved':>8} {'state':>8} "
            f"{'analytic':>9} {'time':>7}"
        )
        for name, r in report["ratios"].items():
            lines.append(
                f"{name:<12} {_times(r['peak_step']):>7} {_times(r['peak_step_process']):>10} "
                f"{_times(r['saved']):>8} {_times(r['state']):>8} {_times(r['analytical']):>9} "
                f"{_times(r['step_seconds']):>7}"
            )
    if any(res["measured"]["flagged"] for res in report["recipes"].values()):
        lines.append(
            f"! the tracker's and the process's peaks differ by more than "
            f"{100 * GAP_TOLERANCE:.0f}% (memory outside tensors: kernel scratch, allocator)"
        )
    return "\n".join(lines)


def measure_recipe_isolated(
    model_name: str,
    recipe: str,
    batch_size: int,
    *,
    in_shape: tuple[int, ...] | None = None,
    num_classes: int = 10,
    steps: int = 5,
    threads: int = 0,
    device: str = "cpu",
    po2_bias: int = 8,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run :func:`measure_recipe` in fresh Python processes: memory, then time.

    The memory phase runs with :data:`MALLOC_ENV` (so the process high-water mark follows the
    tensors); the ``steps`` timed steps run in a second fresh process with stock glibc settings,
    as an application would run. Each child is ``python -m launch.memory --worker ...`` and
    prints one JSON object; the result is :func:`measure_recipe`'s, with the second process's
    ``step_seconds``.

    Raises
    ------
    RuntimeError
        With the child's last error line when it fails or times out.
    """
    args = [
        "--model",
        model_name,
        "--recipes",
        recipe,
        "--batch-size",
        str(batch_size),
        "--num-classes",
        str(num_classes),
        "--steps",
        str(steps),
        "--threads",
        str(threads),
        "--device",
        device,
        "--po2-bias",
        str(po2_bias),
    ]
    if in_shape:
        args += ["--in-shape", ",".join(str(d) for d in in_shape)]
    what = f"{model_name}/{recipe} at batch {batch_size}"
    result = _run_worker([*args, "--phase", "memory"], MALLOC_ENV, what, timeout)
    if steps:
        timing = _run_worker([*args, "--phase", "time"], {}, what, timeout)
        result["step_seconds"] = result["measured"]["step_seconds"] = timing["step_seconds"]
        result["measured"]["step_seconds_all"] = timing["step_seconds_all"]
        result["measured"]["steps_timed"] = len(timing["step_seconds_all"])
    return result


def plan_recipe_isolated(
    model_name: str,
    recipe: str,
    budget_bytes: int,
    *,
    in_shape: tuple[int, ...] | None = None,
    num_classes: int = 10,
    max_batch: int = 4096,
    threads: int = 0,
    po2_bias: int = 8,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run :func:`core.planner.largest_batch` for one recipe in a fresh Python process.

    The child (``python -m launch.memory --worker --phase plan``) measures every probe with
    :func:`core.planner.measured_peak` (MemTracker's whole-step peak, so the probes do not
    disturb each other) and prints :meth:`core.planner.PlanResult.as_dict` as one JSON line.

    Raises
    ------
    RuntimeError
        With the child's last error line when it fails or times out.
    """
    args = [
        "--model", model_name, "--recipes", recipe, "--budget", str(budget_bytes),
        "--max-batch", str(max_batch), "--num-classes", str(num_classes),
        "--threads", str(threads), "--po2-bias", str(po2_bias), "--phase", "plan",
    ]  # fmt: skip
    if in_shape:
        args += ["--in-shape", ",".join(str(d) for d in in_shape)]
    what = f"the largest {model_name}/{recipe} batch under {budget_bytes / _MIB:.2f} MiB"
    return _run_worker(args, {}, what, timeout)


def _plan_line(name: str, plan: dict[str, Any]) -> str:
    """One table row: recipe, batch, peak and how the answer was found."""
    probes = plan["probes"]
    if not plan["fits"]:
        first = probes[0]
        how = f"nothing fits: batch {first['batch']} measured {_mib(first['peak_bytes'])} MiB"
        return f"{name:<12} {0:>7} {'-':>9}  {how}"
    if plan["extrapolated"]:
        last = max(probes, key=lambda p: p["batch"])
        how = (
            f"EXTRAPOLATED, not measured: every probe fitted up to batch {last['batch']} "
            f"({_mib(last['peak_bytes'])} MiB); raise --max-batch to measure it"
        )
        return f"{name:<12} {plan['batch']:>7} {'~' + _mib(plan['peak_bytes']):>9}  {how}"
    proof = plan["proof"]
    over = [p for p in probes if not p["fits"]]
    nxt = min(over, key=lambda p: p["batch"]) if over else None
    how = f"measured: batch {proof['batch']} peaks at {_mib(proof['peak_bytes'])} MiB"
    how += (
        f"; batch {nxt['batch']} at {_mib(nxt['peak_bytes'])} MiB does not fit"
        if nxt
        else " (--max-batch reached)"
    )
    return f"{name:<12} {plan['batch']:>7} {_mib(plan['peak_bytes']):>9}  {how}"


def format_plans(report: dict[str, Any]) -> str:
    """Render a ``bitfed-memory --budget`` report (the ``--json`` object) as a table."""
    shape = "x".join(str(d) for d in report["in_shape"])
    lines = [
        f"bitfed-memory: largest batch under {_mib(report['budget_bytes'])} MiB "
        f"({report['budget_bytes']} bytes) model={report['model']} input={shape} "
        f"torch={report['torch']} threads={report['threads']}",
        "  (peak: measured whole-step peak of the tensors, MemTracker; sizes in MiB)",
        f"{'recipe':<12} {'batch':>7} {'peak':>9}  how",
    ]
    lines += [_plan_line(name, plan) for name, plan in report["plans"].items()]
    return "\n".join(lines)


def _run_worker(
    args: list[str], malloc_env: dict[str, str], what: str, timeout: float | None
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    env.update(malloc_env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "launch.memory", "--worker", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"measuring {what} took over {timeout:.0f} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit status {done.returncode}"
        raise RuntimeError(f"measuring {what} failed: {why}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _worker(args: argparse.Namespace) -> None:
    """Measure one recipe in this (fresh) process and print its result as one JSON line."""
    if args.threads:
        torch.set_num_threads(args.threads)
    (recipe,) = args.recipes
    if args.phase == "plan":

        def probe(batch: int) -> int:
            return measured_peak(
                args.model, recipe, batch, in_shape=args.in_shape,
                num_classes=args.num_classes, po2_bias=args.po2_bias,
            )  # fmt: skip

        plan = largest_batch(
            args.model, recipe, args.budget, in_shape=args.in_shape,
            num_classes=args.num_classes, probe=probe, max_probe_batch=args.max_batch,
            min_batch=MIN_TRAIN_BATCH,
        )  # fmt: skip
        print(json.dumps(plan.as_dict()))
        return
    common = dict(
        in_shape=args.in_shape, num_classes=args.num_classes, steps=args.steps,
        po2_bias=args.po2_bias,
    )  # fmt: skip
    device = "cuda" if args.device == "cuda" else "cpu"
    result = measure_recipe(
        args.model, recipe, args.batch_size, device=device, phase=args.phase, **common
    )
    if args.phase != "time" and args.device == "auto" and torch.cuda.is_available():
        try:
            on_gpu = measure_recipe(args.model, recipe, args.batch_size, device="cuda", **common)
        except Exception as err:  # the CPU figures stand; say why the GPU ones are missing
            result["cuda"] = {"error": f"{type(err).__name__}: {' '.join(str(err).split())}"}
        else:
            result["cuda"] = {
                "cuda_max_allocated_bytes": on_gpu["measured"]["cuda_max_allocated_bytes"],
                "peak_step_bytes": on_gpu["measured"]["peak_step_bytes"],
                "step_seconds": on_gpu["step_seconds"],
            }
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    """Run ``bitfed-memory``."""
    args = _parse_args(argv)
    if args.worker:
        _worker(args)
        return
    if args.energy:
        _energy_main(args)
        return
    if args.budget:
        _plan_main(args)
        return
    recipes = {}
    for recipe in args.recipes:
        if not args.json:
            print(f"measuring {args.model}/{recipe} at batch {args.batch_size} ...", flush=True)
        try:
            recipes[recipe] = measure_recipe_isolated(
                args.model,
                recipe,
                args.batch_size,
                in_shape=args.in_shape,
                num_classes=args.num_classes,
                steps=args.steps,
                threads=args.threads,
                device=args.device,
                po2_bias=args.po2_bias,
                timeout=args.timeout,
            )
        except RuntimeError as err:
            print(f"bitfed-memory: error: {err}", file=sys.stderr)
            raise SystemExit(1) from None
    report = {
        "model": args.model,
        "batch_size": args.batch_size,
        "in_shape": list(args.in_shape),
        "threads": args.threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "recipes": recipes,
        "ratios": compute_ratios(recipes),
    }
    print(json.dumps(report, indent=2) if args.json else format_table(report))


def _plan_main(args: argparse.Namespace) -> None:
    """``--budget``: plan each recipe in its own fresh subprocess, then print the answers."""
    plans = {}
    for recipe in args.recipes:
        if not args.json:
            print(f"planning {args.model}/{recipe} under {_mib(args.budget)} MiB ...", flush=True)
        try:
            plans[recipe] = plan_recipe_isolated(
                args.model, recipe, args.budget, in_shape=args.in_shape,
                num_classes=args.num_classes, max_batch=args.max_batch, threads=args.threads,
                po2_bias=args.po2_bias, timeout=args.timeout,
            )  # fmt: skip
        except RuntimeError as err:
            print(f"bitfed-memory: error: {err}", file=sys.stderr)
            raise SystemExit(1) from None
    report = {
        "model": args.model,
        "budget_bytes": args.budget,
        "in_shape": list(args.in_shape),
        "threads": args.threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "plans": plans,
    }
    print(json.dumps(report, indent=2) if args.json else format_plans(report))


if __name__ == "__main__":
    main()
