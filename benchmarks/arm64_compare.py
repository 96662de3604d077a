"""Same seed, same batch, two machines: where do x86-64 and aarch64 numbers part? (issue 19).

Run ``dump`` on each platform (the aarch64 one inside ``scripts/test-arm64.sh``'s chroot), then
``compare`` the two files::

    python -m benchmarks.arm64_compare dump x86.pt
    python -m benchmarks.arm64_compare dump arm.pt --weights x86.pt     # x86's initial weights
    python -m benchmarks.arm64_compare compare x86.pt arm.pt
    python -m benchmarks.arm64_compare train --epochs 10 --seeds 0 1 2  # digits accuracy

``dump`` builds the digits MLP (64-256-256-256-256-10) for ``standard`` and ``lowcost`` with
``torch.manual_seed(0)``, records its initial weights, then (optionally with another platform's
initial weights loaded, so init and arithmetic are told apart) one forward/backward on the first
100 training images, capturing every module's output and the gradient of that output
(``Tensor.register_hook``), each layer's packed ``grad_bits`` and every dense ``.grad``, then
three optimizer steps (batches 0-2, no shuffle) with their losses. Only torch, numpy and
scikit-learn's digits file are needed, so it runs in the minimal arm64 environment.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.data.digits import load_digits
from core.data.loader import ImageLoader
from core.models import build_model
from core.optim import build_optimizer

__all__ = ["dump", "compare", "train", "train_records", "RECIPES"]

RECIPES = ("standard", "lowcost")
BATCH = 100
STEPS = 3


def _environment() -> dict[str, str]:
    return {
        "machine": platform.machine(),
        "torch": str(torch.__version__),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": str(torch.get_num_threads()),
    }


def _batches(count: int) -> list[tuple[Tensor, Tensor]]:
    loader = ImageLoader(load_digits("train"), batch_size=BATCH, shuffle=False, raw=True)
    return [batch for _, batch in zip(range(count), loader)]


def _model(recipe: str, weights: dict[str, Tensor] | None) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("mlp", recipe, 10, (1, 8, 8))
    if weights is not None:
        model.load_state_dict(weights)
    return model


def _trace(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """One forward/backward: module outputs ``out/<name>``, their gradients ``grad/<name>``."""
    record: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            record[f"out/{name}"] = output.detach().clone()
            if output.requires_grad:
                output.register_hook(lambda g: record.__setitem__(f"grad/{name}", g.clone()))

        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in model.named_children()]
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    for h in handles:
        h.remove()
    record["loss"] = loss.detach()
    for name, buf in model.named_buffers():
        if name.endswith("grad_bits"):
            record[f"grad_bits/{name}"] = buf.clone()
    for name, p in model.named_parameters():
        if p.grad is not None:
            record[f"param_grad/{name}"] = p.grad.clone()
    return record


def dump(out: Path, weights_from: Path | None = None) -> dict[str, Any]:
    """Write init weights, the traced step and three training losses per recipe to ``out``."""
    torch.set_num_threads(1)
    reference = torch.load(weights_from) if weights_from else None
    batches = _batches(STEPS)
    result: dict[str, Any] = {"env": _environment()}
    for recipe in RECIPES:
        init = _model(recipe, None).state_dict()
        start = reference[recipe]["init"] if reference else None
        model = _model(recipe, start)
        trace = _trace(model, *batches[0])
        model = _model(recipe, start)
        optimizer = build_optimizer(model, recipe)
        losses = []
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        result[recipe] = {
            "init": {k: v.clone() for k, v in init.items()},
            "trace": trace,
            "losses": torch.tensor(losses, dtype=torch.float64),
            "after": {k: v.clone() for k, v in model.state_dict().items()},
        }
    torch.save(result, out)
    return result


def _difference(a: Tensor, b: Tensor) -> str:
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"shape/dtype differ: {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}"
    if a.dtype == torch.uint8:  # packed sign bits: count differing bits
        bits = torch.bitwise_xor(a, b)
        flipped = sum(int(((bits >> i) & 1).sum()) for i in range(8))
        return f"{flipped} of {a.numel() * 8} bits differ ({flipped / (a.numel() * 8):.3%})"
    differ = a != b
    if not bool(differ.any()):
        return "identical"
    delta = (a.double() - b.double()).abs()
    scale = float(b.double().abs().max()) or 1.0
    return (
        f"{int(differ.sum())} of {a.numel()} differ ({float(differ.double().mean()):.3%}), "
        f"max |diff| {float(delta.max()):.3g} ({float(delta.max()) / scale:.2e} of max|ref|)"
    )


def compare(path_a: Path, path_b: Path) -> list[str]:
    """Lines naming every tensor of two dumps and how it differs."""
    a, b = torch.load(path_a), torch.load(path_b)
    lines = [f"A {path_a}: {a['env']}", f"B {path_b}: {b['env']}"]
    for recipe in RECIPES:
        lines.append(f"== {recipe}")
        lines.append(f"losses A {a[recipe]['losses'].tolist()}")
        lines.append(f"losses B {b[recipe]['losses'].tolist()}")
        for part in ("init", "trace", "after"):
            for key, value in a[recipe][part].items():
                lines.append(f"{part}/{key}: {_difference(value, b[recipe][part][key])}")
    return lines


def train_records(
    epochs: int, seeds: list[int], recipes: tuple[str, ...] = RECIPES
) -> dict[str, Any]:
    """Central digits training per recipe and seed: test accuracy after ``epochs`` epochs.

    ``{"environment": …, "epochs", "batch", "runs": [{"recipe", "seed", "accuracy",
    "seconds"}, …]}`` (one torch thread; ``seconds``: build, train and test of one run).
    """
    from core.train import evaluate, fit

    torch.set_num_threads(1)
    train_set, test_set = load_digits("train"), load_digits("test")
    runs = []
    for recipe in recipes:
        for seed in seeds:
            started = time.perf_counter()
            torch.manual_seed(seed)
            model = build_model("mlp", recipe, 10, (1, 8, 8))
            optimizer = build_optimizer(model, recipe)
            loader = ImageLoader(train_set, batch_size=BATCH, seed=seed, raw=True)
            fit(model, optimizer, loader, epochs=epochs)
            test = ImageLoader(test_set, batch_size=BATCH, shuffle=False, raw=True)
            acc = evaluate(model, test).accuracy
            runs.append(
                {
                    "recipe": recipe,
                    "seed": seed,
                    "accuracy": float(acc),
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
    return {"environment": _environment(), "epochs": epochs, "batch": BATCH, "runs": runs}


def train(epochs: int, seeds: list[int], recipes: tuple[str, ...] = RECIPES) -> list[str]:
    """:func:`train_records` as lines: the environment, then one line per recipe and seed."""
    records = train_records(epochs, seeds, recipes)
    lines = [str(records["environment"])]
    for run in records["runs"]:
        lines.append(
            f"{run['recipe']} seed {run['seed']} epochs {epochs}: "
            f"test accuracy {run['accuracy']:.4f}"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    """Command line: ``dump``, ``compare`` or ``train``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.arm64_compare")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("out", type=Path)
    d.add_argument("--weights", type=Path, default=None, help="start from this dump's init")
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    t = sub.add_parser("train")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--seeds", type=int, nargs="+", default=[0])
    t.add_argument("--recipes", nargs="+", default=list(RECIPES))
    t.add_argument("--json", action="store_true", help="one JSON line (train_records) instead")
    args = parser.parse_args(argv)
    if args.command == "dump":
        result = dump(args.out, args.weights)
        for recipe in RECIPES:
            print(recipe, result[recipe]["losses"].tolist())
    elif args.command == "compare":
        print("\n".join(compare(args.a, args.b)))
    elif args.json:
        print(json.dumps(train_records(args.epochs, args.seeds, tuple(args.recipes))), flush=True)
    else:
        print("\n".join(train(args.epochs, args.seeds, tuple(args.recipes))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
