"""The paper's networks (docs/method.md §3) and binary ResNetE-18, for any recipe.

Every model takes float32 images in [-1, 1] of shape ``(B, *in_shape)``, or the uint8 codes
``k`` of those images (``x = k / 127.5 - 1``; low-cost models keep them as they are, standard
ones scale them in the first layer), and returns float32 logits ``(B, num_classes)`` (softmax
lives in the cross-entropy loss). The first weight layer is
declared with ``input_kind=InputKind.DATA`` in each definition below: nothing is detected from
shapes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from core.autograd import InputKind
from core.config import MODELS
from core.layers import (
    AvgPool,
    BinaryConv2d,
    BinaryLinear,
    LogitsHead,
    MaxPool,
    PackedGradLayer,
    ReLU,
    SignActivation,
    batch_norm,
    pack_binary_weights_,
)
from core.recipes import Recipe, from_recipe

__all__ = [
    "build_model",
    "MLP",
    "CNV",
    "BinaryNet",
    "ResNetE18",
    "count_weights",
    "packed_weights_by_name",
    "float_state",
    "load_float_state_",
    "weight_names",
]


def _conv_bn_sign(c_in: int, c_out: int, recipe: Recipe, **conv: object) -> list[nn.Module]:
    return [
        BinaryConv2d(c_in, c_out, 3, recipe, **conv),  # type: ignore[arg-type]
        batch_norm(c_out, recipe, spatial=True),
        SignActivation(recipe),
    ]


def _dense_bn(n_in: int, n_out: int, recipe: Recipe, **dense: object) -> list[nn.Module]:
    return [BinaryLinear(n_in, n_out, recipe, **dense), batch_norm(n_out, recipe, spatial=False)]  # type: ignore[arg-type]


class _BNN(nn.Sequential):
    """A sequential BNN that remembers its recipe."""

    def __init__(self, recipe: Recipe, layers: list[nn.Module]) -> None:
        super().__init__(*layers, LogitsHead(recipe))
        self.recipe = recipe


class MLP(_BNN):
    """MNIST MLP: 784-256-256-256-256-10, l1/l2 BN after each layer (399,872 weights at 28x28).

    ``Flatten -> [Dense(data) BN sign] -> 3 x [Dense BN sign] -> Dense BN``; any ``in_shape``
    is flattened (sklearn digits, 1x8x8, gives 64 inputs).
    """

    def __init__(self, recipe: Recipe, num_classes: int, in_shape: tuple[int, ...]) -> None:
        n_in = _prod(in_shape)
        layers: list[nn.Module] = [nn.Flatten()]  # (B, *in_shape) -> (B, n_in)
        layers += _dense_bn(n_in, 256, recipe, input_kind=InputKind.DATA)
        for _ in range(3):
            layers += [SignActivation(recipe), *_dense_bn(256, 256, recipe)]
        layers += [SignActivation(recipe), *_dense_bn(256, num_classes, recipe)]
        super().__init__(recipe, layers)


class CNV(_BNN):
    """FINN CNV for CIFAR-10/SVHN: 'valid' 3x3 convs, pooling after the sign (1,542,848 weights).

    ``64, 64, pool, 128, 128, pool, 256, 256, flatten, FC 512, FC 512, FC num_classes``.
    """

    def __init__(self, recipe: Recipe, num_classes: int, in_shape: tuple[int, ...]) -> None:
        c, h, w = _image_shape(in_shape, "cnv")
        layers = _conv_bn_sign(c, 64, recipe, input_kind=InputKind.DATA)  # 32 -> 30
        layers += _conv_bn_sign(64, 64, recipe) + [MaxPool(2, recipe)]  # 30 -> 28 -> 14
        layers += _conv_bn_sign(64, 128, recipe)  # 14 -> 12
        layers += _conv_bn_sign(128, 128, recipe) + [MaxPool(2, recipe)]  # 12 -> 10 -> 5
        layers += _conv_bn_sign(128, 256, recipe)  # 5 -> 3
        layers += _conv_bn_sign(256, 256, recipe)  # 3 -> 1
        h, w = ((h - 4) // 2 - 4) // 2 - 4, ((w - 4) // 2 - 4) // 2 - 4
        if h < 1 or w < 1:
            raise ValueError(f"cnv needs images of at least 32x32, got in_shape {in_shape}")
        layers += [nn.Flatten()]  # (B, 256, h, w) -> (B, 256*h*w)
        layers += _dense_bn(256 * h * w, 512, recipe) + [SignActivation(recipe)]
        layers += _dense_bn(512, 512, recipe) + [SignActivation(recipe)]
        layers += _dense_bn(512, num_classes, recipe)
        super().__init__(recipe, layers)


class BinaryNet(_BNN):
    """BinaryNet for CIFAR-10/SVHN: 'same' 3x3 convs, pooling before BN (14,022,016 weights).

    ``128, 128 pool, 256, 256 pool, 512, 512 pool, FC 1024, FC 1024, FC num_classes``.
    """

    def __init__(self, recipe: Recipe, num_classes: int, in_shape: tuple[int, ...]) -> None:
        c, h, w = _image_shape(in_shape, "binarynet")
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(((c, 128), (128, 128), (128, 256), (256, 256))):
            kind = InputKind.DATA if i == 0 else InputKind.BINARY
            conv = BinaryConv2d(c_in, c_out, 3, recipe, padding=1, input_kind=kind)
            pool = [MaxPool(2, recipe)] if i % 2 else []
            layers += [conv, *pool, batch_norm(c_out, recipe, spatial=True), SignActivation(recipe)]
        bn512 = lambda: batch_norm(512, recipe, spatial=True)  # noqa: E731
        layers += [BinaryConv2d(256, 512, 3, recipe, padding=1), bn512(), SignActivation(recipe)]
        layers += [BinaryConv2d(512, 512, 3, recipe, padding=1), MaxPool(2, recipe), bn512()]
        layers += [SignActivation(recipe)]
        h, w = h // 8, w // 8
        if h < 1 or w < 1:
            raise ValueError(f"binarynet needs images of at least 8x8, got in_shape {in_shape}")
        layers += [nn.Flatten()]  # (B, 512, h, w) -> (B, 512*h*w)
        layers += _dense_bn(512 * h * w, 1024, recipe) + [SignActivation(recipe)]
        layers += _dense_bn(1024, 1024, recipe) + [SignActivation(recipe)]
        layers += _dense_bn(1024, num_classes, recipe)
        super().__init__(recipe, layers)


class _ResidualBlock(nn.Module):
    """ResNetE block (Bethge et al. 2019): ``BN(conv3x3_b(sign(x))) + shortcut(x)``.

    The shortcut is the identity, or ``BN(conv1x1(avgpool2(x)))`` with real weights when the
    block halves the resolution and/or changes the width. The residual stream stays real-valued.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, recipe: Recipe) -> None:
        super().__init__()
        self.sign = SignActivation(recipe)
        self.conv = BinaryConv2d(c_in, c_out, 3, recipe, stride=stride, padding=1)
        self.bn = batch_norm(c_out, recipe, spatial=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                AvgPool(stride, recipe) if stride > 1 else nn.Identity(),
                BinaryConv2d(
                    c_in, c_out, 1, recipe, input_kind=InputKind.REAL, binary_weight=False
                ),
                batch_norm(c_out, recipe, spatial=True),
            )

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.bn(self.conv(self.sign(x))) + self.shortcut(x)


