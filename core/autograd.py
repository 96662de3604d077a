"""The low-cost recipe's autograd Functions: each saves only packed bits (docs/method.md §2).

Every Function keeps its backward state in ``ctx.save_for_backward`` (never as a ``ctx``
attribute, so saved-tensor hooks see all of it) and processes its largest tensors in slices of
~1/16 of the tensor (``MIN_CHUNK_ELEMENTS``..``CHUNK_ELEMENTS`` elements), so backward
transients stay bounded: a float copy of a whole activation is never made. The floor
``MIN_CHUNK_ELEMENTS`` (32768 16-bit values; half as many float32 ones) keeps small models
(the MLP) in few slices: below it, per-call overhead dominates the step time.

Data input. The first layer (``InputKind.DATA``) accepts the loader's uint8 image codes ``k``
(meaning ``k / 127.5 - 1``, docs/method.md §3; ``ImageLoader(raw=True)``): it saves the batch itself
as its 1-byte input (no copy), its forward scales slices on the fly or, for binary weights,
multiplies ``k - 128`` by ``sign(W)`` in exact int8 arithmetic (:func:`_codes_times_signs`), and
its backward rebuilds float32 columns of ``X`` slice by slice. No float copy of the batch exists.
A float32 batch works too (saved as uint8 codes when it lies on that grid, else fp16).

l1 batch norm in 16 bits. Its forward normalises in place in the fp16 output buffer and its
backward works in place on the unpacked fp16 signs (``dy = dout/sigma - mean(g) - sign *
mean_gs``), so neither keeps a float32 copy of the activation; the per-channel sums accumulate
in float32 inside the reduction kernels (float32 slices only if a 16-bit sum overflows). The
cost is ~1 fp16 ulp of ``|dout / sigma|`` in ``dy``, below the bf16 rounding of the ``dY`` that
binary layers receive.

Dtypes. Activations and their gradients are 16-bit: float16 everywhere, except the pre-BN
output ``Y`` of a binary layer and its gradient ``dY``, which are bfloat16. Matrix products whose
operands are both ``+-1`` run in bfloat16 (exact operands, fp32 accumulation; ~3x faster than
float32 on CPUs with AVX512-BF16), so ``dY`` is rounded to bf16 for them anyway and handing it
over in bf16 saves a converted copy per layer. Products with real-valued data or weights run in
float32.

Per element of a layer's input or output, what is saved:

================  =======================================  ==========================
Function          saved for backward                       bits / element
================  =======================================  ==========================
SignSTEFn         ``|x| <= 1`` STE mask                    1
BinaryLinearFn /  ``sign(x)`` of a binary input            1
BinaryConv2dFn    first layer: data as uint8 codes / fp16  8 (exact codes) or 16
                  real (ResNet stream) input: fp16         16
L1BatchNormFn     ``sign(y_hat)`` + 2 fp16 scalars/channel 1
MaxPool2dFn       argmax index within the window           ceil(log2 k^2) per output
ReLUFn            ``x > 0``                                1
AvgPool2dFn       nothing                                  0
================  =======================================  ==========================

Packed weights (``lowcost-bop``): ``weight`` may be the layer's uint8 sign bits, with
``weight_shape`` the logical shape; rows and column blocks are unpacked to ``+-1`` on the fly
(never the whole matrix of a dense layer). Such a weight does not require grad, so the layer
passes ``anchor``, an empty tensor that does, to make autograd record the call even when the
input does not require grad either (the data layer).

The weight gradient never becomes a dense float tensor: the layer Functions write
``sign(G)`` (``G = sign(X)^T dY``) into the layer's packed ``grad_bits`` buffer and return
``None`` for the weight (and count the write in the layer's ``grad_count``);
:class:`core.optim.LowCostAdam` applies ``/sqrt(N)`` and the STE mask
``|W| <= 1`` (docs/method.md §2b) at step time.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

from core.functional import (
    abs_at_most_one,
    batch_slices,
    binary_sign,
    bits_to_signs,
    pack_bits,
    packed_size,
    po2_quantize,
    unpack_bits,
)
from core.kernels import binary_product_dtype

__all__ = [
    "CHUNK_ELEMENTS",
    "InputKind",
    "SignSTEFn",
    "BinaryLinearFn",
    "BinaryConv2dFn",
    "L1BatchNormFn",
    "MaxPool2dFn",
    "ReLUFn",
    "AvgPool2dFn",
    "ScaledCastFn",
    "save_data",
    "load_data",
    "linear_forward",
    "conv2d_forward",
    "SIGMA_MIN",
]

CHUNK_ELEMENTS = 1 << 20  # largest float transient per slice (elements): 4 MiB in float32
MIN_CHUNK_ELEMENTS = 1 << 15  # below this (16-bit values), per-call overhead dominates
SLICE_FRACTION = 16  # a slice holds ~1/16 of the tensor it is cut from (within the bounds above)
SIGMA_MIN = 1e-4  # floor of the l1 BN sigma, only for constant channels (the paper has no eps)
# A channel whose sigma sits on the floor is constant over the batch (common with +-1 inputs and
# tiny batches): its normalised output is 0 whatever y is, so it passes no gradient back, instead
# of dout / 1e-4, which overflows the fp16 gradient buffers (seen with batches of 2).
_SIGMA_FLOOR16 = float(torch.tensor(SIGMA_MIN).half())


class InputKind:
    """What a weight layer's input is, hence what it saves for ``dW`` (docs/method.md §2b, §9.7)."""

    BINARY = "binary"  # +-1 from a sign activation: 1 bit
    DATA = "data"  # the model's input images in [-1, 1]: uint8 codes when exact, else fp16
    REAL = "real"  # a real-valued fp16 activation (ResNet stream, head): fp16

    ALL = (BINARY, DATA, REAL)


