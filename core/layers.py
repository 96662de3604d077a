"""BNN layers that follow a :class:`~core.recipes.Recipe`: stock autograd or the 1-bit Functions.

Under ``standard`` every layer is what a typical PyTorch user writes (docs/method.md §1a): float32
latent weights binarized with the detach-trick STE, ``nn.BatchNorm`` with gamma and beta,
``nn.MaxPool2d``. Under ``lowcost``/``lowcost-po2`` the same layers call the Functions of
:mod:`core.autograd`, keep float16 weights and BN state, and binary weight layers own two
non-persistent buffers that replace ``weight.grad``:

- ``grad_bits`` (uint8, ``(C_out, ceil(fan_in / 8))``): ``sign(dW)`` of the last backward;
- ``grad_count`` (int64 scalar): backwards run so far; the optimizer steps a layer only when it
  changed since the last ``zero_grad``/``step`` (the Functions save both buffers, so nothing
  may modify them in place between forward and backward).

Neither is in ``state_dict`` (they are per-step scratch, not model state). A backward
overwrites ``grad_bits`` (signs do not accumulate), so gradient accumulation over several
backwards, or a second backward through one graph, is not supported. With gradients
disabled (evaluation), the low-cost layers run the same arithmetic without packing anything.

Under ``lowcost-bop`` (:func:`pack_binary_weights_`, called by :func:`core.models.build_model`)
a binary-weight layer has no latent weights at all: its ``weight`` parameter is replaced by the
persistent uint8 buffer ``weight_bits`` (``(C_out, ceil(fan_in / 8))``, bit set <=> ``+1``, the
layout of ``grad_bits``), which the Functions unpack slice by slice, and which
:class:`core.bop.LowCostBop` flips in place (Helwegen et al., arXiv 1906.02107). ``weight`` is
then a storage-less ``meta`` tensor that keeps the logical shape (``weight.shape``,
``weight.numel()``) for code that counts or traces weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.autograd import (
    AvgPool2dFn,
    BinaryConv2dFn,
    BinaryLinearFn,
    InputKind,
    L1BatchNormFn,
    MaxPool2dFn,
    ReLUFn,
    ScaledCastFn,
    SignSTEFn,
    conv2d_forward,
    linear_forward,
    load_data,
)
from core.functional import binary_sign, bits_to_signs, pack_bits, packed_size
from core.recipes import Recipe

__all__ = [
    "ste_sign",
    "SignActivation",
    "BinaryLinear",
    "BinaryConv2d",
    "L1BatchNorm",
    "batch_norm",
    "MaxPool",
    "ReLU",
    "AvgPool",
    "LogitsHead",
    "PackedGradLayer",
    "normal_init_",
    "pack_binary_weights_",
    "packed_layers",
]


# An empty tensor that requires grad: packed-weight layers hand it to their Function so that
# autograd records the call (and runs its backward, which writes grad_bits) even when neither
# the input (a uint8 batch) nor the weights (uint8 bits) require grad. Its .grad stays None.
_GRAD_ANCHOR = torch.empty(0, requires_grad=True)


def ste_sign(x: Tensor) -> Tensor:
    """Detach-trick sign STE of the standard recipe: ``sign(x)`` forward, ``1[|x|<=1]`` back.

    ``clip(x) + stop_gradient(sign(clip(x)) - clip(x))`` as in the authors' baseline
    (docs/method.md §1a); autograd keeps the float input of ``clamp`` for the backward.
    """
    xc = x.clamp(-1.0, 1.0)
    return xc + (binary_sign(xc) - xc).detach()


class SignActivation(nn.Module):
    """``sign(x)`` with the clipped STE (docs/method.md §2c); 1-bit mask under low-cost recipes."""

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.recipe = recipe

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if not self.recipe.lowcost:
            return ste_sign(x)
        return SignSTEFn.apply(x) if torch.is_grad_enabled() else binary_sign(x)

    def extra_repr(self) -> str:  # noqa: D102
        return f"recipe={self.recipe.short_str()}"


def normal_init_(weight: Tensor, std: float) -> Tensor:
    """Fill ``weight`` with ``N(0, std^2)`` draws of torch's global generator, in place.

    Every dtype is drawn in float64, then rounded to float32 (and to a 16-bit dtype), so a seed
    gives the same bits on every CPU and torch version: torch's float16 ``normal_`` changed
    algorithm between 2.9 and 2.13, and its float32 one uses vectorized log/sin/cos
    approximations on AVX2 CPUs only (38 % of the values a few float32 ulps apart from an
    aarch64 CPU's), while the float64 draws were bit-identical on x86-64 (torch 2.13) and
    aarch64 (2.9.1). The explicit float32 step matters: aarch64 casts float64 to float16 in one
    rounding, x86-64 via float32 (issue 19). ``standard``'s float32 weights were drawn with
    float32 ``normal_`` before 2026-12-02 (its signs were the same on both; ulps were not).
    """
    draws = torch.empty(weight.shape, dtype=torch.float64).normal_(0.0, std)
    return weight.copy_(draws.float())


class PackedGradLayer(nn.Module):
    """Mixin: a weight layer whose ``dW`` lives in packed ``grad_bits`` (low-cost recipes).

    Attributes used by :class:`core.optim.LowCostAdam`: ``weight``, ``grad_bits``,
    ``grad_count`` and ``binary_weight`` (whether the ``|W| <= 1`` STE mask applies).
    After :meth:`pack_weight_` (``lowcost-bop``): ``weight_bits`` and ``packed_weight``.
    """

    weight: nn.Parameter
    binary_weight: bool
    recipe: Recipe
    packed_weight: bool = False

    def pack_weight_(self) -> None:
        """Replace the latent ``weight`` by its packed signs ``weight_bits`` (1 bit per weight).

        ``weight_bits[o] = pack(W[o] >= 0)`` (``sign(0) = +1``, as :func:`binary_sign`), so the
        layer computes exactly what it computed before; ``weight`` becomes a ``meta`` tensor of
        the same shape (no storage). Only binary-weight layers of a low-cost recipe qualify.
        """
        if not (self.recipe.lowcost and self.binary_weight):
            raise ValueError(
                f"pack_weight_ needs a binary-weight low-cost layer, got {self._extra()}"
            )
        if self.packed_weight:
            return
        shape, rows = tuple(self.weight.shape), self.weight.shape[0]
        bits = pack_bits((self.weight.detach() >= 0).view(rows, -1))  # (C_out, ceil(fan_in/8))
        del self.weight  # the Parameter leaves _parameters: no optimizer or state_dict sees it
        self.register_buffer("weight_bits", bits)
        self.weight = torch.empty(shape, dtype=self.recipe.weight_dtype, device="meta")
        self.packed_weight = True

    def weight_signs(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """Return the binary weights as ``+-1`` of ``dtype`` in the weight's shape (a copy)."""
        if not self.packed_weight:
            return binary_sign(self.weight.detach(), dtype)
        fan_in = self.weight[0].numel()
        return bits_to_signs(self.weight_bits, fan_in, dtype).reshape(self.weight.shape).clone()

    @torch.no_grad()
    def load_weight_signs_(self, values: Tensor) -> None:
        """Set packed weights to ``sign(values)`` (``values >= 0`` <=> ``+1``), in place."""
        if not self.packed_weight:
            raise ValueError("load_weight_signs_ needs packed weights (call pack_weight_ first)")
        if tuple(values.shape) != tuple(self.weight.shape):
            got, want = tuple(values.shape), tuple(self.weight.shape)
            raise ValueError(f"values of shape {got} do not fit weight of shape {want}")
        rows = self.weight.shape[0]
        self.weight_bits.copy_(pack_bits((values >= 0).reshape(rows, -1)))

    def _weight_args(self) -> tuple[Tensor, tuple[int, ...] | None]:
        """Return what the Functions get: the fp16 weight, or packed bits and the logical shape."""
        if self.packed_weight:
            return self.weight_bits, tuple(self.weight.shape)
        return self.weight, None

    def _setup(self, recipe: Recipe, input_kind: str, binary_weight: bool) -> None:
        if input_kind not in InputKind.ALL:
            raise ValueError(f"unknown input_kind {input_kind!r}; choose one of {InputKind.ALL}")
        self.recipe, self.input_kind, self.binary_weight = recipe, input_kind, binary_weight
        fan_in = self.weight[0].numel()
        with torch.no_grad():  # W ~ N(0, 1/fan_in) (docs/method.md §2f); stored in the recipe dtype
            normal_init_(self.weight, 1.0 / math.sqrt(fan_in))
            if getattr(self, "bias", None) is not None:
                self.bias.zero_()
        if recipe.lowcost:
            rows = self.weight.shape[0]
            bits = torch.zeros(rows, packed_size(fan_in), dtype=torch.uint8)
            self.register_buffer("grad_bits", bits, persistent=False)
            self.register_buffer("grad_count", torch.zeros((), dtype=torch.int64), persistent=False)

    def _weight_for_standard(self) -> Tensor:
        return ste_sign(self.weight) if self.binary_weight else self.weight

    def _check_input(self, x: Tensor) -> Tensor:
        """Accept a uint8 image batch in the data layer (``x / 127.5 - 1``, docs/method.md §3).

        Low-cost recipes keep the codes as they are (the Functions scale them on the fly and
        save them as the layer's 1-byte input); ``standard`` scales them to float32 here, as
        a typical PyTorch user would before calling the model.
        """
        if x.dtype != torch.uint8:
            return x
        if self.input_kind != InputKind.DATA:
            raise TypeError(
                f"uint8 input reached a {self.input_kind!r} layer; only a model's first (data) "
                "layer takes uint8 image codes: pass floats here or build the layer as data"
            )
        return x if self.recipe.lowcost else load_data(x, self.weight.dtype)

    def _extra(self) -> str:
        q = "sign" if self.binary_weight else "real"
        return f"w={q}, input={self.input_kind}, recipe={self.recipe.short_str()}"


class BinaryLinear(nn.Linear, PackedGradLayer):
    """Dense layer ``Y = X . sign(W)^T`` (no bias unless asked; docs/method.md §3).

    Parameters
    ----------
    in_features, out_features : int
        Sizes.
    recipe : Recipe
        Training recipe.
    input_kind : str
        ``InputKind.BINARY`` after a sign activation, ``InputKind.DATA`` for the model's first
        layer (named in the model definition), ``InputKind.REAL`` for a real-valued input.
    binary_weight : bool
        Binarize the weights (False for a full-precision head, e.g. ResNetE's classifier).
    bias : bool
        Add a bias (full-precision heads only).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        recipe: Recipe,
        *,
        input_kind: str = InputKind.BINARY,
        binary_weight: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, dtype=recipe.weight_dtype)
        self._setup(recipe, input_kind, binary_weight)

    def reset_parameters(self) -> None:  # noqa: D102  (init happens in _setup)
        pass

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self._check_input(x)
        if not self.recipe.lowcost:
            return F.linear(x, self._weight_for_standard(), self.bias)
        weight, shape = self._weight_args()
        if torch.is_grad_enabled():
            y = BinaryLinearFn.apply(
                x, weight, self.grad_bits, self.grad_count,
                self.input_kind, self.binary_weight, self.recipe.po2_bias, shape,
                _GRAD_ANCHOR if self.packed_weight else None,
            )  # fmt: skip
        else:  # evaluation: same arithmetic, nothing packed or saved
            y = linear_forward(x, weight, self.input_kind, self.binary_weight, shape)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:  # noqa: D102
        return f"{self.in_features}, {self.out_features}, {self._extra()}"


class BinaryConv2d(nn.Conv2d, PackedGradLayer):
    """3x3 (or k x k) convolution ``Y = conv2d(X, sign(W))``, no bias (docs/method.md §3).

    Parameters are those of :class:`BinaryLinear` plus ``kernel_size``, ``stride`` and
    ``padding`` (``1`` = 'same' for 3x3, ``0`` = 'valid').
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        recipe: Recipe,
        *,
        stride: int = 1,
        padding: int = 0,
        input_kind: str = InputKind.BINARY,
        binary_weight: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            bias=False, dtype=recipe.weight_dtype,
        )  # fmt: skip
        self._setup(recipe, input_kind, binary_weight)

    def reset_parameters(self) -> None:  # noqa: D102  (init happens in _setup)
        pass

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        stride, padding = self.stride[0], self.padding[0]
        x = self._check_input(x)
        if not self.recipe.lowcost:
            return F.conv2d(x, self._weight_for_standard(), stride=stride, padding=padding)
        weight, shape = self._weight_args()
        if not torch.is_grad_enabled():  # evaluation: same arithmetic, nothing saved
            return conv2d_forward(
                x, weight, stride, padding, self.input_kind, self.binary_weight, shape
            )
        return BinaryConv2dFn.apply(
            x, weight, self.grad_bits, self.grad_count, stride, padding,
            self.input_kind, self.binary_weight, self.recipe.po2_bias, shape,
            _GRAD_ANCHOR if self.packed_weight else None,
        )  # fmt: skip

    def extra_repr(self) -> str:  # noqa: D102
        return f"{super().extra_repr()}, {self._extra()}"


