"""Named training recipes: the paper's float32 baseline and its low-memory method.

A :class:`Recipe` fixes every precision choice of one way of training (docs/method.md §1a, §2g);
:func:`from_recipe` turns a config name into one. Layers, models and the optimizer read it; no
other code compares recipe strings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.names import RecipeName  # the enum of recipe names lives with the other names

__all__ = ["RecipeName", "Recipe", "from_recipe", "LOWCOST_GRAD_SCALE"]

# Internal gradient scale of the low-cost recipes: the model's output cast multiplies the
# incoming loss gradient by it, so fp16 activation gradients (~1e-5 at batch 100 after the BN
# backward divides by sigma ~ sqrt(fan_in)) sit in fp16's normal range instead of its
# subnormals. Sign-of-gradient updates are scale-free; the optimizer divides dense gradients
# (BN beta, biases) by it again.
LOWCOST_GRAD_SCALE = 1024.0


@dataclass(frozen=True)
class Recipe:
    """Precision and algorithm choices of one recipe.

    Attributes
    ----------
    name : RecipeName
        Which recipe this is.
    lowcost : bool
        Use the 1-bit-saving autograd Functions, l1 BN and the packed-gradient optimizer
        (docs/method.md §2g items 1-5) instead of stock autograd (§1a).
    weight_dtype : torch.dtype
        Storage dtype of latent weights and BN parameters/statistics.
    act_dtype : torch.dtype
        Dtype of activations between layers, hence of activation gradients (autograd hands a
        Function gradients in its output's dtype).
    po2_bias : int or None
        ``b_off`` of the 5-bit power-of-two gradient quantizer (docs/method.md §2e); None = off.
    grad_scale : float
        Internal loss-gradient scale (see ``LOWCOST_GRAD_SCALE``); 1 for stock training.
    packed_weights : bool
        Latent-free training (``lowcost-bop``): binary-weight layers keep only their packed
        signs (1 bit per weight) and are trained by Bop (Helwegen et al., arXiv 1906.02107;
        :mod:`core.bop`); full-precision layers and BN keep fp16 weights and LowCostAdam.
    """

    name: RecipeName
    lowcost: bool
    weight_dtype: torch.dtype
    act_dtype: torch.dtype
    po2_bias: int | None = None
    grad_scale: float = 1.0
    packed_weights: bool = False

    def short_str(self) -> str:
        """``lowcost-po2(b=6)``-style label for reprs and logs."""
        bias = "" if self.po2_bias is None else f"(b={self.po2_bias})"
        return f"{self.name.value}{bias}"


def from_recipe(name: str | RecipeName | Recipe, *, po2_bias: int = 8) -> Recipe:
    """Build the :class:`Recipe` called ``name`` (``standard``, ``lowcost``, ``lowcost-po2``, ...).

    ``lowcost-bop`` is ``lowcost`` with ``packed_weights`` (latent-free binary layers, Bop).

    Parameters
    ----------
    name : str, RecipeName or Recipe
        Recipe name; a :class:`Recipe` is returned unchanged.
    po2_bias : int
        ``b_off`` for ``lowcost-po2`` (the authors found 6 better than 8 for CNV); in [0, 16].
    """
    if isinstance(name, Recipe):
        return name
    try:
        key = RecipeName(name)
    except ValueError:
        allowed = ", ".join(r.value for r in RecipeName)
        raise ValueError(f"unknown recipe {name!r}; choose one of {allowed}") from None
    if not 0 <= po2_bias <= 16:
        raise ValueError(f"po2_bias must be in [0, 16], got {po2_bias}")
    if key is RecipeName.STANDARD:
        return Recipe(key, lowcost=False, weight_dtype=torch.float32, act_dtype=torch.float32)
    return Recipe(
        key,
        lowcost=True,
        weight_dtype=torch.float16,
        act_dtype=torch.float16,
        po2_bias=po2_bias if key is RecipeName.LOWCOST_PO2 else None,
        grad_scale=LOWCOST_GRAD_SCALE,
        packed_weights=key is RecipeName.LOWCOST_BOP,
    )
