"""Which modules count as Linear layers: ``nn.Linear`` and the *Linear-like* modules registered or declared here.

A Linear-like module computes ``y = x W^T + b`` on the last dimension of its input, like ``nn.Linear``, but may
store its weight differently. :func:`smoothcompress.compress` replaces an eligible one by a
:class:`~smoothcompress.factorized.FactorizedLinear` computing the same function, :class:`smoothcompress.Smoothness`
penalises its weight read as ``(out, in)``, and :func:`smoothcompress.calibrate` records its inputs.

Registered out of the box:

* ``nn.Linear`` and ``torch.nn.modules.linear.NonDynamicallyQuantizableLinear`` (a plain Linear subclass; inside
  ``nn.MultiheadAttention``, whose forward reads ``out_proj.weight`` directly, compression skips it);
* ``transformers.pytorch_utils.Conv1D`` (GPT-2, GPT, ...): weight stored transposed, ``(in, out)``, so
  ``y = x W + b``. Registered by qualified class name, so ``transformers`` is never imported here.

Two ways to make another module Linear-like, both taking a :class:`LinearSpec`:

* ``register_linear_like(MyProj, transposed=True)`` (or a ``"package.module.ClassName"`` string, matched without
  importing the package);
* a class attribute on your own module: ``class MyProj(nn.Module): sc_linear = LinearSpec(transposed=True)``.

Matching is by exact class (a registered class's subclasses may change ``forward`` and must be registered
themselves); the class attribute is inherited like any attribute. Other ``nn.Linear`` subclasses are penalised by
:class:`~smoothcompress.Smoothness` and calibrated, but not factorized.

Two questions every compression method asks of a whole model are answered here too, so that all answer them alike:
which submodules are *weight layers* (:func:`is_weight_layer`: what a compression report lists, an embedding table
included) and which weights are *tied*, owned by more than one module path (:func:`tied_weights`, e.g. GPT-2's
``lm_head`` and ``transformer.wte``): compressing or pruning one owner would change the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "LinearSpec",
    "register_linear_like",
    "linear_spec",
    "is_linear_like",
    "is_linear",
    "linear_weight",
    "linear_bias",
    "layer_weight",
    "is_weight_layer",
    "tied_weights",
]


@dataclass(frozen=True)
class LinearSpec:
    """How a Linear-like module stores its parameters.

    Attributes
    ----------
    transposed : bool
        The weight parameter is stored ``(in, out)`` and the module computes ``x @ W + b`` (``Conv1D``); ``False``:
        stored ``(out, in)`` like ``nn.Linear``.
    weight : str
        Attribute name of the 2-D weight parameter.
    bias : str or None
        Attribute name of the bias ``(out,)`` (the attribute may hold ``None``); ``None``: the module has no bias.
    """

    transposed: bool = False
    weight: str = "weight"
    bias: str | None = "bias"


SPEC_ATTR = "sc_linear"
"""Class attribute by which a module declares itself Linear-like (a :class:`LinearSpec`)."""

_REGISTRY: dict[type | str, LinearSpec] = {
    nn.Linear: LinearSpec(),
    "torch.nn.modules.linear.NonDynamicallyQuantizableLinear": LinearSpec(),
    "transformers.pytorch_utils.Conv1D": LinearSpec(transposed=True),
}


_BY_CLASS: dict[type, LinearSpec | None] = {}
"""Lookups of :func:`linear_spec` by class (it runs on every module at every training step of a penalty)."""


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_linear_like(
    cls: type[nn.Module] | str, *, transposed: bool = False, weight: str = "weight", bias: str | None = "bias"
) -> LinearSpec:
    """Declare the module class ``cls`` Linear-like: it computes ``y = x W^T + b`` on the last dimension.

    Parameters
    ----------
    cls : nn.Module subclass or str
        The class, or its qualified name ``"package.module.ClassName"`` (matched without importing the package).
        Only this exact class matches, not its subclasses.
    transposed, weight, bias
        See :class:`LinearSpec`.

    Returns
    -------
    LinearSpec
        The registered spec (registering a class again replaces its spec).
    """
    if isinstance(cls, type):
        if not issubclass(cls, nn.Module):
            raise ValueError(f"register_linear_like needs an nn.Module subclass, got {cls!r}")
        key: type | str = cls
    elif isinstance(cls, str) and "." in cls:
        key = cls
    else:
        raise ValueError(f"register_linear_like needs a class or a 'package.module.ClassName' string, got {cls!r}")
    spec = LinearSpec(bool(transposed), weight, bias)
    _REGISTRY[key] = spec
    _BY_CLASS.clear()
    return spec


def linear_spec(module: nn.Module) -> LinearSpec | None:
    """The :class:`LinearSpec` of ``module`` if it is ``nn.Linear`` or Linear-like, else ``None``."""
    cls = type(module)
    try:
        return _BY_CLASS[cls]
    except KeyError:
        pass
    declared = getattr(cls, SPEC_ATTR, None)
    if isinstance(declared, LinearSpec):
        spec = declared
    else:
        spec = _REGISTRY.get(cls)
        spec = spec if spec is not None else _REGISTRY.get(_qualname(cls))
    _BY_CLASS[cls] = spec
    return spec


def is_linear_like(module: nn.Module) -> bool:
    """Whether ``module`` is ``nn.Linear`` or Linear-like (registered or declared), with a 2-D weight tensor."""
    spec = linear_spec(module)
    if spec is None:
        return False
    w = getattr(module, spec.weight, None)
    return isinstance(w, torch.Tensor) and w.dim() == 2


def is_linear(module: nn.Module) -> bool:
    """Whether ``module`` computes ``y = x W^T + b`` on its input's last dimension with a 2-D weight: Linear-like
    (:func:`is_linear_like`) or any subclass of ``nn.Linear`` whose weight is materialized.

    The one definition for what reads or zeroes a Linear weight in place (the penalties, calibration, magnitude
    pruning). :func:`smoothcompress.compress` replaces only :func:`is_linear_like` modules: an unregistered subclass
    may override ``forward``, which a factorized replacement would lose.
    """
    if is_linear_like(module):
        return True
    if not isinstance(module, nn.Linear):
        return False
    w = getattr(module, "weight", None)
    return isinstance(w, torch.Tensor) and not isinstance(w, nn.parameter.UninitializedParameter) and w.dim() == 2


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight of a Linear-like ``module`` as ``(out, in)``: the parameter itself, or its transposed view
    (differentiable; writing to it writes the parameter)."""
    spec = linear_spec(module)
    if spec is None:
        raise ValueError(f"{type(module).__name__} is not a Linear-like layer; see register_linear_like")
    w = getattr(module, spec.weight)
    return w.T if spec.transposed else w


