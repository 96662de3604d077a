"""The paper-style analytical memory model (docs/method.md §5), per category.

:func:`trace_model` reads per-sample tensor sizes off one forward pass; :func:`analytical_memory`
turns them into bytes per category for a recipe and batch size (liveness-free, as the paper's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ModelShape", "trace_model", "analytical_memory"]


@dataclass(frozen=True)
class ModelShape:
    """Per-sample tensor sizes (element counts) that the §5 memory model needs.

    Attributes
    ----------
    weights
        N_l, the weight count of each weight layer (dense or conv), in execution order.
    inputs
        in_l, the input elements per sample of each weight layer; ``inputs[0]`` is the data.
    norm_outputs
        bn_l, the output elements per sample of each normalisation layer, counted after a
        max-pool that directly follows it (the "post-pool size" of docs/method.md §5).
    max_activation
        max_l act_l over the inputs and outputs of all weight layers (the data included).
    packed
        Per weight layer, whether its binary weights are stored as packed bits (``lowcost-bop``);
        empty means none is.
    """

    weights: tuple[int, ...]
    inputs: tuple[int, ...]
    norm_outputs: tuple[int, ...]
    max_activation: int
    packed: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        if not self.weights or len(self.weights) != len(self.inputs):
            raise ValueError(
                f"ModelShape needs one input size per weight layer, got {len(self.weights)} "
                f"weight layers and {len(self.inputs)} inputs"
            )


def _layer_kind(module: nn.Module) -> str | None:
    """``"weight"``, ``"norm"``, ``"pool"`` or None for a leaf module (by type, never by shape)."""
    weight = getattr(module, "weight", None)
    name = type(module).__name__.lower()
    if isinstance(weight, Tensor) and weight.dim() >= 2:
        return "weight"  # dense or convolution, binary or not
    if isinstance(module, nn.modules.batchnorm._NormBase) or "norm" in name:
        return "norm"
    if "pool" in name:
        return "pool"
    return None


def _numel_per_sample(output: Any) -> int:
    if isinstance(output, Tensor):
        return output.numel() // max(output.shape[0], 1) if output.dim() else output.numel()
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return _numel_per_sample(output[0])
    return 0


def trace_model(model: nn.Module, in_shape: tuple[int, ...]) -> ModelShape:
    """Read the per-sample sizes of :class:`ModelShape` off one eval-mode forward pass.

    Weight layers are the leaf modules holding a ``weight`` of two or more dimensions (dense and
    convolution layers, binary or not); normalisation layers are leaves that subclass
    ``_NormBase`` or have ``Norm`` in their class name; pools have ``Pool`` in it. Nothing is
    recognised by its shape. The model's train/eval mode and its state are left unchanged
    (the pass runs in eval mode under ``torch.no_grad``).

    Parameters
    ----------
    model
        The network; its first weight layer to run is taken as the data layer (``in_1``).
    in_shape
        Shape of one sample, e.g. ``(1, 28, 28)``.
    """
    events: list[tuple[str, int, int, int]] = []  # (kind, numel_in, numel_out, weight_numel)
    packed: list[bool] = []  # per event: a weight layer with packed binary weights
    handles = []

    def hook(kind: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            numel_in = _numel_per_sample(args[0]) if args else 0
            weight = getattr(module, "weight", None)
            n_weights = weight.numel() if kind == "weight" and weight is not None else 0
            events.append((kind, numel_in, _numel_per_sample(output), n_weights))
            packed.append(kind == "weight" and bool(getattr(module, "packed_weight", False)))

        return record

    for module in model.modules():
        kind = None if next(module.children(), None) is not None else _layer_kind(module)
        if kind is not None:
            handles.append(module.register_forward_hook(hook(kind)))
    modes = {module: module.training for module in model.modules()}
    sample = torch.rand((1, *in_shape), generator=torch.Generator().manual_seed(0)) * 2 - 1
    try:
        model.eval()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            model(sample.to(device))
    finally:
        for module, training in modes.items():
            module.training = training
        for handle in handles:
            handle.remove()

    weights = tuple(e[3] for e in events if e[0] == "weight")
    inputs = tuple(e[1] for e in events if e[0] == "weight")
    if not weights:
        raise ValueError(f"{type(model).__name__} has no dense or convolution layer to model")
    norm_outputs = []
    for i, (kind, _, numel_out, _) in enumerate(events):
        if kind != "norm":
            continue
        for later_kind, _, later_out, _ in events[i + 1 :]:
            if later_kind != "pool":  # the next weight or norm layer ends the block
                break
            numel_out = later_out  # a pool right after the norm: count the post-pool size
        norm_outputs.append(numel_out)
    max_activation = max(max(e[1], e[2]) for e in events if e[0] == "weight")
    packed_layers = tuple(p for p, e in zip(packed, events) if e[0] == "weight")
    return ModelShape(
        weights, inputs, tuple(norm_outputs), max_activation, packed_layers if any(packed) else ()
    )


def analytical_memory(shape: ModelShape, recipe: str, batch_size: int) -> dict[str, int]:
    r"""Paper-style training memory per category, in bytes (docs/method.md §5; liveness-free).

    With B the batch size, N_l the weights, in_l the saved inputs, bn_l the BN-side tensors and
    act the largest activation (all per sample), the model counts bits as

    ``standard``   : 128·ΣN_l + 32·B·Σin_l + 32·B·Σbn_l + 2·32·B·act
                     (fp32 W, ∂W, m, v; fp32 saved inputs incl. the image; fp32 BN input;
                     two fp32 gradient buffers)
    ``lowcost``    : 49·ΣN_l + 16·B·in_1 + 1·B·Σ_{l>1}in_l + 2·B·Σbn_l + 2·16·B·act
                     (fp16 W, m, v + 1-bit ∂W; fp16 image; sign(X); sign(ŷ) + STE mask;
                     two fp16 gradient buffers)
    ``lowcost-po2``: as ``lowcost`` with 5-bit power-of-two gradient buffers (2·5·B·act).

    It reproduces the savings of Wang et al. (arXiv 2102.04270, EMDL'21) to about 3 %
    (MLP 2.76×, CNV 4.04×, BinaryNet 3.75× at B = 100). Per-channel BN scalars are neglected.

    Returns
    -------
    dict
        ``{"weights", "saved_inputs", "norm_saved", "grad_buffers", "total"}``, bytes
        (each category rounded up to whole bytes).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    n, b = sum(shape.weights), batch_size
    if recipe == "standard":
        bits = {
            "weights": 128 * n,
            "saved_inputs": 32 * b * sum(shape.inputs),
            "norm_saved": 32 * b * sum(shape.norm_outputs),
            "grad_buffers": 2 * 32 * b * shape.max_activation,
        }
    elif recipe in ("lowcost", "lowcost-po2", "lowcost-bop"):
        grad_bits = 5 if recipe == "lowcost-po2" else 16
        packed = shape.packed if recipe == "lowcost-bop" else ()
        n_packed = sum(w for w, p in zip(shape.weights, packed) if p)
        bits = {
            # 49 = fp16 latent + two fp16 Adam moments + the 1-bit gradient; a packed binary
            # weight under Bop: 1 bit + one fp16 moment + the 1-bit gradient = 18
            "weights": 49 * (n - n_packed) + 18 * n_packed,
            "saved_inputs": 16 * b * shape.inputs[0] + b * sum(shape.inputs[1:]),
            "norm_saved": 2 * b * sum(shape.norm_outputs),
            "grad_buffers": 2 * grad_bits * b * shape.max_activation,
        }
    else:
        raise ValueError(
            f"unknown recipe {recipe!r}; choose one of standard, lowcost, lowcost-po2, lowcost-bop"
        )
    out = {name: math.ceil(value / 8) for name, value in bits.items()}
    out["total"] = sum(out.values())
    return out
