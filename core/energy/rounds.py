"""Energy one device spends in one federated round: local training plus its radio traffic.

Per device and round (all joules; the radio model and its sources are in
:mod:`core.energy.constants`)::

    E_compute = steps * E_step                                  (E_step: core.energy.model)
    E_up      = bytes_sent     * 8 (alpha_u + beta / t_u) 1e-9
    E_down    = bytes_received * 8 (alpha_d + beta / t_d) 1e-9
    E_tail    = bursts * (P_pro T_pro + P_tail T_tail) 1e-3      (bursts = 2: download, upload)
    E_round   = E_compute + E_up + E_down + E_tail

The radio part is a model (Huang et al., MobiSys 2012), labelled as such in every result.
"""

from __future__ import annotations

from typing import Any

from core.energy.constants import DEFAULT_CONSTANTS, EnergyConstants, RadioConstants
from core.energy.model import StepEnergy

__all__ = ["round_energy"]


def round_energy(
    step: StepEnergy | float,
    steps: int,
    bytes_sent: float,
    bytes_received: float,
    *,
    radio: str | RadioConstants = "wifi",
    constants: EnergyConstants = DEFAULT_CONSTANTS,
    bursts: int = 2,
) -> dict[str, Any]:
    """Modelled energy of one device in one federated round.

    Parameters
    ----------
    step : StepEnergy or float
        Energy of one local training step (:func:`core.energy.model.step_energy`), or joules.
    steps : int
        Local training steps (batches) the device ran this round.
    bytes_sent, bytes_received : float
        Bytes the device uploaded / downloaded this round (the serialized records).
    radio : str or RadioConstants
        ``"wifi"``, ``"lte"`` (taken from ``constants``) or a radio of your own.
    constants : EnergyConstants
        Device class (only its radios are read when ``step`` is a float).
    bursts : int
        Transfer bursts that each pay a promotion and a tail (2: download, then upload after
        training; 0 leaves the tail out, e.g. when the radio stays connected anyway).

    Returns
    -------
    dict
        ``{"compute_j", "radio_up_j", "radio_down_j", "radio_tail_j", "radio_j", "total_j",
        "radio", "steps", "bytes_sent", "bytes_received", "model": "modelled, not measured"}``.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if bytes_sent < 0 or bytes_received < 0:
        raise ValueError(f"bytes must be >= 0, got sent={bytes_sent}, received={bytes_received}")
    if bursts < 0:
        raise ValueError(f"bursts must be >= 0, got {bursts}")
    r = constants.radio(radio) if isinstance(radio, str) else radio
    step_j = step.total_j if isinstance(step, StepEnergy) else float(step)
    if step_j < 0:
        raise ValueError(f"step energy must be >= 0 J, got {step_j}")
    compute = steps * step_j
    up = bytes_sent * r.joules_per_byte_up
    down = bytes_received * r.joules_per_byte_down
    tail = bursts * r.joules_per_burst
    return {
        "compute_j": compute,
        "radio_up_j": up,
        "radio_down_j": down,
        "radio_tail_j": tail,
        "radio_j": up + down + tail,
        "total_j": compute + up + down + tail,
        "radio": r.name,
        "steps": steps,
        "bytes_sent": bytes_sent,
        "bytes_received": bytes_received,
        "model": "modelled, not measured (core.energy)",
    }