def linear_bias(module: nn.Module) -> torch.Tensor | None:
    """The bias ``(out,)`` of a Linear-like ``module``, or ``None``."""
    spec = linear_spec(module)
    if spec is None:
        raise ValueError(f"{type(module).__name__} is not a Linear-like layer; see register_linear_like")
    return getattr(module, spec.bias, None) if spec.bias else None


def layer_weight(module: nn.Module) -> torch.Tensor:
    """A layer's weight as the library reads it: ``(out, in)`` for a Linear-like module (see
    :func:`linear_weight`), else ``module.weight`` (a Conv2d's ``(C_out, C_in/groups, kh, kw)``)."""
    return linear_weight(module) if linear_spec(module) is not None else module.weight


def is_weight_layer(name: str, module: nn.Module) -> bool:
    """Whether ``module``, at path ``name`` of a model, is a weight layer: a submodule (``name`` not empty, the root
    never is) that owns a ``weight`` tensor of 2 or more dims (Conv, Linear, Embedding, ...), is Linear-like, or is
    an ``nn.MultiheadAttention`` (its packed projections). This is the set a compression report lists; each method
    then says which of them it changes and why it leaves the others alone."""
    w = getattr(module, "weight", None)
    return bool(name) and (
        (isinstance(w, torch.Tensor) and w.dim() >= 2)
        or is_linear_like(module)
        or isinstance(module, nn.MultiheadAttention)
    )


def tied_weights(model: nn.Module) -> dict[str, list[str]]:
    """The modules of ``model`` whose weight another module path also owns, and those other paths.

    Parameters
    ----------
    model : nn.Module
        Any model; not modified. A module reached by two paths (one instance registered twice) counts as tied
        to itself under the other path.

    Returns
    -------
    dict of str to list of str
        ``{module path: [the other paths owning its weight, in module order]}``, for every module whose weight
        (the :class:`LinearSpec` weight of a Linear-like module, else ``module.weight``) is a parameter that more
        than one module path owns, under any parameter name. Example: a ``GPT2LMHeadModel`` gives
        ``{"transformer.wte": ["lm_head"], "lm_head": ["transformer.wte"]}``. Modules with untied weights are
        absent.
    """
    owners: dict[int, list[str]] = {}
    modules = list(model.named_modules(remove_duplicate=False))
    for name, m in modules:
        for p in m._parameters.values():
            if p is not None:
                owners.setdefault(id(p), []).append(name)
    tied: dict[str, list[str]] = {}
    for name, m in modules:
        spec = linear_spec(m)
        w = m._parameters.get(spec.weight if spec is not None else "weight")
        others = [o for o in owners.get(id(w), []) if o != name] if w is not None else []
        if others:
            tied[name] = others
    return tied
