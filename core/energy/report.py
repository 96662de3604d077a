"""The modelled energy of one training step per recipe, as rows and as a printed table.

``bitfed-memory --energy`` prints :func:`format_energy_table` of :func:`energy_rows`; the
benchmark (``benchmarks/energy.py``) stores the rows. Ratios are ``standard / recipe`` (above 1:
the recipe needs less energy), as in the paper's "2-6x" claim (Wang et al., arXiv 2102.04270).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from core.energy.constants import DEFAULT_CONSTANTS, EnergyConstants
from core.energy.count import count_step
from core.energy.model import energy_ratio, step_energy

__all__ = ["DEFAULT_RECIPES", "energy_rows", "format_energy_table", "print_energy_table"]

DEFAULT_RECIPES = ("standard", "lowcost", "lowcost-po2")


def energy_rows(
    model_name: str,
    batch: int,
    in_shape: tuple[int, ...],
    recipes: tuple[str, ...] = DEFAULT_RECIPES,
    *,
    constants: EnergyConstants = DEFAULT_CONSTANTS,
    num_classes: int = 10,
) -> list[dict[str, Any]]:
    """Count and price one step of ``model_name`` under each recipe.

    Each row: ``model, recipe, batch, in_shape, total_j, compute_j, memory_j, macs,
    traffic_bytes, ratio`` (``{"total", "compute", "memory"}``, ``standard / recipe``; None
    when ``standard`` is not among ``recipes``), ``energy`` (:meth:`StepEnergy.as_dict`) and
    ``counts`` (:meth:`StepCount.as_dict`).
    """
    counted = {
        r: count_step(model_name, r, batch, in_shape, num_classes=num_classes) for r in recipes
    }
    priced = {r: step_energy(c, constants) for r, c in counted.items()}
    base = priced.get("standard")
    rows = []
    for recipe in recipes:
        e, total = priced[recipe], counted[recipe].total
        rows.append(
            {
                "model": model_name,
                "recipe": recipe,
                "batch": batch,
                "in_shape": list(in_shape),
                "total_j": e.total_j,
                "compute_j": e.compute_j,
                "memory_j": e.memory_j,
                "macs": total.total_macs,
                "traffic_bytes": total.total_bytes,
                "ratio": energy_ratio(base, e) if base is not None else None,
                "energy": e.as_dict(),
                "counts": counted[recipe].as_dict(),
            }
        )
    return rows


def format_energy_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table: mJ per step (total, compute, memory), MiB of traffic, ratios."""
    head = (
        f"{'model':<16} {'batch':>5} {'recipe':<12} {'total mJ':>10} {'compute mJ':>11} "
        f"{'memory mJ':>10} {'traffic MiB':>11} {'std/recipe':>10}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        ratio = row["ratio"]
        ratio_text = f"{ratio['total']:.2f}x" if ratio else "-"
        lines.append(
            f"{row['model']:<16} {row['batch']:>5} {row['recipe']:<12} "
            f"{row['total_j'] * 1e3:>10.2f} {row['compute_j'] * 1e3:>11.2f} "
            f"{row['memory_j'] * 1e3:>10.2f} {row['traffic_bytes'] / 2**20:>11.1f} "
            f"{ratio_text:>10}"
        )
    device = rows[0]["energy"]["device_class"] if rows else "?"
    lines.append(
        f"modelled (core.energy, {device}): counted operations x Horowitz ISSCC 2014 45 nm "
        "energies + traffic x DRAM energy; not a measurement"
    )
    return "\n".join(lines)


def print_energy_table(
    model_name: str,
    batch: int,
    in_shape: tuple[int, ...],
    recipes: tuple[str, ...] = DEFAULT_RECIPES,
    *,
    constants: EnergyConstants = DEFAULT_CONSTANTS,
    num_classes: int = 10,
    file: TextIO | None = None,
) -> list[dict[str, Any]]:
    """Print the energy table of ``model_name`` (to ``file``, default stdout); return the rows."""
    rows = energy_rows(
        model_name, batch, in_shape, recipes, constants=constants, num_classes=num_classes
    )
    print(format_energy_table(rows), file=file or sys.stdout)
    return rows