class ResNetE18(nn.Module):
    """Binary ResNetE-18 (Bethge et al., arXiv 1906.08637; larq zoo layout).

    ImageNet stem ``conv7x7/2 (real) BN ReLU maxpool3x3/2 BN`` (``cifar=True``: ``conv3x3 BN
    ReLU BN``), then 4 stages of 64/128/256/512 channels with 4 single-conv residual blocks each
    (16 binary 3x3 convs; stride 2 at the start of stages 2-4), then ``ReLU, global average
    pool, dense (real, with bias)``.
    """

    def __init__(
        self, recipe: Recipe, num_classes: int, in_shape: tuple[int, ...], *, cifar: bool
    ) -> None:
        super().__init__()
        self.recipe = recipe
        c, h, w = _image_shape(in_shape, "resnete18")
        k, stride = (3, 1) if cifar else (7, 2)
        stem: list[nn.Module] = [
            BinaryConv2d(
                c, 64, k, recipe, stride=stride, padding=k // 2,
                input_kind=InputKind.DATA, binary_weight=False,
            ),
            batch_norm(64, recipe, spatial=True),
            ReLU(recipe),
        ]  # fmt: skip
        if not cifar:
            stem.append(MaxPool(3, recipe, stride=2, padding=1))
        stem.append(batch_norm(64, recipe, spatial=True))
        self.stem = nn.Sequential(*stem)
        blocks: list[nn.Module] = []
        c_in = 64
        for stage, c_out in enumerate((64, 128, 256, 512)):
            for i in range(4):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_ResidualBlock(c_in, c_out, stride, recipe))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.relu = ReLU(recipe)
        self.fc = BinaryLinear(
            512, num_classes, recipe, input_kind=InputKind.REAL, binary_weight=False, bias=True
        )
        self.head = LogitsHead(recipe)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.blocks(self.stem(x))  # (B, 512, h/32, w/32) (cifar: h/8)
        x = self.relu(x).mean((2, 3))  # (B, 512)
        return self.head(self.fc(x))


