"""Modelled energy of BNN training steps and federated rounds (issue 18; no Flower here).

* :mod:`core.energy.constants` - per-operation, per-byte and radio energies in one place
  (Horowitz, ISSCC 2014, 45 nm; Huang et al., MobiSys 2012), overridable per device class;
* :mod:`core.energy.count` - the operations by kind and the memory traffic of one training
  step, counted from the model's traced layer shapes and the recipe;
* :mod:`core.energy.model` - counts to joules: compute and memory energy, total, ratios;
* :mod:`core.energy.rounds` - one device's energy per federated round (training + radio);
* :mod:`core.energy.report` - per-recipe rows and the printed table of ``bitfed-memory``.

Every figure these produce is a model, not a measurement: these machines have no power meter.
Method: Wang et al., "Enabling Binary Neural Network Training on the Edge", arXiv 2102.04270.
"""

from core.energy.constants import (
    DEFAULT_CONSTANTS,
    DEVICE_CLASSES,
    HOROWITZ_45NM,
    LTE_HUANG2012,
    OP_KINDS,
    WIFI_HUANG2012,
    EnergyConstants,
    RadioConstants,
    get_constants,
    load_constants,
)
from core.energy.count import (
    TRAFFIC_KINDS,
    LayerShape,
    StepCount,
    WorkCounts,
    count_layer,
    count_model_step,
    count_optimizer,
    count_step,
    trace_layers,
)
from core.energy.model import StepEnergy, energy_ratio, step_energy
from core.energy.report import energy_rows, format_energy_table, print_energy_table
from core.energy.rounds import RADIOS, device_round_fields, local_steps, round_energy

__all__ = [
    "DEFAULT_CONSTANTS",
    "DEVICE_CLASSES",
    "HOROWITZ_45NM",
    "LTE_HUANG2012",
    "WIFI_HUANG2012",
    "OP_KINDS",
    "TRAFFIC_KINDS",
    "EnergyConstants",
    "RadioConstants",
    "get_constants",
    "load_constants",
    "LayerShape",
    "StepCount",
    "WorkCounts",
    "count_layer",
    "count_model_step",
    "count_optimizer",
    "count_step",
    "trace_layers",
    "StepEnergy",
    "energy_ratio",
    "step_energy",
    "energy_rows",
    "format_energy_table",
    "print_energy_table",
    "round_energy",
    "local_steps",
    "device_round_fields",
    "RADIOS",
]
