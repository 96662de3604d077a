"""Count the arithmetic and memory traffic of one training step (forward, backward, update).

Shapes are real, not hand-coded per model: :func:`trace_layers` runs one forward pass of the
actual model on a batch of the actual size with forward hooks on its modules (as
:func:`core.memory.trace_model` does) and records, per layer, its per-sample input and output
sizes, their dtypes, its weights and how the recipe treats it (input kind, binary or real
weights, packed weights). :func:`count_layer` then applies the per-layer rules below for the
recipe (:func:`core.recipes.from_recipe`), and :func:`count_optimizer` the optimizer's.

What is counted (``B`` batch, ``I``/``O`` input/output elements per sample, ``N`` weights,
``C`` output channels, ``K = N / C`` fan-in, ``a_in``/``a_out`` bytes per activation element
as traced: 4 for ``standard``'s float32, 2 for the low-cost 16-bit activations, 1 for uint8
image codes; ``[n/8]`` = ``ceil(n / 8)`` packed bytes). A weight layer does ``M = B O K``
multiply-accumulates per product:

==================  ====================================  =====================================
product             ``standard``                          low-cost recipes (docs/method.md §2)
==================  ====================================  =====================================
Y = X W_b^T         M fp32 MACs                           M binary MACs (``sign(X)``, binary W);
                                                          M int8 MACs (uint8 codes, binary W);
                                                          else M fp16 MACs
dX = dY W_b         M fp32 MACs (not for the data layer)  M fp16 sign-select MACs (binary W),
                                                          else fp16 MACs (not for the data layer)
G = dY^T X          M fp32 MACs                           M fp16 sign-select MACs (binary X),
                                                          else fp16 MACs; ``sign(G)`` packed
==================  ====================================  =====================================

Memory traffic, in bytes, assumes each product reads its operands once and writes its result
once (ideal blocking: no im2col copies, no re-reads), every element-wise pass reads and writes
its tensors once, and tensors autograd keeps are read back (``saved_read``) without a copy
having been written unless the recipe writes one (``saved_written``: the 1-bit packs, pooling
indices). Categories: ``weights`` (latent weights read, and the standard STE's binarized copy),
``activations`` (forward activations written and read), ``activation_grads`` (their gradients,
backward), ``saved_written`` / ``saved_read``, ``weight_grads`` (written by backward, read by the
optimizer) and ``optimizer`` (weights and moments read and written by the update).

Per layer kind, forward / backward (``s`` = standard, ``l`` = low-cost; element-wise op counts
per element are estimates of the kernels' passes, documented in each rule function):

* weight layer, ``s``: reads X, W_b, writes Y; the detach-trick STE on binary weights reads W,
  writes W_b (4 fp32 ops/weight), its backward reads dW_b and W, writes dW (2 ops/weight);
  ``l``: reads X, W (fp16, or packed bits under ``lowcost-bop``), writes Y, writes ``sign(X)``
  packed; backward reads dY (twice), W, the saved input, writes dX and the packed ``sign(G)``.
* sign activation: ``s`` reads x, writes q (4 ops/elem), backward reads dq and the saved x
  (2 ops/elem); ``l`` also writes the packed ``|x| <= 1`` mask and reads it back.
* batch norm: ``s`` (l2) reads y twice and writes the output (8 ops/elem), backward reads dout
  and the saved y twice each (8 ops/elem); ``l`` (l1) reads y three times, writes the output and
  ``sign(y_hat)`` packed (7 fp16 + 2 int ops/elem), backward reads dout and the bits twice
  each (6 fp16 + 2 int ops/elem).
* max pool (k x k): ``s`` writes int64 indices (8 B per output), ``l`` ``ceil(log2 k^2)``
  packed bit-planes; ``k^2`` compares per output.
* ReLU, average pool, ResNetE's residual add: one op per element, each direction.

Optimizers per weight (``n`` elements of any other parameter): ``torch.optim.Adam`` reads g, W,
m, v and writes W, m, v in float32 (28 B, 10 fp32 ops); :class:`core.optim.LowCostAdam` on a
packed-gradient layer reads ``[K/8]`` gradient bytes per row and fp16 W, m, v, writes W, m, v
(12 B + 1/8, 8 fp32 + 6 int ops: unpack, mask, stochastic rounding); Bop (``lowcost-bop``) reads
the weight and gradient bits and the fp16 EMA, writes the EMA and the bits (4 B + 3/8, 3 fp32 +
6 int ops); dense low-cost parameters (BN beta, biases): fp16 W and bf16 moments (14 B, 12 fp32
+ 4 int ops).

Not counted: the loss and the logits cast (``B x classes``), running BN statistics, per-channel
scalars, Python and dispatch overhead, caches (every byte is priced as memory traffic by
:mod:`core.energy.model`). ``lowcost-po2`` adds its quantizer's passes over each ``dY`` (6 fp32
ops/elem) but no saving in traffic: bitfed hands those gradients over in 16 bits (BENCHMARKS.md
§1 notes the same for memory).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from core.energy.constants import OP_KINDS
from core.recipes import Recipe, from_recipe

__all__ = [
    "TRAFFIC_KINDS",
    "LAYER_KINDS",
    "WorkCounts",
    "LayerShape",
    "LayerCount",
    "StepCount",
    "trace_layers",
    "count_layer",
    "count_optimizer",
    "count_model_step",
    "count_step",
]

#: Memory-traffic categories (bytes) of :class:`WorkCounts`.
TRAFFIC_KINDS = (
    "weights",
    "activations",
    "activation_grads",
    "saved_written",
    "saved_read",
    "weight_grads",
    "optimizer",
)

#: Layer kinds :func:`trace_layers` recognises.
LAYER_KINDS = ("weight", "norm", "sign", "maxpool", "avgpool", "relu", "residual_add")

_IGNORED = (nn.Flatten, nn.Identity, nn.Dropout, nn.Sequential)


@dataclass
class WorkCounts:
    """Operations by kind (:data:`core.energy.constants.OP_KINDS`) and bytes by category.

    Counts are floats (packed sizes are whole bytes, but sums of rules are kept exact).
    """

    ops: dict[str, float] = field(default_factory=lambda: dict.fromkeys(OP_KINDS, 0.0))
    traffic: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TRAFFIC_KINDS, 0.0))

    def op(self, kind: str, count: float) -> None:
        """Add ``count`` operations of ``kind``."""
        if kind not in self.ops:
            raise ValueError(f"unknown operation kind {kind!r}; choose one of {OP_KINDS}")
        self.ops[kind] += count

    def move(self, kind: str, nbytes: float) -> None:
        """Add ``nbytes`` of traffic in category ``kind``."""
        if kind not in self.traffic:
            raise ValueError(f"unknown traffic kind {kind!r}; choose one of {TRAFFIC_KINDS}")
        self.traffic[kind] += nbytes

    def __add__(self, other: WorkCounts) -> WorkCounts:
        """Element-wise sum (counts are additive over layers and passes)."""
        out = WorkCounts()
        for kind in OP_KINDS:
            out.ops[kind] = self.ops[kind] + other.ops[kind]
        for kind in TRAFFIC_KINDS:
            out.traffic[kind] = self.traffic[kind] + other.traffic[kind]
        return out

    @property
    def total_bytes(self) -> float:
        """All memory traffic, bytes."""
        return sum(self.traffic.values())

    @property
    def total_macs(self) -> float:
        """All multiply-accumulates, of every kind."""
        return sum(v for k, v in self.ops.items() if k.endswith("_mac"))

    def as_dict(self) -> dict[str, Any]:
        """``{"ops": {...}, "traffic_bytes": {...}, "total_bytes", "total_macs"}``."""
        return {
            "ops": dict(self.ops),
            "traffic_bytes": dict(self.traffic),
            "total_bytes": self.total_bytes,
            "total_macs": self.total_macs,
        }


def _sum(counts: Iterable[WorkCounts]) -> WorkCounts:
    total = WorkCounts()
    for c in counts:
        total = total + c
    return total


@dataclass(frozen=True)
class LayerShape:
    """One layer of the traced forward pass (sizes per sample).

    Attributes
    ----------
    name : str
        Module path in the model.
    kind : str
        One of :data:`LAYER_KINDS`.
    in_elems, out_elems : int
        Elements per sample of the layer's (first) input and of its output.
    in_itemsize, out_itemsize : int
        Bytes per element of that input and output, as traced.
    weights : int
        Logical weight count ``N`` (weight layers).
    out_channels : int
        ``C``, the first dimension of the weight (weight layers).
    params : int
        Elements of the module's other parameters (bias; BN gamma/beta).
    input_kind : str
        ``"data"``, ``"binary"`` or ``"real"`` (weight layers of :mod:`core.layers`).
    binary_weight, packed_weight : bool
        Weights binarized; weights stored as packed bits (``lowcost-bop``).
    window : int
        ``k * k`` of a pooling layer.
    """

    name: str
    kind: str
    in_elems: int
    out_elems: int
    in_itemsize: int
    out_itemsize: int
    weights: int = 0
    out_channels: int = 0
    params: int = 0
    input_kind: str = ""
    binary_weight: bool = False
    packed_weight: bool = False
    window: int = 0


@dataclass(frozen=True)
class LayerCount:
    """Forward and backward counts of one traced layer."""

    layer: LayerShape
    forward: WorkCounts
    backward: WorkCounts


@dataclass(frozen=True)
class StepCount:
    """The counted work of one training step of one model under one recipe.

    Attributes
    ----------
    model, recipe : str
        What was counted.
    batch : int
        Batch size.
    in_shape : tuple of int
        One sample's shape.
    layers : list of LayerCount
        Per-layer forward/backward counts, in execution order.
    optimizer : WorkCounts
        The update step.
    """

    model: str
    recipe: str
    batch: int
    in_shape: tuple[int, ...]
    layers: list[LayerCount]
    optimizer: WorkCounts

    @property
    def forward(self) -> WorkCounts:
        """Forward pass, all layers."""
        return _sum(lc.forward for lc in self.layers)

    @property
    def backward(self) -> WorkCounts:
        """Backward pass, all layers."""
        return _sum(lc.backward for lc in self.layers)

    @property
    def total(self) -> WorkCounts:
        """Forward + backward + optimizer."""
        return self.forward + self.backward + self.optimizer

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary: phases and total (per-layer detail left out)."""
        return {
            "model": self.model,
            "recipe": self.recipe,
            "batch": self.batch,
            "in_shape": list(self.in_shape),
            "forward": self.forward.as_dict(),
            "backward": self.backward.as_dict(),
            "optimizer": self.optimizer.as_dict(),
            "total": self.total.as_dict(),
        }