class L1BatchNorm(nn.Module):
    """l1 batch norm with beta only (docs/method.md §2d); float16 beta and running statistics.

    Training normalises with the batch's ``mu`` and ``sigma = mean|y - mu|``; eval uses the
    running statistics (momentum 0.1 here = Keras 0.9; init ``mu_r = 0``, ``sigma_r = 1``).
    """

    def __init__(self, channels: int, recipe: Recipe, momentum: float = 0.1) -> None:
        super().__init__()
        dt = recipe.weight_dtype
        self.channels, self.momentum = channels, momentum
        self.beta = nn.Parameter(torch.zeros(channels, dtype=dt))
        self.register_buffer("running_mean", torch.zeros(channels, dtype=dt))
        self.register_buffer("running_sigma", torch.ones(channels, dtype=dt))

    def forward(self, y: Tensor) -> Tensor:  # noqa: D102
        if self.training:
            return L1BatchNormFn.apply(
                y, self.beta, self.running_mean, self.running_sigma, self.momentum
            )
        shape = (1, -1) + (1,) * (y.dim() - 2)  # broadcast per channel
        mu, sigma = self.running_mean.float().view(shape), self.running_sigma.float().view(shape)
        return ((y.float() - mu) / sigma + self.beta.float().view(shape)).to(self.beta.dtype)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{self.channels}, momentum={self.momentum}"


