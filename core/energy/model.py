"""Turn counted work into joules: compute energy, memory energy, their sum, recipe ratios.

For counts ``n_k`` of operation kind ``k`` and ``b_c`` bytes of traffic category ``c``
(:mod:`core.energy.count`), with ``e_k`` the energy of one operation
(:meth:`EnergyConstants.op_pj`) and ``e_mem`` that of one byte
(:attr:`EnergyConstants.memory_pj_per_byte`)::

    E_compute = sum_k n_k e_k          E_memory = e_mem sum_c b_c          E = E_compute + E_memory

in joules (pJ x 1e-12). Both sums are linear in the counts, so energies add over layers,
passes and steps. This is a **model** of the dynamic energy of the arithmetic and the memory
traffic the training algorithm needs, with Horowitz's 45 nm figures (ISSCC 2014) by default;
it leaves out static power, instruction overhead and the rest of the board. Wang et al. (arXiv
2102.04270) *measured* whole-board energy on a Raspberry Pi 3B+ (1.42 J per MLP batch of 200,
136.53 J per BinaryNet batch of 40, i.e. board power times step time) and report 2-6x drops;
compare ratios with theirs, not absolute joules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.energy.constants import DEFAULT_CONSTANTS, OP_KINDS, EnergyConstants
from core.energy.count import TRAFFIC_KINDS, StepCount, WorkCounts

__all__ = ["StepEnergy", "step_energy", "energy_ratio", "PJ"]

PJ = 1e-12  # joules per picojoule


@dataclass(frozen=True)
class StepEnergy:
    """Modelled energy of some counted work (one step, one phase or one layer), in joules.

    Attributes
    ----------
    compute_j, memory_j : float
        ``E_compute`` and ``E_memory`` of the module docstring.
    compute_by_kind, memory_by_kind : dict
        The same split per operation kind / traffic category.
    device_class : str
        Which :class:`EnergyConstants` priced it.
    """

    compute_j: float
    memory_j: float
    compute_by_kind: dict[str, float]
    memory_by_kind: dict[str, float]
    device_class: str

    @property
    def total_j(self) -> float:
        """``compute_j + memory_j``."""
        return self.compute_j + self.memory_j

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: totals and both splits."""
        return {
            "total_j": self.total_j,
            "compute_j": self.compute_j,
            "memory_j": self.memory_j,
            "compute_by_kind_j": dict(self.compute_by_kind),
            "memory_by_kind_j": dict(self.memory_by_kind),
            "device_class": self.device_class,
        }


def step_energy(
    counts: WorkCounts | StepCount, constants: EnergyConstants = DEFAULT_CONSTANTS
) -> StepEnergy:
    """Price ``counts`` (a :class:`StepCount` means its total) with ``constants``.

    ``E_compute = sum_k n_k e_k``, ``E_memory = e_mem sum_c b_c`` (joules).
    """
    work = counts.total if isinstance(counts, StepCount) else counts
    compute = {k: work.ops[k] * constants.op_pj(k) * PJ for k in OP_KINDS}
    per_byte = constants.memory_pj_per_byte * PJ
    memory = {c: work.traffic[c] * per_byte for c in TRAFFIC_KINDS}
    return StepEnergy(
        compute_j=sum(compute.values()),
        memory_j=sum(memory.values()),
        compute_by_kind=compute,
        memory_by_kind=memory,
        device_class=constants.device_class,
    )


def energy_ratio(baseline: StepEnergy, other: StepEnergy) -> dict[str, float]:
    """``baseline / other`` for the total, compute and memory energy (e.g. standard / lowcost).

    A part that is zero in ``other`` gives ``inf``.
    """

    def div(a: float, b: float) -> float:
        return a / b if b else float("inf")

    return {
        "total": div(baseline.total_j, other.total_j),
        "compute": div(baseline.compute_j, other.compute_j),
        "memory": div(baseline.memory_j, other.memory_j),
    }