# --------------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------------


def _per_sample(t: Tensor) -> int:
    return t.numel() // max(t.shape[0], 1) if t.dim() else t.numel()


def _first_tensor(value: Any) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, tuple | list) and value and isinstance(value[0], Tensor):
        return value[0]
    return None


def _leaf_kind(module: nn.Module) -> str | None:
    """Layer kind of a leaf module, None for shape-only modules; ValueError for unknown ones."""
    from core.layers import AvgPool, LogitsHead, MaxPool, ReLU, SignActivation

    weight = getattr(module, "weight", None)
    if isinstance(weight, Tensor) and weight.dim() >= 2:
        return "weight"
    if isinstance(module, nn.modules.batchnorm._NormBase) or "Norm" in type(module).__name__:
        return "norm"
    if isinstance(module, SignActivation):
        return "sign"
    if isinstance(module, MaxPool | nn.MaxPool2d):
        return "maxpool"
    if isinstance(module, AvgPool | nn.AvgPool2d):
        return "avgpool"
    if isinstance(module, ReLU | nn.ReLU):
        return "relu"
    if isinstance(module, (LogitsHead, *_IGNORED)):
        return None
    raise ValueError(
        f"no energy-count rule for layer type {type(module).__name__}; add one to "
        "core.energy.count (_leaf_kind and count_layer)"
    )