def batch_norm(channels: int, recipe: Recipe, *, spatial: bool) -> nn.Module:
    """Make the recipe's batch norm: Keras-like l2 BN (momentum 0.9, eps 1e-4) or l1 BN."""
    if recipe.lowcost:
        return L1BatchNorm(channels, recipe)
    cls = nn.BatchNorm2d if spatial else nn.BatchNorm1d
    return cls(channels, eps=1e-4, momentum=0.1)


class MaxPool(nn.Module):
    """Max pooling: ``nn.MaxPool2d`` (standard) or the argmax-bits :class:`MaxPool2dFn`."""

    def __init__(self, kernel: int, recipe: Recipe, stride: int | None = None, padding: int = 0):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride or kernel, padding
        self.recipe = recipe

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if self.recipe.lowcost and torch.is_grad_enabled():
            return MaxPool2dFn.apply(x, self.kernel, self.stride, self.padding)
        return F.max_pool2d(x, self.kernel, self.stride, self.padding)

    def extra_repr(self) -> str:  # noqa: D102
        return f"kernel={self.kernel}, stride={self.stride}, padding={self.padding}"


class ReLU(nn.Module):
    """ReLU; 1-bit mask under low-cost recipes (ResNetE stem and head)."""

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.recipe = recipe

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return ReLUFn.apply(x) if self.recipe.lowcost and torch.is_grad_enabled() else x.relu()


