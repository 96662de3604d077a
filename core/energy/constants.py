"""Per-operation, per-byte and radio energies of the energy model, all in one place.

Compute and memory: Horowitz, "Computing's energy problem (and what we can do about it)",
ISSCC 2014, figure 1.1.9 (45 nm, 0.9 V). Energy per operation:

=====================  ==========  =====================  ==========
operation              pJ          operation              pJ
=====================  ==========  =====================  ==========
8-bit int add          0.03        8-bit int multiply     0.2
32-bit int add         0.1         32-bit int multiply    3.1
16-bit float add       0.4         16-bit float multiply  1.1
32-bit float add       0.9         32-bit float multiply  3.7
=====================  ==========  =====================  ==========

Memory, one 64-bit access: 8 KB SRAM 10 pJ, 32 KB SRAM 20 pJ, 1 MB SRAM 100 pJ, DRAM 1.3-2.6
nJ. **Used by default: DRAM at the low end, 1.3 nJ per 64 bits = 162.5 pJ per byte**, for every
byte of tensor traffic the counter reports (:mod:`core.energy.count`): training tensors of these
models do not fit a phone's or a Raspberry Pi's caches. ``replace(HOROWITZ_45NM,
memory_level="sram_1mb")`` prices the same bytes as on-chip SRAM, ``dram_64bit_pj=2600`` at the
high end (:data:`DEVICE_CLASSES` holds both variants).

Not in Horowitz's table, derived here (a model, overridable):

* a binary multiply-accumulate (XNOR of two signs plus its share of a popcount) is priced as one
  full-adder cell, 1/8 of an 8-bit add: ``0.03 / 8 = 0.00375`` pJ;
* a sign-select MAC (a 16-bit value times ``+-1``, accumulated) is one 16-bit float add;
* element-wise operations are priced as one add of their dtype (multiplies among them are a
  small share of the step's energy, so this underestimates them by at most ~4x).

Radio: Huang et al., "A Close Examination of Performance and Power Characteristics of 4G LTE
Networks", MobiSys 2012. While transferring, the device draws (their Table 4 model)::

    P = alpha_u * t_u + alpha_d * t_d + beta          (mW; t_u, t_d throughput in Mbit/s)

so sending ``b`` bytes at throughput ``t_u`` takes ``8 b / (t_u 1e6)`` seconds and costs::

    E_up(b) = 8 b (alpha_u + beta / t_u) * 1e-9  J    (alpha in mW/Mbps = nJ/bit)

and likewise downlink with ``alpha_d``, ``t_d``. Each burst also pays the radio's promotion
(idle -> connected) and its **tail** (the radio stays in a high-power state after the last
packet before it may sleep): ``E_burst = P_pro T_pro + P_tail T_tail``. A federated round
downloads the model, trains (longer than either tail here), then uploads: two bursts, so two
promotions and two tails (:func:`core.energy.rounds.round_energy`). This is a model of the
radio, not a measurement of any device here.

Radio figures used (LTE: Huang et al. Tables 3-4; ``alpha_u``, ``alpha_d``, ``P_pro``, ``T_pro``
and ``P_tail`` also agree with the defaults of AT&T's ARO profiler, ``ProfileLTE.java``, which
implements that paper's model; throughputs: the paper's median LTE throughputs, 13 Mbit/s down
and 6 Mbit/s up, from its abstract):

=====  =======  =======  =======  ===========  ===========  =========  ========  =====  =====
radio  alpha_u  alpha_d  beta     P_pro/T_pro               P_tail     T_tail    t_u    t_d
=====  =======  =======  =======  ========================  =========  ========  =====  =====
LTE    438.39   51.97    1288.04  1210.7 mW / 260.1 ms      1060.0 mW  11.576 s  6      13
WiFi   283.17   137.01   132.86   124.4 mW / 79.1 ms        119.3 mW   238.1 ms  10     10
=====  =======  =======  =======  ========================  =========  ========  =====  =====

The WiFi throughput (10 Mbit/s each way) is an assumption of this model, not a figure of the
paper. Per byte: LTE up ``8 (438.39 + 1288.04 / 6) = 5.22 uJ``, LTE down ``8 (51.97 + 1288.04 /
13) = 1.21 uJ``, WiFi up ``8 (283.17 + 13.29) = 2.37 uJ``, WiFi down ``8 (137.01 + 13.29) =
1.20 uJ``; per burst LTE ``0.315 + 12.27 = 12.59 J`` (the tail dominates), WiFi ``0.0098 +
0.0284 = 0.038 J``.

Other studies agree on the shape: Balasubramanian et al. ("Energy Consumption in Mobile Phones:
A Measurement Study and Implications for Network Applications", IMC 2009) found the same
dominance of the cellular tail (3G) and a far smaller WiFi per-transfer overhead.

Overrides: :func:`dataclasses.replace` on :data:`HOROWITZ_45NM`, or :func:`load_constants` on a
small JSON or TOML file of field names (``[wifi]`` / ``[lte]`` tables for the radios).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = [
    "RadioConstants",
    "EnergyConstants",
    "LTE_HUANG2012",
    "WIFI_HUANG2012",
    "HOROWITZ_45NM",
    "DEFAULT_CONSTANTS",
    "DEVICE_CLASSES",
    "MEMORY_LEVELS",
    "OP_KINDS",
    "get_constants",
    "load_constants",
]

#: Operation kinds the counter reports (:mod:`core.energy.count`), each priced by
#: :meth:`EnergyConstants.op_pj`.
OP_KINDS = (
    "fp32_mac",  # float32 multiply + add
    "fp16_mac",  # 16-bit float multiply + add
    "int8_mac",  # int8 x int8 multiply, 32-bit integer accumulate
    "binary_mac",  # XNOR-popcount of two signs
    "fp16_sign_mac",  # 16-bit float times +-1 (a sign select), 16-bit float accumulate
    "fp32_elem",  # one element-wise float32 operation
    "fp16_elem",  # one element-wise 16-bit float operation
    "int_elem",  # one element-wise integer / bit operation (masks, packing, indices)
)

#: Memory levels a byte of tensor traffic may be priced at: Horowitz's 64-bit access energies.
MEMORY_LEVELS = ("dram", "sram_1mb", "sram_32kb", "sram_8kb")


def _check_non_negative(obj: Any, exclude: tuple[str, ...]) -> None:
    for f in fields(obj):
        if f.name in exclude:
            continue
        value = getattr(obj, f.name)
        if not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{f.name} must be a number >= 0, got {value!r}")


@dataclass(frozen=True)
class RadioConstants:
    """One radio's power model (Huang et al., MobiSys 2012; see the module docstring).

    Attributes
    ----------
    name : str
        ``"wifi"`` or ``"lte"`` (or a name of your own).
    alpha_up_mw_per_mbps, alpha_down_mw_per_mbps : float
        Power per unit of uplink / downlink throughput (mW per Mbit/s = nJ per bit).
    beta_mw : float
        Base power while transferring.
    throughput_up_mbps, throughput_down_mbps : float
        Throughput the transfer is assumed to run at.
    promotion_mw, promotion_s : float
        Power and duration of the idle -> connected promotion paid by each burst.
    tail_mw, tail_s : float
        Power and duration of the high-power tail after each burst.
    source : str
        Where the figures come from.
    """

    name: str
    alpha_up_mw_per_mbps: float
    alpha_down_mw_per_mbps: float
    beta_mw: float
    throughput_up_mbps: float
    throughput_down_mbps: float
    promotion_mw: float
    promotion_s: float
    tail_mw: float
    tail_s: float
    source: str = ""

    def __post_init__(self) -> None:
        _check_non_negative(self, exclude=("name", "source"))
        for key in ("throughput_up_mbps", "throughput_down_mbps"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}; give Mbit/s")

    @property
    def joules_per_byte_up(self) -> float:
        """``8 (alpha_u + beta / t_u) 1e-9``: joules to send one byte (without the tail)."""
        return 8e-9 * (self.alpha_up_mw_per_mbps + self.beta_mw / self.throughput_up_mbps)

    @property
    def joules_per_byte_down(self) -> float:
        """``8 (alpha_d + beta / t_d) 1e-9``: joules to receive one byte (without the tail)."""
        return 8e-9 * (self.alpha_down_mw_per_mbps + self.beta_mw / self.throughput_down_mbps)

    @property
    def joules_per_burst(self) -> float:
        """``(P_pro T_pro + P_tail T_tail) 1e-3``: the fixed cost of one transfer burst."""
        return 1e-3 * (self.promotion_mw * self.promotion_s + self.tail_mw * self.tail_s)


LTE_HUANG2012 = RadioConstants(
    name="lte",
    alpha_up_mw_per_mbps=438.39,
    alpha_down_mw_per_mbps=51.97,
    beta_mw=1288.04,
    throughput_up_mbps=6.0,
    throughput_down_mbps=13.0,
    promotion_mw=1210.7,
    promotion_s=0.2601,
    tail_mw=1060.0,
    tail_s=11.576,
    source="Huang et al., MobiSys 2012, Tables 3-4; median LTE throughputs from its abstract",
)

WIFI_HUANG2012 = RadioConstants(
    name="wifi",
    alpha_up_mw_per_mbps=283.17,
    alpha_down_mw_per_mbps=137.01,
    beta_mw=132.86,
    throughput_up_mbps=10.0,
    throughput_down_mbps=10.0,
    promotion_mw=124.4,
    promotion_s=0.0791,
    tail_mw=119.3,
    tail_s=0.2381,
    source="Huang et al., MobiSys 2012, Tables 3-4; 10 Mbit/s throughput assumed",
)


@dataclass(frozen=True)
class EnergyConstants:
    """Energies of one device class: arithmetic (pJ/op), memory (pJ per 64-bit access), radios.

    Defaults are Horowitz's 45 nm figures (ISSCC 2014) and Huang et al.'s radio models
    (MobiSys 2012); the module docstring gives the table, the derived entries and the sources.

    Attributes
    ----------
    device_class : str
        Name of the device class these figures describe.
    fp32_add_pj, fp32_mult_pj, fp16_add_pj, fp16_mult_pj : float
        Float add / multiply energies.
    int8_add_pj, int8_mult_pj, int32_add_pj, int32_mult_pj : float
        Integer add / multiply energies.
    binary_mac_pj : float
        One XNOR-popcount multiply-accumulate (derived: ``int8_add_pj / 8``).
    sram_8kb_pj, sram_32kb_pj, sram_1mb_pj, dram_pj : float
        Energy of one 64-bit access to each memory (DRAM: low end of 1.3-2.6 nJ).
    memory_level : str
        Which of :data:`MEMORY_LEVELS` every counted byte of tensor traffic is priced at.
    wifi, lte : RadioConstants
        The radios of :func:`core.energy.rounds.round_energy`.
    """

    device_class: str = "horowitz-45nm"
    fp32_add_pj: float = 0.9
    fp32_mult_pj: float = 3.7
    fp16_add_pj: float = 0.4
    fp16_mult_pj: float = 1.1
    int8_add_pj: float = 0.03
    int8_mult_pj: float = 0.2
    int32_add_pj: float = 0.1
    int32_mult_pj: float = 3.1
    binary_mac_pj: float = 0.03 / 8
    sram_8kb_pj: float = 10.0
    sram_32kb_pj: float = 20.0
    sram_1mb_pj: float = 100.0
    dram_pj: float = 1300.0
    memory_level: str = "dram"
    wifi: RadioConstants = field(default=WIFI_HUANG2012)
    lte: RadioConstants = field(default=LTE_HUANG2012)

    def __post_init__(self) -> None:
        _check_non_negative(self, exclude=("device_class", "memory_level", "wifi", "lte"))
        if self.memory_level not in MEMORY_LEVELS:
            raise ValueError(
                f"memory_level {self.memory_level!r} is unknown; choose one of "
                f"{', '.join(MEMORY_LEVELS)}"
            )

    def op_pj(self, kind: str) -> float:
        """Energy of one operation of ``kind`` (one of :data:`OP_KINDS`), in pJ.

        ``fp32_mac = fp32_mult + fp32_add``, ``fp16_mac = fp16_mult + fp16_add``, ``int8_mac =
        int8_mult + int32_add``, ``binary_mac``, ``fp16_sign_mac = fp16_add``, element-wise ops
        = one add of their dtype (``int_elem = int8_add``).
        """
        table = {
            "fp32_mac": self.fp32_mult_pj + self.fp32_add_pj,
            "fp16_mac": self.fp16_mult_pj + self.fp16_add_pj,
            "int8_mac": self.int8_mult_pj + self.int32_add_pj,
            "binary_mac": self.binary_mac_pj,
            "fp16_sign_mac": self.fp16_add_pj,
            "fp32_elem": self.fp32_add_pj,
            "fp16_elem": self.fp16_add_pj,
            "int_elem": self.int8_add_pj,
        }
        try:
            return table[kind]
        except KeyError:
            raise ValueError(
                f"unknown operation kind {kind!r}; choose one of {', '.join(OP_KINDS)}"
            ) from None

    @property
    def memory_pj_per_byte(self) -> float:
        """Energy of one byte of tensor traffic: the 64-bit access of ``memory_level`` / 8."""
        per_access = {
            "dram": self.dram_pj,
            "sram_1mb": self.sram_1mb_pj,
            "sram_32kb": self.sram_32kb_pj,
            "sram_8kb": self.sram_8kb_pj,
        }[self.memory_level]
        return per_access / 8

    def radio(self, name: str) -> RadioConstants:
        """Return the radio called ``name`` (``"wifi"`` or ``"lte"``)."""
        if name not in ("wifi", "lte"):
            raise ValueError(f"unknown radio {name!r}; choose wifi or lte")
        return self.wifi if name == "wifi" else self.lte


#: The default device class: Horowitz's 45 nm figures, DRAM at 1.3 nJ per 64-bit access.
HOROWITZ_45NM = EnergyConstants()
DEFAULT_CONSTANTS = HOROWITZ_45NM

#: Named device classes (``--energy-device`` style lookups go through :func:`get_constants`).
DEVICE_CLASSES: dict[str, EnergyConstants] = {
    "horowitz-45nm": HOROWITZ_45NM,
    "horowitz-45nm-dram-high": replace(
        HOROWITZ_45NM, device_class="horowitz-45nm-dram-high", dram_pj=2600.0
    ),
    "horowitz-45nm-sram": replace(
        HOROWITZ_45NM, device_class="horowitz-45nm-sram", memory_level="sram_1mb"
    ),
}


def get_constants(name: str) -> EnergyConstants:
    """Return the device class called ``name`` (a key of :data:`DEVICE_CLASSES`)."""
    try:
        return DEVICE_CLASSES[name]
    except KeyError:
        raise ValueError(
            f"unknown device class {name!r}; choose one of {', '.join(DEVICE_CLASSES)} or load "
            "a file with load_constants"
        ) from None


def load_constants(path: str | Path, base: EnergyConstants = HOROWITZ_45NM) -> EnergyConstants:
    """Read overrides of ``base`` from a JSON or TOML file of :class:`EnergyConstants` fields.

    Radios are tables named ``wifi`` / ``lte`` holding :class:`RadioConstants` fields; only the
    fields given change. Example (TOML)::

        device_class = "my-phone"
        dram_pj = 640.0
        [lte]
        tail_s = 5.0

    Raises
    ------
    ValueError
        On an unknown key, a file that is neither JSON nor TOML, or a negative energy.
    """
    path = Path(path)
    text = path.read_text()
    try:
        raw = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot parse energy constants {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"energy constants {path} must hold a table of fields, got {raw!r}")
    return _apply(base, raw, str(path))


def _apply(base: Any, raw: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(base)}
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ValueError(
                f"unknown energy constant {key!r} in {where}; valid keys: {', '.join(known)}"
            )
        current = getattr(base, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{key} in {where} must be a table of radio fields")
            changes[key] = _apply(current, value, f"{where} [{key}]")
        else:
            changes[key] = value
    return replace(base, **changes)