_BUILDERS = {
    "mlp": lambda r, k, s: MLP(r, k, s),
    "cnv": lambda r, k, s: CNV(r, k, s),
    "binarynet": lambda r, k, s: BinaryNet(r, k, s),
    "resnete18": lambda r, k, s: ResNetE18(r, k, s, cifar=False),
    "resnete18-cifar": lambda r, k, s: ResNetE18(r, k, s, cifar=True),
}
assert tuple(_BUILDERS) == MODELS


def build_model(
    name: str,
    recipe: str | Recipe,
    num_classes: int = 10,
    in_shape: tuple[int, ...] = (1, 28, 28),
) -> nn.Module:
    """Build model ``name`` (``mlp``, ``cnv``, ``binarynet``, ``resnete18``, ``resnete18-cifar``).

    Parameters
    ----------
    name : str
        Architecture (docs/method.md §3).
    recipe : str or Recipe
        ``standard``, ``lowcost``, ``lowcost-po2`` or a :class:`Recipe` from
        :func:`core.recipes.from_recipe` (e.g. with another ``po2_bias``).
    num_classes : int
        Output logits.
    in_shape : tuple of int
        ``(C, H, W)`` of one input image (``mlp`` accepts any shape and flattens it).

    Returns
    -------
    nn.Module
        Model in train mode with a ``recipe`` attribute; ``model(x)`` maps float32
        ``(B, *in_shape)`` in [-1, 1] (or its uint8 codes, ``ImageLoader(raw=True)``) to float32
        logits ``(B, num_classes)``.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not in_shape or any(int(d) < 1 for d in in_shape):
        raise ValueError(f"in_shape must be positive sizes like (1, 28, 28), got {in_shape}")
    rec = from_recipe(recipe)
    model = _BUILDERS[name](rec, num_classes, tuple(int(d) for d in in_shape))
    if rec.packed_weights:  # lowcost-bop: same initialisation, then 1 bit per binary weight
        pack_binary_weights_(model)
    return model


def count_weights(model: nn.Module) -> int:
    """Count the weights of the model's dense/conv layers (the ``N`` of docs/method.md §5)."""
    layers = (m for m in model.modules() if isinstance(m, BinaryLinear | BinaryConv2d))
    return sum(m.weight.numel() for m in layers)


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _image_shape(in_shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ValueError(f"{name} needs in_shape (C, H, W), got {in_shape}")
    return in_shape[0], in_shape[1], in_shape[2]


def weight_names(model: nn.Module) -> list[str]:
    """State names of the dense/conv weight tensors (``"<layer>.weight"``), packed ones included."""
    return [
        f"{name}.weight" if name else "weight"
        for name, m in model.named_modules()
        if isinstance(m, BinaryLinear | BinaryConv2d)
    ]


def packed_weights_by_name(model: nn.Module) -> dict[str, PackedGradLayer]:
    """Return the layers whose binary weights are packed bits, by name ``"<layer>.weight"``."""
    return {
        f"{name}.weight" if name else "weight": m
        for name, m in model.named_modules()
        if isinstance(m, PackedGradLayer) and m.packed_weight
    }


def float_state(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` with every packed weight shown as its float16 ``+-1`` values.

    Under ``lowcost-bop`` a binary layer's ``"<layer>.weight_bits"`` (uint8) becomes
    ``"<layer>.weight"`` (float16 ``+-1`` in the weight's shape, a fresh tensor), at the place
    the weight takes in a ``lowcost`` model's state dict: same names, shapes and order as
    ``lowcost``, so the federated codec's spec and checkpoints see one kind of model. Other
    entries are the state dict's own tensors (views of the model's storage); for models
    without packed weights the result equals ``model.state_dict()``.
    """
    packed = {f"{name}_bits": m for name, m in packed_weights_by_name(model).items()}
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        layer = packed.get(key)
        if layer is None:
            out[key] = value
        else:
            out[key.removesuffix("_bits")] = layer.weight_signs(torch.float16)
    return out


@torch.no_grad()
def load_float_state_(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a float state (names as :func:`float_state`) into ``model``, in place.

    Packed layers take ``sign(state["<layer>.weight"])`` (``>= 0`` <=> ``+1``), the
    re-binarization of a real-valued replica (e.g. the federated global model); every other
    entry is copied into the model's own tensor, cast to its dtype. Missing or extra names
    raise ``KeyError`` naming them.
    """
    target = float_state(model)
    missing, extra = set(target) - set(state), set(state) - set(target)
    if missing or extra:
        raise KeyError(
            f"state does not match the model: missing {sorted(missing)}, extra {sorted(extra)}"
        )
    packed = packed_weights_by_name(model)
    for key, value in state.items():
        layer = packed.get(key)
        if layer is not None:
            layer.load_weight_signs_(torch.as_tensor(value))
        else:
            target[key].copy_(torch.as_tensor(value))
