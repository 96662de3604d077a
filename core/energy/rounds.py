"""Energy one device spends in one federated round: local training plus its radio traffic.

Per device and round (all joules; the radio model and its sources are in
:mod:`core.energy.constants`)::

    E_compute = steps * E_step                                  (E_step: core.energy.model)
    E_up      = bytes_sent     * 8 (alpha_u + beta / t_u) 1e-9
    E_down    = bytes_received * 8 (alpha_d + beta / t_d) 1e-9
    E_tail    = bursts * (P_pro T_pro + P_tail T_tail) 1e-3      (bursts = 2: download, upload)
    E_round   = E_compute + E_up + E_down + E_tail

The radio part is a model (Huang et al., MobiSys 2012), labelled as such in every result.

A federation run's recorder (``server/recorder.py``) adds, per round, the mean participating
device's energy (:func:`device_round_fields`) with one per-step energy priced once per run, the
mean local steps of the round's clients (:func:`local_steps`: ``epochs * ceil(n_i / B)``, at
most ``train.max_batches`` per epoch) and the mean bytes each client sent and received; since
``E_round`` is linear in steps and bytes, that is the mean of the clients' energies.
"""

from __future__ import annotations

import math
from typing import Any

from core.energy.constants import DEFAULT_CONSTANTS, EnergyConstants, RadioConstants
from core.energy.model import StepEnergy

__all__ = ["round_energy", "local_steps", "device_round_fields", "RADIOS"]

#: The radios a federation run reports, each priced by ``EnergyConstants.radio``.
RADIOS = ("wifi", "lte")


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


def local_steps(examples: int, batch_size: int, epochs: int = 1, max_batches: int = 0) -> int:
    """Training steps a client ran: ``epochs * min(ceil(examples / batch_size), max_batches)``.

    ``examples`` is what the client reports (``num-examples``: the examples it trained on in an
    epoch); ``max_batches = 0`` means no cap (``train.max_batches``).
    """
    if examples < 0:
        raise ValueError(f"examples must be >= 0, got {examples}")
    if batch_size < 1 or epochs < 1 or max_batches < 0:
        raise ValueError(
            f"need train.batch_size >= 1, train.epochs >= 1, train.max_batches >= 0; got "
            f"{batch_size}, {epochs}, {max_batches}"
        )
    per_epoch = math.ceil(examples / batch_size)
    if max_batches:
        per_epoch = min(per_epoch, max_batches)
    return epochs * per_epoch


def device_round_fields(
    step_j: float,
    steps: float,
    bytes_sent: float,
    bytes_received: float,
    *,
    previous: dict[str, Any] | None = None,
    constants: EnergyConstants = DEFAULT_CONSTANTS,
) -> dict[str, float]:
    """Return the per-round energy fields of ``metrics.json`` for the mean participating device.

    ``energy_compute_j = steps * step_j``; per radio ``r`` of :data:`RADIOS`,
    ``energy_radio_r_j`` = up + down + 2 bursts' promotion and tail (:func:`round_energy`),
    ``energy_r_j = energy_compute_j + energy_radio_r_j``, and ``energy_cumulative_r_j`` adds it
    to ``previous``'s cumulative value (an earlier round's fields; None for the first round).
    ``steps`` may be a mean over clients, hence a float.
    """
    out: dict[str, float] = {"energy_steps": float(steps), "energy_compute_j": steps * step_j}
    for radio in RADIOS:
        e = round_energy(step_j, 0, bytes_sent, bytes_received, radio=radio, constants=constants)
        total = out["energy_compute_j"] + e["radio_j"]
        before = float((previous or {}).get(f"energy_cumulative_{radio}_j", 0.0))
        out[f"energy_radio_{radio}_j"] = e["radio_j"]
        out[f"energy_{radio}_j"] = total
        out[f"energy_cumulative_{radio}_j"] = before + total
    return out