class AvgPool(nn.Module):
    """Non-overlapping average pooling; saves nothing under low-cost recipes."""

    def __init__(self, kernel: int, recipe: Recipe) -> None:
        super().__init__()
        self.kernel, self.recipe = kernel, recipe

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if self.recipe.lowcost:
            return AvgPool2dFn.apply(x, self.kernel)
        return F.avg_pool2d(x, self.kernel)


class LogitsHead(nn.Module):
    """Model output: float32 logits; low-cost recipes scale the gradient into fp16's range."""

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.recipe = recipe

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if self.recipe.lowcost:
            return ScaledCastFn.apply(x, self.recipe.grad_scale)
        return x


def packed_layers(model: nn.Module) -> list[PackedGradLayer]:
    """List the layers of ``model`` whose binary weights are stored packed (``lowcost-bop``)."""
    return [m for m in model.modules() if isinstance(m, PackedGradLayer) and m.packed_weight]


def pack_binary_weights_(model: nn.Module) -> nn.Module:
    """Pack the weights of every binary-weight low-cost layer of ``model`` (1 bit each), in place.

    Full-precision layers (``binary_weight=False``: ResNetE's stem, shortcuts and classifier)
    keep their float16 latent weights. Returns ``model``.
    """
    for module in model.modules():
        if isinstance(module, PackedGradLayer) and module.recipe.lowcost and module.binary_weight:
            module.pack_weight_()
    return model