# --- helpers -----------------------------------------------------------------------------------


def _slices(
    rows: int, per_row: int, floor: int = MIN_CHUNK_ELEMENTS, *, itemsize: int = 2
) -> list[slice]:
    """Row slices holding ~1/16 of a ``rows x per_row`` tensor (within the chunk bounds).

    A float32 slice is then ~0.25 B per element of the tensor, far below the 2 B/element fp16
    gradient buffers that backward needs anyway. Below ``floor`` elements per slice (small
    models), per-call overhead would dominate the step time, so slices are never smaller.
    ``itemsize=4`` (float32 kernels for bf16 operands, :mod:`core.kernels`) halves the slices,
    so they hold the bytes of the 16-bit slices they replace.
    """
    budget = min(CHUNK_ELEMENTS, max(floor, rows * per_row // SLICE_FRACTION))
    return batch_slices(rows, per_row, budget * 2 // max(2, itemsize))


def _floor_for(dtype: torch.dtype) -> int:
    """Slice floor for transients of ``dtype``: :data:`MIN_CHUNK_ELEMENTS` 16-bit values' bytes."""
    return MIN_CHUNK_ELEMENTS * 2 // max(2, dtype.itemsize)


def _column_slices(
    rows: int, cols: int, batch: int, floor: int = MIN_CHUNK_ELEMENTS, *, itemsize: int = 2
) -> list[slice]:
    """Column slices (multiples of 8 wide, so they fall on packed-byte boundaries).

    A slice's ``(rows, c)`` block of ``G`` and its ``(batch, c)`` block of the input both fit
    the budget of :func:`_slices` (``itemsize`` as there).
    """
    budget = min(CHUNK_ELEMENTS, max(floor, rows * cols // SLICE_FRACTION))
    budget = budget * 2 // max(2, itemsize)
    width = max(8, budget // max(1, rows, batch) // 8 * 8)
    return [slice(c, min(c + width, cols)) for c in range(0, cols, width)]


def _po2(g: Tensor, bias: int | None, max_abs: float) -> Tensor:
    return g if bias is None else po2_quantize(g, bias, max_abs=max_abs)


def _abs_max(t: Tensor) -> float:
    b = t.shape[0]
    per = t[0].numel() if b else 1
    return max((float(t[s].abs().max()) for s in _slices(b, per)), default=0)


def save_data(x: Tensor) -> Tensor:
    """Compact copy of data ``x`` in [-1, 1]: uint8 codes ``k`` when ``x == k*2/255 - 1``.

    Images scaled as ``x / 255 * 2 - 1`` (docs/method.md §3) round-trip through 8-bit codes up
    to one float32 ulp, so 1 byte per value is exact; anything else is kept as float16. A uint8
    batch already *is* those codes: it is saved as it is (no copy).
    """
    if x.dtype == torch.uint8:
        return x
    b = x.shape[0]
    codes = torch.empty(x.shape, dtype=torch.uint8)
    for s in _slices(b, x[0].numel()):
        c = (x[s] + 1).mul_(127.5).round_().clamp_(0, 255)
        if (c * (2 / 255) - 1 - x[s]).abs().max() > 2**-20:
            return x.to(torch.float16)
        codes[s] = c
    return codes


def load_data(saved: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of :func:`save_data` (a slice of the saved tensor is fine).

    uint8 codes ``k`` become ``k / 127.5 - 1``, the very float32 operations of
    :func:`core.data.scale_to_unit`, so a uint8 batch and the float batch the loader would have
    made from it give bit-identical layer inputs.
    """
    if saved.dtype == torch.uint8:
        return saved.to(dtype).div_(127.5).sub_(1.0)
    return saved.to(dtype)


def _save_input(x: Tensor, kind: str) -> Tensor:
    if kind == InputKind.BINARY:  # (B, ...) -> (B, ceil(n/8)) sign bits
        out = torch.empty(x.shape[0], packed_size(x[0].numel()), dtype=torch.uint8)
        for s in _slices(x.shape[0], x[0].numel()):
            out[s] = pack_bits((x[s] >= 0).view(s.stop - s.start, -1))
        return out
    if kind == InputKind.DATA:
        return save_data(x)
    return x  # REAL: the fp16 activation itself (no copy)


def _load_input(saved: Tensor, kind: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """Rebuild a batch slice of a layer input from what :func:`_save_input` kept."""
    if kind == InputKind.BINARY:
        return bits_to_signs(saved, math.prod(shape[1:]), dtype).view(shape)
    if kind == InputKind.DATA:
        return load_data(saved, dtype)
    return saved.to(dtype)


def _load_columns(saved: Tensor, kind: str, cols: slice, dtype: torch.dtype) -> Tensor:
    """Columns ``cols`` (start a multiple of 8) of a dense layer's saved ``(B, in)`` input."""
    if kind == InputKind.BINARY:  # (B, in/8) packed -> (B, c)
        packed = saved[:, cols.start // 8 : (cols.stop + 7) // 8]
        return bits_to_signs(packed, cols.stop - cols.start, dtype)
    return load_data(saved[:, cols], dtype) if kind == InputKind.DATA else saved[:, cols].to(dtype)


def _weight_operand(
    weight: Tensor, binary: bool, dtype: torch.dtype, shape: tuple[int, ...] | None = None
) -> Tensor:
    """``sign(W)`` (or ``W``) in ``dtype``; rows of packed sign bits need ``shape`` (per row)."""
    if weight.dtype == torch.uint8:  # packed (lowcost-bop): (rows, ceil(fan_in/8)) -> (rows, ...)
        row_shape = _row_shape(shape)
        return bits_to_signs(weight, math.prod(row_shape), dtype).reshape(-1, *row_shape)
    return binary_sign(weight, dtype) if binary else weight.to(dtype)


def _row_shape(shape: tuple[int, ...] | None) -> tuple[int, ...]:
    if shape is None:
        raise ValueError("packed uint8 weights need weight_shape (the logical weight shape)")
    return tuple(shape[1:])


def _logical_shape(weight: Tensor, shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """Shape of the weights ``weight`` stands for: itself, or ``shape`` when packed."""
    if weight.dtype != torch.uint8:
        return tuple(weight.shape)
    _row_shape(shape)
    return tuple(shape)  # type: ignore[arg-type]


def _weight_columns(
    weight: Tensor, rows: slice, cols: slice, binary: bool, dtype: torch.dtype
) -> Tensor:
    """Block ``W_b[rows, cols]`` of a dense layer (``cols.start`` a multiple of 8 if packed)."""
    if weight.dtype == torch.uint8:
        packed = weight[rows, cols.start // 8 : (cols.stop + 7) // 8]
        return bits_to_signs(packed, cols.stop - cols.start, dtype)
    return _weight_operand(weight[rows, cols], binary, dtype)


def _sign_by_sign(kind: str, binary_weight: bool) -> bool:
    return kind == InputKind.BINARY and binary_weight


def _compute_dtype(kind: str, binary_weight: bool) -> torch.dtype:
    """+-1 x +-1 products: :func:`core.kernels.binary_product_dtype` (bf16 or fp32, both exact)."""
    return binary_product_dtype() if _sign_by_sign(kind, binary_weight) else torch.float32


def _output_dtype(kind: str, binary_weight: bool) -> torch.dtype:
    """Pre-BN output dtype: bf16 for +-1 x +-1 products (whatever kernel ran them), else fp16.

    A binary layer's output ``Y`` holds integers (exact in bf16 up to 256, even ones up to 512),
    and its gradient ``dY`` is rounded to bf16 for the bf16 products anyway; handing both over
    in bf16 saves a converted copy of ``dY`` in every binary layer's backward.
    """
    return torch.bfloat16 if _sign_by_sign(kind, binary_weight) else torch.float16


def _kernel_itemsize(kind: str, binary_weight: bool) -> int:
    """4 where float32 kernels compute a layer's 16-bit-operand products, else 2 (slice sizing)."""
    wider = _compute_dtype(kind, binary_weight) != _operand_dtype(kind, binary_weight)
    return 4 if wider else 2


def _operand_dtype(kind: str, binary_weight: bool) -> torch.dtype:
    """Dtype of a layer's product operands and results: bf16 for +-1 x +-1, else float32."""
    return torch.bfloat16 if _sign_by_sign(kind, binary_weight) else torch.float32


def _widened_rows(n: int, per_row: int, dtype: torch.dtype, *, parts: int) -> int:
    """Rows per slice of an ``n x per_row`` operand widened to ``dtype`` (float32 kernels).

    The slice holds no more bytes than :func:`_slices` plans for it, and at most ``1 / parts``
    of the rows, so a small operand's widened copy stays below the 16-bit path's transient.
    """
    return min(_slices(n, per_row, itemsize=dtype.itemsize)[0].stop, max(1, -(-n // parts)))


def _product(a: Tensor, b: Tensor, compute: torch.dtype) -> Tensor:
    """Return ``a @ b`` in ``a``'s dtype, computed by a ``compute`` kernel.

    When ``compute`` is wider than ``a`` (float32 kernels for bf16 operands, :mod:`core.kernels`),
    rows of ``a`` are widened slice by slice and each result is rounded once to ``a``'s dtype:
    exactly what a bf16 kernel (float32 accumulation, one rounding) returns.
    """
    if a.dtype == compute:
        return a @ b
    out = torch.empty(a.shape[0], b.shape[1], dtype=a.dtype)
    n = a.shape[0]  # widened rows: at most a quarter of a (the bf16 kernel widens nothing)
    rows = _widened_rows(n, a.shape[1], compute, parts=4)
    for i in range(0, n, rows):
        out[i : i + rows] = a[i : i + rows].to(compute) @ b
    return out


def _rounded_like_bf16_kernel(t: Tensor, kind: str, binary_weight: bool) -> Tensor:
    """Round a float32 +-1 x +-1 product as a bf16 kernel rounds its output (to bf16).

    With float32 products (:mod:`core.kernels`), this makes the result the same as the
    bf16 kernel's (both accumulate the exact products in float32 and round once), so the
    kernel choice changes speed, not the trained model.
    """
    if t.dtype != torch.bfloat16 and _sign_by_sign(kind, binary_weight):
        return t.to(torch.bfloat16)
    return t


def _store_weight_grad(grad_bits: Tensor, rows: slice, g: Tensor) -> None:
    """Write ``sign(G)`` rows (``G >= 0`` <=> +1, docs/method.md §2b) into the packed buffer."""
    grad_bits[rows] = pack_bits((g >= 0).view(g.shape[0], -1))  # (r, fan_in) -> (r, fan_in/8)


# --- forward computations (shared with the layers' no-grad path) -----------------------------


def linear_forward(
    x: Tensor,
    weight: Tensor,
    kind: str,
    binary_weight: bool,
    weight_shape: tuple[int, ...] | None = None,
) -> Tensor:
    """``Y = X . W_b^T`` in slices of output rows: ``(B, in) -> (B, out)``.

    A uint8 batch (image codes ``k``, ``x = k / 127.5 - 1``) never becomes a float copy: with
    binary weights it goes through :func:`_codes_times_signs` (exact integer products), else
    batch slices are scaled on the fly. ``weight`` may be packed sign bits (uint8 ``(out,
    ceil(in/8))``, ``lowcost-bop``); ``weight_shape`` then gives ``(out, in)``, and each row slice
    is unpacked to ``+-1`` on the fly.
    """
    cdt = _compute_dtype(kind, binary_weight)
    out_f, in_f = _logical_shape(weight, weight_shape)
    y = torch.empty(x.shape[0], out_f, dtype=_output_dtype(kind, binary_weight))
    if x.dtype == torch.uint8:
        if binary_weight and x.device.type == "cpu":
            return _codes_times_signs(x, weight, y, in_f)
        batch = _slices(x.shape[0], in_f)
        for r in _slices(out_f, in_f):
            w = _weight_operand(weight[r], binary_weight, cdt, weight_shape)  # (r, in)
            for s in batch:
                y[s, r] = load_data(x[s], cdt) @ w.T  # (b, r)
        return y
    if cdt.itemsize <= x.dtype.itemsize:  # a 16-bit copy of the batch: +-1 exact in bf16
        xc = x.to(cdt)  # (B, in)
        for r in _slices(out_f, in_f):
            y[:, r] = xc @ _weight_operand(weight[r], binary_weight, cdt, weight_shape).T
        return y
    # float32 products: batch slices no larger than the 16-bit copy above would be (half the
    # batch at most), so small batches keep the transient of the bf16 path
    b = x.shape[0]
    rows = _widened_rows(b, in_f, cdt, parts=2)
    batch = [slice(i, min(i + rows, b)) for i in range(0, b, rows)]
    for r in _slices(out_f, in_f, itemsize=cdt.itemsize):
        w = _weight_operand(weight[r], binary_weight, cdt, weight_shape)  # (r, in)
        for s in batch:
            y[s, r] = x[s].to(cdt) @ w.T  # (b, r)
    return y


def _codes_times_signs(codes: Tensor, weight: Tensor, y: Tensor, in_f: int) -> Tensor:
    """``Y = X . sign(W)^T`` for image codes ``k`` (``X = k / 127.5 - 1``) in integer arithmetic.

    With ``c = k - 128`` (int8: ``k XOR 0x80`` read as signed) and ``s = sign(W)`` (int8),
    ``X = (c + 0.5) / 127.5``, so::

        Y = (c . s^T + 0.5 * sum_j s_ij) / 127.5

    ``c . s^T`` is an exact int8 x int8 -> int32 product (``torch._int_mm``), so ``Y`` carries a
    single float32 rounding (the float32 path carries one per product and sum; both then round to
    the fp16 output, which agrees up to one fp16 ulp). Transients: the int8 codes (1 B/value, as
    the uint8 batch) and int8/int32 slices of output rows; no float copy of the batch.
    ``weight`` may be packed sign bits (``lowcost-bop``; ``in_f`` values per row).
    """
    out_f = weight.shape[0]
    centred = (codes ^ 0x80).view(torch.int8)  # (B, in): k - 128 in [-128, 127]
    for r in _slices(out_f, in_f):
        if weight.dtype == torch.uint8:  # packed rows -> (r, in) +-1 by table lookup
            s = bits_to_signs(weight[r], in_f, torch.int8).contiguous()
        else:
            s = (weight[r] >= 0).to(torch.int8).mul_(2).sub_(1)  # (r, in) +-1
        acc = torch._int_mm(centred, s.T)  # (B, r) int32, exact
        offset = s.sum(1, dtype=torch.int32).float().mul_(0.5)  # (r,)
        y[:, r] = acc.float().add_(offset).div_(127.5)
    return y


def conv2d_forward(
    x: Tensor,
    weight: Tensor,
    stride: int,
    padding: int,
    kind: str,
    binary_weight: bool,
    weight_shape: tuple[int, ...] | None = None,
) -> Tensor:
    """``Y = conv2d(X, W_b)`` in batch slices: ``(B, C_in, H, W) -> (B, C_out, H', W')``.

    Packed sign-bit weights (uint8 ``(C_out, ceil(C_in k k / 8))``, ``lowcost-bop``) need
    ``weight_shape`` ``(C_out, C_in, k, k)``; they are unpacked once per call.
    """
    cdt = _compute_dtype(kind, binary_weight)
    shape = _logical_shape(weight, weight_shape)
    w = _weight_operand(weight, binary_weight, cdt, shape)
    b = x.shape[0]
    h_out = (x.shape[2] + 2 * padding - shape[2]) // stride + 1
    w_out = (x.shape[3] + 2 * padding - shape[3]) // stride + 1
    y = torch.empty(b, shape[0], h_out, w_out, dtype=_output_dtype(kind, binary_weight))
    per = max(x[0].numel(), y[0].numel())
    for s in _slices(b, per, itemsize=_kernel_itemsize(kind, binary_weight)):  # uint8: scaled
        y[s] = F.conv2d(load_data(x[s], cdt), w, stride=stride, padding=padding)
    return y


# --- sign activation ---------------------------------------------------------------------------


class SignSTEFn(Function):
    """``q(x) = sign(x)`` (sign(0)=+1); ``dq/dx = 1[|x| <= 1]`` (BinaryNet STE, docs/method.md §2c).

    Saves the 1-bit mask only (the standard detach trick keeps the float input).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # noqa: D102
        b, n = x.shape[0], x[0].numel()
        out = torch.empty_like(x)
        mask = torch.empty(b, packed_size(n), dtype=torch.uint8)
        for s in _slices(b, n):
            out[s] = binary_sign(x[s])
            mask[s] = pack_bits(abs_at_most_one(x[s]).view(s.stop - s.start, n))
        ctx.save_for_backward(mask)  # 1 bit per element
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # noqa: D102
        (mask,) = ctx.saved_tensors
        b, n = grad.shape[0], grad[0].numel()
        gx = torch.empty_like(grad)
        for s in _slices(b, n):  # mask as 0/1 of grad's dtype: a same-dtype (vectorized) product
            torch.mul(grad[s], unpack_bits(mask[s], n, grad.dtype).view(grad[s].shape), out=gx[s])
        return gx


# --- binary weight layers ----------------------------------------------------------------------


class BinaryLinearFn(Function):
    """``Y = X . sign(W)^T`` with a 1-bit saved input and a 1-bit ``dW`` (docs/method.md §2b).

    Backward, given ``dY`` (quantized to PO2 first when ``po2_bias`` is set)::

        dX = dY . sign(W)                 (not computed for the data layer)
        G  = dY^T . sign(X)               (data layer: the real X)
        grad_bits <- pack(G >= 0)         (= sign(G + 1e-16); /sqrt(N), |W|<=1 mask: optimizer)

    Forward builds ``sign(W)`` in slices of output rows; backward works on slices of input
    columns (``dX[:, c]``, ``G[:, c]``), so neither ``sign(W)``, ``G`` nor a float copy of the
    saved input ever exists whole.
    """

    @staticmethod
    def forward(  # noqa: D102
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        grad_bits: Tensor,
        grad_count: Tensor,
        kind: str,
        binary_weight: bool,
        po2_bias: int | None,
        weight_shape: tuple[int, ...] | None = None,
        anchor: Tensor | None = None,
    ) -> Tensor:
        y = linear_forward(x, weight, kind, binary_weight, weight_shape)
        ctx.kind, ctx.binary_weight, ctx.po2_bias = kind, binary_weight, po2_bias
        ctx.in_dtype, ctx.weight_shape = x.dtype, _logical_shape(weight, weight_shape)
        ctx.save_for_backward(_save_input(x, kind), weight, grad_bits, grad_count)
        return y

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        saved, weight, grad_bits, grad_count = ctx.saved_tensors
        cdt = _compute_dtype(ctx.kind, ctx.binary_weight)
        pdt = _operand_dtype(ctx.kind, ctx.binary_weight)  # bf16 for +-1 layers, whatever cdt
        wide = _kernel_itemsize(ctx.kind, ctx.binary_weight)
        out_f, in_f = ctx.weight_shape
        b = gy.shape[0]
        m = float(gy.abs().max()) if ctx.po2_bias is not None else 0.0
        # dY as an operand: a no-op for bf16 layers (dY arrives in bf16); float32 copies
        # (data layer) or PO2-quantized copies in slices of output features otherwise. The
        # slicing follows the operand dtype, so float32 kernels round exactly as bf16 ones.
        floor = _floor_for(pdt)  # float32 blocks (data layer): half as many elements
        rows = [slice(0, out_f)] if pdt == gy.dtype and m == 0.0 else _slices(out_f, b, floor)
        gx = torch.empty(b, in_f, dtype=ctx.in_dtype) if ctx.needs_input_grad[0] else None
        acc = torch.zeros(b, in_f) if gx is not None and len(rows) > 1 else None
        for r in rows:
            g = gy[:, r] if ctx.po2_bias is None else _po2(gy[:, r].float(), ctx.po2_bias, m)
            g = g.to(pdt)  # (B, r)
            for c in _column_slices(r.stop - r.start, in_f, b, floor, itemsize=wide):
                # grad-input: dX[:, c] = dY . W_b[:, c]  (data layer: skipped); columns fall
                # on whole packed bytes, and each dX / G value is one whole reduction
                if gx is not None:
                    w = _weight_columns(weight, r, c, ctx.binary_weight, cdt)  # (r, c)
                    part = _product(g, w, cdt)  # (B, c)
                    if acc is None:
                        gx[:, c] = part
                    else:
                        acc[:, c] += part
                # grad-weight: sign(dY^T . X[:, c]) -> packed columns of grad_bits
                x = _load_columns(saved, ctx.kind, c, cdt)  # (B, c)
                bytes_ = slice(c.start // 8, (c.stop + 7) // 8)
                grad_bits[r, bytes_] = pack_bits(_product(g.T, x, cdt) >= 0)  # (r, c) -> (r, c/8)
        if acc is not None:
            gx.copy_(acc)
        grad_count.add_(1)
        return gx, None, None, None, None, None, None, None, None


class BinaryConv2dFn(Function):
    """``Y = conv2d(X, sign(W))`` with a 1-bit saved input and a 1-bit ``dW`` (docs/method.md §2b).

    Backward per batch slice, given ``dY`` (PO2-quantized first when ``po2_bias`` is set, with
    one scale for the whole tensor)::

        dX  = conv2d_input(dY, sign(W))           (transposed conv; skipped for the data layer)
        G  += conv2d_weight(sign(X), dY)          (float32 accumulator, C_out x C_in x k x k)
        grad_bits <- pack(G >= 0)
    """

    @staticmethod
    def forward(  # noqa: D102
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        grad_bits: Tensor,
        grad_count: Tensor,
        stride: int,
        padding: int,
        kind: str,
        binary_weight: bool,
        po2_bias: int | None,
        weight_shape: tuple[int, ...] | None = None,
        anchor: Tensor | None = None,
    ) -> Tensor:
        y = conv2d_forward(x, weight, stride, padding, kind, binary_weight, weight_shape)
        ctx.geom = (stride, padding, tuple(x.shape[1:]))
        ctx.kind, ctx.binary_weight, ctx.po2_bias = kind, binary_weight, po2_bias
        ctx.in_dtype, ctx.weight_shape = x.dtype, _logical_shape(weight, weight_shape)
        ctx.save_for_backward(_save_input(x, kind), weight, grad_bits, grad_count)
        return y

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        saved, weight, grad_bits, grad_count = ctx.saved_tensors
        stride, padding, in_shape = ctx.geom
        cdt = _compute_dtype(ctx.kind, ctx.binary_weight)
        w = _weight_operand(weight, ctx.binary_weight, cdt, ctx.weight_shape)
        b = gy.shape[0]
        m = _abs_max(gy) if ctx.po2_bias is not None else 0.0
        need_gx = ctx.needs_input_grad[0]
        gx = torch.empty(b, *in_shape, dtype=ctx.in_dtype) if need_gx else None
        acc = torch.zeros(ctx.weight_shape, dtype=torch.float32)  # G, (C_out, C_in, k, k)
        per = max(math.prod(in_shape), gy[0].numel())
        wide = _kernel_itemsize(ctx.kind, ctx.binary_weight)
        for s in _slices(b, per):  # the bf16 kernel's plan: G rounds once per slice either way
            gw_s = None
            for q in _slices(s.stop - s.start, per, itemsize=wide):  # float32 kernels: halves
                q = slice(s.start + q.start, s.start + q.stop)
                g = gy[q]  # (n, C_out, H_out, W_out); bf16 dY of a +-1 layer is used as it is
                if ctx.po2_bias is not None or g.dtype != cdt:
                    g = _po2(g.float(), ctx.po2_bias, m).to(cdt)
                x = _load_input(saved[q], ctx.kind, (q.stop - q.start, *in_shape), cdt)
                gxs, gw, _ = torch.ops.aten.convolution_backward(
                    g, x, w, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1,
                    [need_gx, True, False],
                )  # fmt: skip
                del x, g
                if gx is not None:
                    gx[q] = _rounded_like_bf16_kernel(gxs, ctx.kind, ctx.binary_weight)
                gw_s = gw if gw_s is None else gw_s.add_(gw)
            acc += _rounded_like_bf16_kernel(gw_s, ctx.kind, ctx.binary_weight)
        _store_weight_grad(grad_bits, slice(None), acc)
        grad_count.add_(1)
        return gx, None, None, None, None, None, None, None, None, None, None


# --- l1 batch norm -----------------------------------------------------------------------------


class L1BatchNormFn(Function):
    """l1 batch norm without gamma, with a 1-bit backward (docs/method.md §2d).

    Per channel ``c`` over the ``N = B*H*W`` values of the *actual* batch (§9 item 3)::

        mu = fp16(mean y);  sigma = fp16(mean |y - mu|);  y_hat = (y - mu) / sigma
        out = y_hat + fp16(beta)
        save: sign(y_hat) (1 bit), s = fp16(mean |y_hat|), sigma

    Backward, given ``dout``::

        g = dout / sigma;  dbeta = sum dout
        dy = g - mean(g) - sign(y_hat) * s * mean(g * sign(y_hat))

    A channel that is constant over the batch (sigma on its floor :data:`SIGMA_MIN`) has
    ``y_hat = 0`` for every input, so its ``dy`` is 0.

    Running statistics (PyTorch ``momentum=0.1`` = Keras 0.9) are updated in place in forward.
    """

    @staticmethod
    def forward(  # noqa: D102
        ctx: Any,
        y: Tensor,
        beta: Tensor,
        running_mean: Tensor,
        running_sigma: Tensor,
        momentum: float,
    ) -> Tensor:
        b, c = y.shape[:2]
        yv = y.reshape(b, c, -1)  # (B, C, L) with L = H*W (1 for dense)
        n = b * yv.shape[2]
        slices = _slices(b, yv[0].numel())
        total = torch.zeros(c)
        for s in slices:
            total += yv[s].float().sum((0, 2))
        mu = (total / n).half().float()
        dev = torch.zeros(c)
        for s in slices:
            dev += yv[s].float().sub_(mu[:, None]).abs_().sum((0, 2))
        sigma = (dev / n).clamp_(min=SIGMA_MIN).half().float()
        bits = torch.empty(b, packed_size(yv[0].numel()), dtype=torch.uint8)
        # y_hat and out in place in the fp16 output buffer: y -> fp16 is exact (integers of a
        # binary layer, |y| <= fan_in < 65504; fp16 otherwise); y - mu rounds once and keeps
        # its sign, so sign(y_hat) is exact and out is within ~1 fp16 ulp of the float32 path
        out = yv.to(beta.dtype, copy=True)  # (B, C, L) fp16 activations after BN
        mu16, inv16 = mu.to(beta.dtype)[:, None], (1 / sigma).to(beta.dtype)[:, None]
        for s in slices:
            yh = out[s].sub_(mu16).mul_(inv16)  # (b, C, L)
            bits[s] = pack_bits((yh >= 0).view(s.stop - s.start, -1))
            yh.add_(beta[:, None])
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_((momentum * mu).to(running_mean.dtype))
            running_sigma.mul_(1 - momentum).add_((momentum * sigma).to(running_sigma.dtype))
        # s = mean|y_hat| = mean|y - mu| / sigma = (dev / n) / sigma, exactly, without a pass
        s_hat = (dev / n / sigma).to(beta.dtype)
        ctx.in_dtype = y.dtype
        ctx.save_for_backward(bits, s_hat, sigma.to(beta.dtype))  # 1 bit/elem + 2 scalars/chan
        return out.view(y.shape)

    @staticmethod
    def backward(ctx: Any, gout: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        bits, s_hat, sigma16 = ctx.saved_tensors
        b, c = gout.shape[:2]
        gv = gout.reshape(b, c, -1)  # (B, C, L)
        length = gv[0].numel()
        n = b * gv.shape[2]
        slices = _slices(b, length)
        sum_g, sum_gs = _l1bn_grad_sums(gv, bits, slices)
        sigma = sigma16.float()
        live = (sigma > _SIGMA_FLOOR16).float()  # 0 for constant channels (see SIGMA_MIN)
        inv_sigma = live / sigma  # 0 for constant channels: their dy is exactly 0 below
        mean_g = sum_g * inv_sigma / n  # mean(dout / sigma)
        mean_gs = s_hat.float() * sum_gs * inv_sigma / n  # mean(g * sign(y_hat) * s)
        gy = torch.empty(gv.shape, dtype=ctx.in_dtype)
        low = _low_precision(gout.dtype)
        if low is not None:  # 16-bit arithmetic in place on the unpacked signs: no float copy
            inv16, mean16, neg_gs16 = (v.to(low)[:, None] for v in (inv_sigma, mean_g, -mean_gs))
            for s in slices:  # dy = dout * (1/sigma) - (sign * mean_gs + mean_g)
                t = bits_to_signs(bits[s], length, low).view(gv[s].shape)
                t.mul_(neg_gs16).sub_(mean16).addcmul_(gv[s].to(low), inv16)
                gy[s] = t
        else:
            for s in slices:  # float32 arithmetic on one slice at a time
                sign = bits_to_signs(bits[s], length).view(gv[s].shape).mul_(mean_gs[:, None])
                g = torch.mul(gv[s], inv_sigma[:, None])  # a new float32 slice, gout untouched
                gy[s] = g.sub_(mean_g[:, None]).sub_(sign)
        gbeta = sum_g.to(s_hat.dtype) if ctx.needs_input_grad[1] else None
        return gy.view(gout.shape), gbeta, None, None, None


def _low_precision(dtype: torch.dtype) -> torch.dtype | None:
    """Return the 16-bit dtype the l1 BN backward computes in for ``dtype`` gradients, or None.

    float16 gradients are handled in float16 (11 significant bits, 3 more than the bf16 ``dY``
    most binary layers take); bfloat16 gradients in bfloat16. Each elementwise op still
    computes in float32 internally and rounds once per op.
    """
    return dtype if dtype in (torch.float16, torch.bfloat16) else None


def _l1bn_grad_sums(gv: Tensor, bits: Tensor, slices: list[slice]) -> tuple[Tensor, Tensor]:
    """Per-channel ``sum(g)`` and ``sum(g * sign(y_hat))`` of ``g`` ``(B, C, L)`` (float32).

    16-bit ``g`` is reduced in its own dtype (the kernels accumulate in float32; only the
    per-channel result is rounded to 16 bits), with ``g * sign`` formed in place on the unpacked
    signs (exact: a sign flip), so no float32 copy of ``g`` is made. If a 16-bit sum overflows
    (|sum| > 65504 in float16), the sums are redone in float32 slices.
    """
    c, length = gv.shape[1], gv[0].numel()
    low = _low_precision(gv.dtype)
    if low is not None:
        sum_g, sum_gs = torch.zeros(c), torch.zeros(c)
        for s in slices:  # per slice: the reduction's internal buffers stay slice-sized too
            sum_g += gv[s].sum((0, 2))
            t = bits_to_signs(bits[s], length, low).view(gv[s].shape).mul_(gv[s])
            sum_gs += t.sum((0, 2))
        if bool(torch.isfinite(sum_g).all()) and bool(torch.isfinite(sum_gs).all()):
            return sum_g, sum_gs
    sum_g, sum_gs = torch.zeros(c), torch.zeros(c)
    for s in slices:
        g = gv[s].float()  # (may be gout itself when it is float32: not modified below)
        sum_g += g.sum((0, 2))
        sum_gs += bits_to_signs(bits[s], length).view(g.shape).mul_(g).sum((0, 2))
    return sum_g, sum_gs


# --- pooling and ReLU --------------------------------------------------------------------------


class MaxPool2dFn(Function):
    """Max pooling that keeps only each output's argmax position inside its window.

    The local index ``(dh * k + dw)`` is stored as ``ceil(log2 k^2)`` packed bit-planes (2 bits
    per output for 2x2 pools = 0.5 bit per input; 4 bits for the 3x3/s2 ResNet stem pool = 1 bit
    per input), the 1-bit argmax state of docs/method.md §2a; backward scatters ``dY`` there.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, kernel: int, stride: int, padding: int) -> Tensor:  # noqa: D102
        b, c, h, w = x.shape
        h_out = (h + 2 * padding - kernel) // stride + 1
        w_out = (w + 2 * padding - kernel) // stride + 1
        planes = max(1, math.ceil(math.log2(kernel * kernel)))
        n_out = c * h_out * w_out
        out = torch.empty(b, c, h_out, w_out, dtype=x.dtype)
        codes = torch.empty(b, planes, packed_size(n_out), dtype=torch.uint8)
        h0 = (torch.arange(h_out) * stride - padding).view(h_out, 1)  # window origins
        w0 = (torch.arange(w_out) * stride - padding).view(1, w_out)
        for s in _slices(b, x[0].numel() * 2):
            o, idx = F.max_pool2d(x[s], kernel, stride, padding, return_indices=True)
            out[s] = o
            local = (idx // w - h0) * kernel + (idx % w - w0)  # (n, C, H_out, W_out) in [0, k^2)
            local = local.view(s.stop - s.start, n_out)
            for p in range(planes):
                codes[s, p] = pack_bits((local >> p) & 1)
        ctx.geom = (kernel, stride, padding, (c, h, w))
        ctx.save_for_backward(codes)
        return out

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        (codes,) = ctx.saved_tensors
        kernel, stride, padding, (c, h, w) = ctx.geom
        b, _, h_out, w_out = gy.shape
        n_out = c * h_out * w_out
        h0 = (torch.arange(h_out) * stride - padding).view(h_out, 1)
        w0 = (torch.arange(w_out) * stride - padding).view(1, w_out)
        gx = torch.empty(b, c, h, w, dtype=gy.dtype)
        for s in _slices(b, c * h * w * 2):
            n = s.stop - s.start
            local = torch.zeros(n, n_out, dtype=torch.int64)
            for p in range(codes.shape[1]):
                local |= unpack_bits(codes[s, p], n_out).long() << p
            local = local.view(n, c, h_out, w_out)
            flat = (h0 + local // kernel) * w + (w0 + local % kernel)  # input position
            acc = torch.zeros(n, c, h * w)
            acc.scatter_add_(2, flat.view(n, c, -1), gy[s].float().view(n, c, -1))
            gx[s] = acc.view(n, c, h, w)
        return gx, None, None, None


class ReLUFn(Function):
    """``relu(x)`` saving the 1-bit mask ``x > 0``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # noqa: D102
        b, n = x.shape[0], x[0].numel()
        mask = torch.empty(b, packed_size(n), dtype=torch.uint8)
        for s in _slices(b, n):
            mask[s] = pack_bits((x[s] > 0).view(s.stop - s.start, n))
        ctx.save_for_backward(mask)
        return torch.relu(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # noqa: D102
        (mask,) = ctx.saved_tensors
        b, n = grad.shape[0], grad[0].numel()
        gx = torch.empty_like(grad)
        for s in _slices(b, n):
            torch.mul(grad[s], unpack_bits(mask[s], n).view(grad[s].shape), out=gx[s])
        return gx


class AvgPool2dFn(Function):
    """Non-overlapping ``k x k`` average pooling (ResNetE shortcut) that saves nothing.

    Stock ``avg_pool2d`` keeps its float input for backward; the gradient only needs the shape:
    ``dX[h, w] = dY[h // k, w // k] / k^2`` (zero for rows/columns the floor mode dropped).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, kernel: int) -> Tensor:  # noqa: D102
        ctx.geom = (kernel, tuple(x.shape))
        return F.avg_pool2d(x, kernel)

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        k, shape = ctx.geom
        gx = torch.zeros(shape, dtype=gy.dtype)
        up = (gy / (k * k)).repeat_interleave(k, 2).repeat_interleave(k, 3)
        gx[:, :, : up.shape[2], : up.shape[3]] = up
        return gx, None


class ScaledCastFn(Function):
    """Cast fp16 logits to float32; multiply the gradient by ``scale`` on the way back.

    The low-cost model's last op: the loss sees float32 logits, the network sees its gradient
    scaled into fp16's normal range (see :data:`core.recipes.LOWCOST_GRAD_SCALE`).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:  # noqa: D102
        ctx.scale, ctx.in_dtype = scale, x.dtype
        return x.float()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return (grad * ctx.scale).to(ctx.in_dtype), None