def _window(module: nn.Module) -> int:
    k = getattr(module, "kernel", None) or getattr(module, "kernel_size", 1)
    k = k[0] if isinstance(k, tuple) else k
    return int(k) * int(k)


def trace_layers(model: nn.Module, x: Tensor) -> list[LayerShape]:
    """Record every counted layer of one eval-mode, no-grad forward pass of ``model`` on ``x``.

    Leaf modules are classified by type (weight layers: a ``weight`` of two or more dimensions;
    batch norms; :mod:`core.layers`' sign, pools, ReLU); a non-leaf module with a ``shortcut``
    (ResNetE's residual block) adds a residual sum of its output size. Unknown leaf types raise
    ``ValueError`` rather than being left out. The model's modes and state are restored.
    """
    records: list[LayerShape] = []
    handles = []

    def hook(name: str, kind: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            xin, out = _first_tensor(args), _first_tensor(output)
            if xin is None or out is None:
                return
            weight = getattr(module, "weight", None) if kind == "weight" else None
            own = [  # bias; BN gamma (named "weight") and beta
                p
                for n, p in module.named_parameters(recurse=False)
                if not (kind == "weight" and n == "weight")
            ]
            records.append(
                LayerShape(
                    name=name,
                    kind=kind,
                    in_elems=_per_sample(xin),
                    out_elems=_per_sample(out),
                    in_itemsize=xin.element_size(),
                    out_itemsize=out.element_size(),
                    weights=weight.numel() if weight is not None else 0,
                    out_channels=int(weight.shape[0]) if weight is not None else 0,
                    params=sum(p.numel() for p in own),
                    input_kind=str(getattr(module, "input_kind", "")),
                    binary_weight=bool(getattr(module, "binary_weight", False)),
                    packed_weight=bool(getattr(module, "packed_weight", False)),
                    window=_window(module) if "pool" in kind else 0,
                )
            )

        return record

    for name, module in model.named_modules():
        if next(module.children(), None) is None:
            kind = _leaf_kind(module)
        else:
            kind = "residual_add" if hasattr(module, "shortcut") else None
        if kind is not None:
            handles.append(module.register_forward_hook(hook(name, kind)))
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for module, training in modes.items():
            module.training = training
        for handle in handles:
            handle.remove()
    if not any(r.kind == "weight" for r in records):
        raise ValueError(f"{type(model).__name__} has no dense or convolution layer to count")
    return records


# --------------------------------------------------------------------------------------------
# Per-layer rules
# --------------------------------------------------------------------------------------------


def _packed(n: int) -> int:
    return (n + 7) // 8


def count_layer(layer: LayerShape, recipe: str | Recipe, batch: int) -> tuple[WorkCounts, ...]:
    """Forward and backward :class:`WorkCounts` of ``layer`` at ``batch`` under ``recipe``.

    The rules are those of the module docstring; see the ``_weight``, ``_sign``, ``_norm``,
    ``_maxpool`` and ``_elementwise`` helpers for each formula.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    rec = from_recipe(recipe)
    rules = {
        "weight": _weight,
        "norm": _norm,
        "sign": _sign,
        "maxpool": _maxpool,
        "avgpool": _elementwise,
        "relu": _relu,
        "residual_add": _residual,
    }
    if layer.kind not in rules:
        raise ValueError(f"unknown layer kind {layer.kind!r}; choose one of {LAYER_KINDS}")
    fwd, bwd = WorkCounts(), WorkCounts()
    rules[layer.kind](layer, rec, batch, fwd, bwd)
    return fwd, bwd


def _elem(rec: Recipe) -> str:
    return "fp16_elem" if rec.lowcost else "fp32_elem"


def _weight(ly: LayerShape, rec: Recipe, b: int, fwd: WorkCounts, bwd: WorkCounts) -> None:
    """Weight layer: the three products and their operands (module docstring table)."""
    n, c = ly.weights, ly.out_channels
    fan_in = n // c
    macs = b * ly.out_elems * fan_in
    x_in, y_out = b * ly.in_elems * ly.in_itemsize, b * ly.out_elems * ly.out_itemsize
    data = ly.input_kind == "data"
    fwd.move("activations", x_in + y_out)
    if not rec.lowcost:
        w = n * 4  # float32 latent weights (and their binarized copy)
        fwd.op("fp32_mac", macs)
        fwd.move("weights", w)
        if ly.binary_weight:  # W_b = clip(W) + (sign(clip W) - clip W).detach()
            fwd.move("weights", 2 * w)
            fwd.op("fp32_elem", 4 * n)
        if not data:  # dX = dY . W_b
            bwd.op("fp32_mac", macs)
            bwd.move("activation_grads", y_out + x_in)
            bwd.move("saved_read", w)
        bwd.op("fp32_mac", macs)  # dW_b = dY^T . X
        bwd.move("activation_grads", y_out)
        bwd.move("saved_read", x_in)
        bwd.move("weight_grads", w)
        if ly.binary_weight:  # dW = dW_b * 1[|W| <= 1]
            bwd.move("weight_grads", 2 * w)
            bwd.move("saved_read", w)
            bwd.op("fp32_elem", 2 * n)
        _bias(ly, b, fwd, bwd, "fp32_elem", 4)
        return
    w = c * _packed(fan_in) if ly.packed_weight else n * 2  # packed signs or fp16 latents
    binary_in = ly.input_kind == "binary"
    if binary_in and ly.binary_weight:
        fwd.op("binary_mac", macs)
    elif data and ly.binary_weight and ly.in_itemsize == 1:
        fwd.op("int8_mac", macs)
    else:
        fwd.op("fp16_mac", macs)
    fwd.move("weights", w)
    if ly.binary_weight:
        fwd.op("int_elem", n)  # sign(W) (or unpacking the bits) on the fly
    if binary_in:  # sign(X) packed for backward
        fwd.move("saved_written", b * _packed(ly.in_elems))
        fwd.op("int_elem", 2 * b * ly.in_elems)
    if rec.po2_bias is not None:  # |dY| max pass + 5-bit power-of-two quantization
        bwd.op("fp32_elem", 6 * b * ly.out_elems)
    if not data:  # dX = dY . sign(W)
        bwd.op("fp16_sign_mac" if ly.binary_weight else "fp16_mac", macs)
        bwd.move("activation_grads", y_out + x_in)
        bwd.move("weights", w)
        if ly.binary_weight:
            bwd.op("int_elem", n)
    bwd.op("fp16_sign_mac" if binary_in else "fp16_mac", macs)  # G = dY^T . sign(X) (or X)
    bwd.move("activation_grads", y_out)
    bwd.move("saved_read", b * _packed(ly.in_elems) if binary_in else x_in)
    if binary_in:
        bwd.op("int_elem", b * ly.in_elems)  # unpack sign(X)
    bwd.move("weight_grads", c * _packed(fan_in))  # sign(G) packed
    bwd.op("int_elem", n)
    _bias(ly, b, fwd, bwd, "fp16_elem", 2)


def _bias(ly: LayerShape, b: int, fwd: WorkCounts, bwd: WorkCounts, op: str, size: int) -> None:
    if ly.params:  # y + bias; its gradient sums dY over the batch
        fwd.op(op, b * ly.out_elems)
        fwd.move("weights", ly.params * size)
        bwd.op(op, b * ly.out_elems)
        bwd.move("weight_grads", ly.params * size)


def _sign(ly: LayerShape, rec: Recipe, b: int, fwd: WorkCounts, bwd: WorkCounts) -> None:
    """Sign activation with the clipped STE; 1-bit mask under the low-cost recipes."""
    n = b * ly.in_elems
    fwd.move("activations", n * ly.in_itemsize + n * ly.out_itemsize)
    bwd.move("activation_grads", n * ly.out_itemsize + n * ly.in_itemsize)
    if not rec.lowcost:  # clamp, sign, subtract, add; backward: mask and multiply
        fwd.op("fp32_elem", 4 * n)
        bwd.op("fp32_elem", 2 * n)
        bwd.move("saved_read", n * ly.in_itemsize)
        return
    mask = b * _packed(ly.in_elems)
    fwd.op("int_elem", 3 * n)  # sign bits, |x| <= 1, pack
    fwd.move("saved_written", mask)
    bwd.op("int_elem", n)  # unpack
    bwd.op("fp16_elem", n)  # grad * mask
    bwd.move("saved_read", mask)


def _norm(ly: LayerShape, rec: Recipe, b: int, fwd: WorkCounts, bwd: WorkCounts) -> None:
    """Batch norm: l2 with gamma and beta (standard), l1 with a 1-bit backward (low-cost)."""
    n = b * ly.in_elems
    y, out = n * ly.in_itemsize, n * ly.out_itemsize
    if not rec.lowcost:
        fwd.move("activations", 2 * y + out)
        fwd.op("fp32_elem", 8 * n)
        fwd.move("weights", ly.params * 4)
        bwd.move("activation_grads", 2 * out + y)
        bwd.move("saved_read", 2 * y)
        bwd.op("fp32_elem", 8 * n)
        bwd.move("weight_grads", ly.params * 4)
        return
    bits = b * _packed(ly.in_elems)
    fwd.move("activations", 3 * y + out)  # sum, sum |y - mu|, normalise in place
    fwd.move("saved_written", bits)
    fwd.op("fp16_elem", 7 * n)
    fwd.op("int_elem", 2 * n)
    fwd.move("weights", ly.params * 2)
    bwd.move("activation_grads", 2 * out + y)  # sums pass, dy pass
    bwd.move("saved_read", 2 * bits)
    bwd.op("fp16_elem", 6 * n)
    bwd.op("int_elem", 2 * n)
    bwd.move("weight_grads", ly.params * 2)


def _maxpool(ly: LayerShape, rec: Recipe, b: int, fwd: WorkCounts, bwd: WorkCounts) -> None:
    """Max pool (k x k): int64 indices (standard) or ``ceil(log2 k^2)`` bit-planes (low-cost)."""
    n_in, n_out = b * ly.in_elems, b * ly.out_elems
    fwd.move("activations", n_in * ly.in_itemsize + n_out * ly.out_itemsize)
    bwd.move("activation_grads", n_out * ly.out_itemsize + n_in * ly.in_itemsize)
    fwd.op(_elem(rec), n_out * ly.window)  # compares
    bwd.op(_elem(rec), n_out)  # scatter-add
    if not rec.lowcost:
        fwd.move("saved_written", n_out * 8)
        bwd.move("saved_read", n_out * 8)
        return
    planes = max(1, math.ceil(math.log2(max(ly.window, 2))))
    codes = b * planes * _packed(ly.out_elems)
    fwd.move("saved_written", codes)
    bwd.move("saved_read", codes)
    fwd.op("int_elem", n_out * (planes + 4))  # local index arithmetic, bit-planes
    bwd.op("int_elem", n_out * (planes + 4))


def _relu(ly: LayerShape, rec: Recipe, b: int, fwd: WorkCounts, bwd: WorkCounts) -> None:
    """ReLU; the low-cost recipes save a 1-bit mask instead of the float tensor."""
    n = b * ly.in_elems
    fwd.move("activations", n * (ly.in_itemsize + ly.out_itemsize))
    bwd.move("activation_grads", n * (ly.in_itemsize + ly.out_itemsize))
    fwd.op(_elem(rec), n)
    bwd.op(_elem(rec), n)
    if not rec.lowcost:
        bwd.move("saved_read", n * ly.out_itemsize)
        return
    mask = b * _packed(ly.in_elems)
    fwd.move("saved_written", mask)
    fwd.op("int_elem", 2 * n)
    bwd.move("saved_read", mask)
    bwd.op("int_elem", n)


def _elementwise(ly: LayerShape, rec: Recipe, b: int, fwd: WorkCounts, bwd: WorkCounts) -> None:
    """Average pool: one op per input element each way, nothing saved."""
    n_in, n_out = b * ly.in_elems, b * ly.out_elems
    fwd.move("activations", n_in * ly.in_itemsize + n_out * ly.out_itemsize)
    bwd.move("activation_grads", n_out * ly.out_itemsize + n_in * ly.in_itemsize)
    fwd.op(_elem(rec), n_in)
    bwd.op(_elem(rec), n_in)


def _residual(ly: LayerShape, rec: Recipe, b: int, fwd: WorkCounts, bwd: WorkCounts) -> None:
    """Residual sum ``branch + shortcut``; backward sums the two gradients reaching the input."""
    n = b * ly.out_elems
    fwd.move("activations", 3 * n * ly.out_itemsize)
    bwd.move("activation_grads", 3 * n * ly.out_itemsize)
    fwd.op(_elem(rec), n)
    bwd.op(_elem(rec), n)


# --------------------------------------------------------------------------------------------
# Optimizer and whole steps
# --------------------------------------------------------------------------------------------


def count_optimizer(model: nn.Module, recipe: str | Recipe) -> WorkCounts:
    """Count one optimizer update of ``model`` (the recipe's optimizer, module docstring)."""
    rec = from_recipe(recipe)
    work = WorkCounts()
    layer_weights: set[int] = set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if next(module.children(), None) is not None or not isinstance(weight, Tensor):
            continue
        if weight.dim() < 2:
            continue
        layer_weights.add(id(weight))
        n, c = weight.numel(), int(weight.shape[0])
        grad_bits = c * _packed(n // c)
        if not rec.lowcost:
            _adam32(work, n)
        elif getattr(module, "packed_weight", False):  # Bop on packed signs
            work.move("weight_grads", grad_bits)
            work.move("optimizer", 2 * grad_bits + 4 * n)  # bits read+written, fp16 EMA r+w
            work.op("fp32_elem", 3 * n)
            work.op("int_elem", 6 * n)
        elif hasattr(module, "grad_bits"):  # LowCostAdam on a packed-gradient layer
            work.move("weight_grads", grad_bits)
            work.move("optimizer", 12 * n)  # fp16 W, m, v read and written
            work.op("fp32_elem", 8 * n)
            work.op("int_elem", 6 * n)
        else:
            _dense16(work, n)
    for p in model.parameters():
        if id(p) in layer_weights or not p.requires_grad:
            continue
        if rec.lowcost:
            _dense16(work, p.numel())
        else:
            _adam32(work, p.numel())
    return work


def _adam32(work: WorkCounts, n: int) -> None:
    """torch.optim.Adam in float32: read g, W, m, v; write W, m, v; ~10 ops per element."""
    work.move("weight_grads", 4 * n)
    work.move("optimizer", 24 * n)
    work.op("fp32_elem", 10 * n)


def _dense16(work: WorkCounts, n: int) -> None:
    """LowCostAdam on a dense fp16 parameter: fp16 g, W; bf16 m, v; stochastic rounding."""
    work.move("weight_grads", 2 * n)
    work.move("optimizer", 12 * n)
    work.op("fp32_elem", 12 * n)
    work.op("int_elem", 4 * n)


def _batch(rec: Recipe, batch: int, in_shape: tuple[int, ...], seed: int = 0) -> Tensor:
    """Make a batch of random image codes in each recipe's natural input dtype.

    Low-cost models take the uint8 codes themselves; ``standard`` gets them as float32 in
    [-1, 1] (what a typical PyTorch user feeds), as in :func:`core.memory.measure_recipe`.
    """
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, *in_shape), generator=gen, dtype=torch.uint8)
    return pixels if rec.lowcost else pixels.float().div_(127.5).sub_(1.0)


def count_model_step(
    model: nn.Module,
    recipe: str | Recipe,
    batch: int,
    in_shape: tuple[int, ...],
    *,
    name: str = "",
    x: Tensor | None = None,
    trace_batch: int = 2,
) -> StepCount:
    """Count one training step of an already built ``model`` (built with ``recipe``) at ``batch``.

    The model is traced on ``x`` (default: :func:`_batch`, random image codes of ``min(batch,
    trace_batch)`` samples); only per-sample shapes and dtypes are read, and those do not depend
    on the batch size, so a small traced batch gives the same counts as the full one, fast
    (the low-cost convolutions run bf16 kernels that are slow on CPUs without AVX512-BF16).
    """
    rec = from_recipe(recipe)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    model_recipe = getattr(model, "recipe", None)
    if model_recipe is not None and model_recipe.lowcost != rec.lowcost:
        raise ValueError(
            f"model was built for {model_recipe.short_str()!r} but counted as "
            f"{rec.short_str()!r}; count with the recipe the model was built with"
        )
    if trace_batch < 1:
        raise ValueError(f"trace_batch must be >= 1, got {trace_batch}")
    x = _batch(rec, min(batch, trace_batch), tuple(in_shape)) if x is None else x
    layers = []
    for shape in trace_layers(model, x):
        fwd, bwd = count_layer(shape, rec, batch)
        layers.append(LayerCount(shape, fwd, bwd))
    return StepCount(
        model=name or type(model).__name__.lower(),
        recipe=rec.short_str(),
        batch=batch,
        in_shape=tuple(in_shape),
        layers=layers,
        optimizer=count_optimizer(model, rec),
    )


def count_step(
    model_name: str,
    recipe: str | Recipe,
    batch: int,
    in_shape: tuple[int, ...],
    *,
    num_classes: int = 10,
    trace_batch: int = 2,
) -> StepCount:
    """Build ``model_name`` under ``recipe`` (:func:`core.models.build_model`) and count a step.

    Examples
    --------
    >>> step = count_step("mlp", "lowcost", 100, (1, 28, 28))
    >>> step.total.ops["binary_mac"] == 100 * (3 * 256 * 256 + 256 * 10)
    True
    """
    from core.models import build_model

    torch.manual_seed(0)
    rec = from_recipe(recipe)
    model = build_model(model_name, rec, num_classes=num_classes, in_shape=tuple(in_shape))
    return count_model_step(
        model, rec, batch, tuple(in_shape), name=model_name, trace_batch=trace_batch
    )
