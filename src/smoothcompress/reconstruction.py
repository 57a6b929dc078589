"""Propagation-aware reconstruction: re-solve each factorized layer against the dense model, in forward order.

Truncating every layer on its own (:func:`smoothcompress.compress`) lets errors add up through the network: each
layer is fitted to the inputs the *dense* model would give it, while the compressed model gives it the outputs of
already-truncated layers. :func:`reconstruct` solves the factorized layers of a compressed model one by one, in
the order the forward pass reaches them, each in closed form and with no gradient step:

* ``x`` is the layer's input in the dense model and ``x'`` its input in the compressed model, whose upstream
  layers are already solved (so the errors they leave are what this layer sees);
* the target is the dense layer's output on the dense input, ``y = W x + b``;
* the layer becomes ``argmin over rank-r M and bias c of E ||W x + b - (M x' + c)||^2``, with ``r`` the rank the
  compression chose. With the moments ``C' = Cov(x')`` and ``K = Cov(x, x')`` this is the least-squares solution
  ``M* = (W K + lam W) (C' + lam I)^-1``, truncated to rank ``r`` in the metric of ``C' + lam I`` (which gives the
  best rank-``r`` ``M``; :func:`smoothcompress.factorized.factorize_weight` with ``moment``), and
  ``c = W E[x] + b - M E[x']``.

The ridge ``lam = damping * mean(diag C')`` pulls ``M`` towards the dense ``W`` in directions the calibration
inputs do not excite, so a layer whose input is exact (``x' = x``) keeps ``W`` at full rank: reconstruction at
full rank is exact. The bias ``c`` goes into the factorized layer's bias; a layer without bias whose output feeds a
BatchNorm alone has the offset folded into that BatchNorm's running mean (no parameter is added); any other layer
without bias is solved without one (uncentered moments).

A CP or Tucker layer (:mod:`smoothcompress.tensorfactor`) ends in a ``1 x 1`` conv ``second`` of shape
(C_out, r). Its other factors have no closed-form solve, so they stay as fitted, and only the last factor is
re-solved: with ``z`` the input of ``second`` in the compressed model (``r`` channels at the layer's output
positions), ``B = argmin E ||W x + b - (B z + c)||^2 + lam ||B - B_0||^2``, that is
``B* = (W K_z + lam B_0) (C_z + lam I)^-1`` with ``C_z = Cov(z)``, ``K_z = Cov(x, z)`` and ``B_0`` the fitted
factor, and ``c`` as above. Each output channel is an unconstrained least-squares problem, so the solve never
increases the layer's output error on the calibration inputs (the ridge pulls towards the fit, not away from it).

Moments are accumulated batch by batch in float64 from the same randomly chosen input positions (conv patches
or rows) of both models, never storing whole activations: one pass of the dense model keeps each layer's sampled
input vectors (``samples * d`` floats per layer), then each layer costs one pass of the compressed model over the
calibration inputs, stopped at that layer. Layers of the spatial scheme, layers called more than once per forward
pass and layers the calibration inputs never reach are left as compressed, with a note.

Calibration data is training data (:func:`smoothcompress.calibration.calibration_batches`); the dense model is
not modified.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from smoothcompress.batchnorm import trace_bn_pairs
from smoothcompress.calibration import (
    CALIBRATION_IMAGES,
    DAMPING,
    CalibrationData,
    calibration_batches,
    input_dim,
    sample_patches,
    warn_short_layers,
)
from smoothcompress.errors import ConfigError, first_line
from smoothcompress.factorized import Factorized, FactorizedConv2d, FactorizedLinear, factorize_weight
from smoothcompress.inputs import ExampleInput, as_batch
from smoothcompress.layers import layer_weight, linear_bias
from smoothcompress.tensorfactor import CPConv2d, TuckerConv2d

__all__ = ["Reconstruction", "reconstruct", "MIN_SAMPLES", "SAMPLES_PER_DIM"]

# Input vectors sampled per layer: at least MIN_SAMPLES, and SAMPLES_PER_DIM per input dimension d, so that the
# (d, d) moments are estimated from several times d vectors (the cost of a layer is d**2 per vector).
MIN_SAMPLES = 8192
SAMPLES_PER_DIM = 2

_TENSOR_LAYERS = (CPConv2d, TuckerConv2d)  # layers whose last factor alone is re-solved


@dataclass
class Reconstruction:
    """What :func:`reconstruct` did.

    Attributes
    ----------
    layers : dict of str to dict
        Layer name -> ``{"rank", "samples", "solved", "error_before", "error_after", "bias"}``: what was solved
        (``"layer"``, or ``"last factor"`` of a CP or Tucker layer), the relative output error
        ``E||y - y_hat||^2 / E||y - E y||^2`` on the calibration inputs before and after the solve (both with
        the best bias, inputs from the already-solved upstream layers), and where the bias went (``"layer"``,
        ``"batchnorm:<name>"`` or ``"none"``).
    skipped : dict of str to str
        Layer name -> why it was left as compressed.
    order : list of str
        The solved layers, in the order they were solved (the forward order).
    images : int
        Calibration inputs per layer.
    seconds : float
        Wall time.
    damping : float
        The relative ridge (see the module docstring).
    """

    layers: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0
    damping: float = DAMPING

    def summary(self) -> dict:
        """JSON-able summary for a compression record: counts, mean errors, images, damping, seconds."""
        before = [v["error_before"] for v in self.layers.values()]
        after = [v["error_after"] for v in self.layers.values()]
        return {
            "layers": len(self.layers),
            "skipped": dict(self.skipped),
            "mean_error_before": sum(before) / len(before) if before else None,
            "mean_error_after": sum(after) / len(after) if after else None,
            "images": self.images,
            "damping": self.damping,
            "seconds": round(self.seconds, 3),
        }


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer being solved has seen its input."""


class _Moments:
    """Running float64 sums over paired vectors ``x`` (dense input, ``d`` dims) and ``x'`` (``d'`` dims: the
    compressed layer's input, or a tensor layer's input to its last factor), kept on ``device``: the compressed
    layer's, where its solve runs."""

    def __init__(self, d: int, dp: int, device: torch.device):
        f64 = {"dtype": torch.float64, "device": device}
        self.xx, self.xpxp, self.xxp = torch.zeros(d, d, **f64), torch.zeros(dp, dp, **f64), torch.zeros(d, dp, **f64)
        self.x, self.xp = torch.zeros(d, **f64), torch.zeros(dp, **f64)
        self.n = 0

    def add(self, x: torch.Tensor, xp: torch.Tensor) -> None:
        """Add paired vectors ``x`` (k, d) and ``xp`` (k, d'), from any device: products of one batch in float32,
        sums in float64."""
        device = self.xx.device
        x, xp = x.to(device, torch.float32), xp.to(device, torch.float32)
        for total, prod in ((self.xx, x.T @ x), (self.xpxp, xp.T @ xp), (self.xxp, x.T @ xp)):
            total += prod.double()
        self.x += x.sum(0).double()
        self.xp += xp.sum(0).double()
        self.n += x.shape[0]

    def get(self, centered: bool) -> tuple[torch.Tensor, ...]:
        """``(C_xx, C_x'x', C_xx', mean x, mean x')``: second moments, or covariances when ``centered``."""
        n = max(self.n, 1)
        mu, mup = self.x / n, self.xp / n
        cxx, cpp, cxp = self.xx / n, self.xpxp / n, self.xxp / n
        if centered:
            cxx = cxx - torch.outer(mu, mu)
            cpp = cpp - torch.outer(mup, mup)
            cxp = cxp - torch.outer(mu, mup)
        return cxx, cpp, cxp, mu, mup


def _vectors(module: nn.Module, x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """``k`` input vectors of ``module`` from its input ``x``: conv patches or rows, chosen by ``gen``."""
    if isinstance(module, nn.Conv2d):
        return sample_patches(module, x, k, gen)
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] > k:
        rows = rows[torch.randperm(rows.shape[0], generator=gen)[:k].to(rows.device)]
    return rows


def _capture(module: nn.Module, store: list) -> torch.utils.hooks.RemovableHandle:
    def hook(_module: nn.Module, args: tuple) -> None:
        store.append(args[0].detach())
        raise _Stop

    return module.register_forward_pre_hook(hook)


def _input_of(model: nn.Module, module: nn.Module, x: ExampleInput) -> torch.Tensor | None:
    """The input ``module`` receives when ``model`` runs on ``x`` (the pass stops there); ``None`` if never."""
    store: list = []
    handle = _capture(module, store)
    try:
        x.run(model)
    except _Stop:
        pass
    finally:
        handle.remove()
    return store[0] if store else None


def _forward_order(model: nn.Module, x: ExampleInput) -> tuple[list[str], dict[str, int]]:
    """Names of ``model``'s Factorized layers in the order one forward pass on ``x`` reaches them, and call counts."""
    calls: dict[str, int] = {}
    order: list[str] = []
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, Factorized):

            def hook(_m, _args, name=name):
                calls[name] = calls.get(name, 0) + 1
                if calls[name] == 1:
                    order.append(name)

            handles.append(m.register_forward_pre_hook(hook))
    try:
        x.run(model)
    finally:
        for h in handles:
            h.remove()
    return order, calls


def _dense_matrix(dense: nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(W, b)`` of a dense layer on ``device``: ``W`` as ``(out, d)`` float64 (a conv's channel matricization),
    ``b`` or None."""
    w = layer_weight(dense).detach().to(device, torch.float64)
    bias = dense.bias if isinstance(dense, nn.Conv2d) else linear_bias(dense)
    return w.reshape(w.shape[0], -1), None if bias is None else bias.detach().to(device, torch.float64)


def _error(w: torch.Tensor, m: torch.Tensor, cxx: torch.Tensor, cpp: torch.Tensor, cxp: torch.Tensor) -> float:
    """``E||W x - M x'||^2 / E||W x||^2`` from (centered) moments, ``W`` (out, d), ``M`` (out, d'), ``C_xx`` (d, d),
    ``C_x'x'`` (d', d'), ``C_xx'`` (d, d'); 0 for a layer whose output is constant."""
    target = float(torch.einsum("ij,jk,ik->", w, cxx, w))
    err = target - 2 * float(torch.einsum("ij,jk,ik->", m, cxp.T, w)) + float(torch.einsum("ij,jk,ik->", m, cpp, m))
    return max(err, 0.0) / target if target > 0 else 0.0


def _least_squares(
    w: torch.Tensor, prior: torch.Tensor, cpp: torch.Tensor, cxp: torch.Tensor, damping: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M*, metric)``: ``M* = argmin_M E||W x - M x'||^2 + lam ||M - prior||^2 = (W C_xx' + lam prior) metric^-1``
    with ``metric = C_x'x' + lam I`` and ``lam = damping * mean(diag C_x'x')`` (module docstring)."""
    scale = float(cpp.diagonal().mean())
    lam = damping * (scale if scale > 0 else 1.0)
    metric = cpp + lam * torch.eye(cpp.shape[0], dtype=cpp.dtype, device=cpp.device)
    return torch.linalg.solve(metric, (w @ cxp + lam * prior).T).T, metric


def _solved(
    layer: Factorized, m: torch.Tensor, dense: tuple, moments: tuple, centered: bool, info: dict
) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """``(M, offset, info)`` of a layer now applying ``M`` to its (last factor's) input, given the dense layer's
    ``(W, b)`` (:func:`_dense_matrix`) and the ``moments`` (:meth:`_Moments.get`): the best bias offset
    ``W E[x] + b - M E[x']`` when ``centered`` (else ``None``), and ``info`` with ``rank`` and the error after."""
    w, b = dense
    cxx, cpp, cxp, mu, mup = moments
    offset = w @ mu + (b if b is not None else 0.0) - m @ mup if centered else None
    return m, offset, {"rank": layer.rank, **info, "error_after": _error(w, m, cxx, cpp, cxp)}


def _solve(
    layer: Factorized,
    dense: nn.Module,
    mom: _Moments,
    centered: bool,
    damping: float,
) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Solve one layer (module docstring); write its factors. Returns ``(M_r, offset, errors)``."""
    w, b = _dense_matrix(dense, mom.xx.device)
    moments = mom.get(centered)
    cxx, cpp, cxp, _, _ = moments
    info = {"samples": mom.n, "solved": "layer", "error_before": _error(w, _factorized_matrix(layer), cxx, cpp, cxp)}
    m_star, metric = _least_squares(w, w, cpp, cxp, damping)
    shape = tuple(layer_weight(dense).shape)
    factors = factorize_weight(m_star.reshape(shape), layer.rank, "channel", moment=metric)
    with torch.no_grad():
        layer.first.weight.copy_(factors.first)
        layer.second.weight.copy_(factors.second)
    return _solved(layer, _factorized_matrix(layer), (w, b), moments, centered, info)


def _solve_last_factor(
    layer: CPConv2d | TuckerConv2d,
    dense: nn.Module,
    mom: _Moments,
    centered: bool,
    damping: float,
) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Solve the last ``1 x 1`` factor of a tensor layer (module docstring); write it. Returns ``(B, offset,
    errors)``."""
    w, b = _dense_matrix(dense, mom.xx.device)
    moments = mom.get(centered)
    cxx, czz, cxz, _, _ = moments
    fitted = layer.second.weight.detach()[:, :, 0, 0].to(torch.float64)  # (C_out, r)
    info = {"samples": mom.n, "solved": "last factor", "error_before": _error(w, fitted, cxx, czz, cxz)}
    solved, _ = _least_squares(w, fitted, czz, cxz, damping)  # the ridge pulls towards the fit
    with torch.no_grad():
        layer.second.weight.copy_(solved[:, :, None, None])
    return _solved(layer, solved, (w, b), moments, centered, info)


def _factorized_matrix(layer: Factorized) -> torch.Tensor:
    """The dense ``(out, d)`` matrix a factorized layer applies, float64."""
    w = layer.dense_weight().detach().to(torch.float64)
    return w.reshape(w.shape[0], -1)


def _per_batch(quota: int, batches: list[ExampleInput]) -> list[int]:
    """How many input vectors to take from each batch so that ``quota`` is spread evenly over the images."""
    total, seen, taken, ks = sum(x.batch_size for x in batches), 0, 0, []
    for x in batches:
        seen += x.batch_size
        k = max(1, math.ceil(quota * seen / total) - taken)
        ks.append(k)
        taken += k
    return ks


def _generator(seed: int, layer: int, batch: int) -> torch.Generator:
    """The generator that picks the input positions of one layer in one batch, the same for both models."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + layer * 10_007 + batch)


@torch.no_grad()
def _dense_vectors(
    reference: nn.Module, layers: dict[str, nn.Module], batches: list[ExampleInput], quotas: dict[str, int], seed: int
) -> dict[str, list[torch.Tensor]]:
    """One pass of the dense model: each layer's sampled input vectors per batch, float32 on the CPU.

    Memory: ``sum over layers of quota * d * 4`` bytes.
    """
    index = {name: i for i, name in enumerate(layers)}
    ks = {name: _per_batch(quotas[name], batches) for name in layers}
    out: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = []
    for name, module in layers.items():

        def hook(m: nn.Module, args: tuple, name: str = name) -> None:
            b = len(out[name])
            gen = _generator(seed, index[name], b)
            out[name].append(_vectors(m, args[0].detach(), ks[name][b], gen).float().cpu())

        handles.append(module.register_forward_pre_hook(hook))
    try:
        for x in batches:
            x.run(reference)
    finally:
        for h in handles:
            h.remove()
    return out


@torch.no_grad()
def _accumulate(
    compressed: nn.Module,
    dense: nn.Module,
    layer: Factorized,
    batches: list[ExampleInput],
    dense_vectors: list[torch.Tensor],
    quota: int,
    seed: int,
    index: int,
) -> _Moments:
    """Paired moments of ``dense``'s input vectors (sampled beforehand) and, in ``compressed``, ``layer``'s input
    (a matrix layer) or the input of its last factor (a CP or Tucker layer), at the same positions."""
    # the dense layer's geometry samples the layer's input; a 1x1 conv at the output positions samples the last
    # factor's input; both draw the same positions from the same generator
    point, geometry = (layer.second, layer.second) if isinstance(layer, _TENSOR_LAYERS) else (layer, dense)
    mom = _Moments(input_dim(dense), input_dim(geometry), next(point.parameters()).device)
    ks = _per_batch(quota, batches)
    for b, (x, vd) in enumerate(zip(batches, dense_vectors, strict=True)):
        xc = _input_of(compressed, point, x)
        if xc is None:
            continue
        vc = _vectors(geometry, xc, ks[b], _generator(seed, index, b))
        mom.add(vd, vc.float())
    return mom


def reconstruct(
    reference: nn.Module,
    compressed: nn.Module,
    data: CalibrationData,
    images: int = CALIBRATION_IMAGES,
    *,
    batch_size: int = 256,
    samples: int | None = None,
    seed: int = 0,
    damping: float = DAMPING,
) -> Reconstruction:
    """Re-solve the factorized layers of ``compressed`` against ``reference``, in forward order (in place).

    Parameters
    ----------
    reference : nn.Module
        The dense model ``compressed`` was made from (not modified). Its layers must sit at the same module names.
    compressed : nn.Module
        :func:`smoothcompress.compress` of ``reference``: its :class:`~smoothcompress.factorized.FactorizedConv2d`
        (channel scheme) and :class:`~smoothcompress.factorized.FactorizedLinear` layers get new weights of the
        same ranks, its :class:`~smoothcompress.tensorfactor.CPConv2d` and
        :class:`~smoothcompress.tensorfactor.TuckerConv2d` layers a new last factor, and all of them biases (or
        BatchNorm running means, module docstring). Nothing else changes.
    data : Dataset, Loader, iterable or Tensor
        Calibration inputs, see :func:`smoothcompress.calibration.calibration_batches` (a Dataset gives training
        images only).
    images : int
        Number of calibration inputs.
    batch_size : int
        Batch size for a Dataset or Tensor.
    samples : int, optional
        Input vectors per layer. Default ``max(MIN_SAMPLES, SAMPLES_PER_DIM * d)``.
    seed : int
        Which training images a Dataset gives and which positions are sampled: the result is deterministic.
    damping : float
        Relative ridge ``lam / mean(diag C')`` (module docstring), >= 0.

    Returns
    -------
    Reconstruction
        Per-layer errors before and after, the skipped layers and why, the order, the wall time.

    Raises
    ------
    ValueError
        Data that does not fit the models (one line naming the input shape), a ``compressed`` model without
        factorized layers, or whose factorized layers do not match ``reference``'s layers.
    """
    start = time.perf_counter()
    if not damping >= 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    dense_modules, comp_modules = dict(reference.named_modules()), dict(compressed.named_modules())
    factorized = {n: m for n, m in comp_modules.items() if isinstance(m, Factorized)}
    if not factorized:
        raise ValueError("the compressed model has no factorized layer to reconstruct; compress() it first")
    for name, m in factorized.items():
        dense = dense_modules.get(name)
        if dense is None or isinstance(dense, Factorized):
            raise ValueError(f"layer {name!r} of the compressed model has no dense counterpart in the reference model")
        if tuple(layer_weight(dense).shape) != tuple(m.dense_weight().shape):
            raise ValueError(
                f"layer {name!r}: the reference's weight has shape {tuple(layer_weight(dense).shape)}, the compressed "
                f"layer stands for {tuple(m.dense_weight().shape)}; pass the model that was compressed"
            )
    p = next(compressed.parameters())
    batches = [
        as_batch(x).to(p.device) for x in calibration_batches(data, images, batch_size, seed=seed, device=p.device)
    ]
    if not batches:
        raise ConfigError("the calibration data gave no inputs")
    modes = {m: m.training for m in (*reference.modules(), *compressed.modules())}
    reference.eval()
    compressed.eval()
    result = Reconstruction(images=sum(x.batch_size for x in batches), damping=float(damping))
    try:
        with torch.no_grad():
            try:
                order, calls = _forward_order(compressed, batches[0].head(2))
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                first = first_line(e)
                raise ConfigError(f"calibration inputs {batches[0].describe()} do not fit the model: {first}") from e
        bn_pairs, _ = trace_bn_pairs(reference)
        for name in factorized:
            if name not in calls:
                result.skipped[name] = "not reached by the calibration inputs"
            elif calls[name] > 1:
                result.skipped[name] = f"called {calls[name]} times per forward pass"
            elif not isinstance(factorized[name], (FactorizedConv2d, FactorizedLinear, *_TENSOR_LAYERS)):
                result.skipped[name] = f"{type(factorized[name]).__name__} (no closed-form solve for this layer type)"
            elif isinstance(factorized[name], FactorizedConv2d) and factorized[name].scheme != "channel":
                result.skipped[name] = f"scheme {factorized[name].scheme!r} (the 'channel' scheme and CP and Tucker"
                " layers are reconstructed)"
        todo = {n: dense_modules[n] for n in order if n not in result.skipped}
        quotas = {
            n: int(samples) if samples is not None else max(MIN_SAMPLES, SAMPLES_PER_DIM * input_dim(m))
            for n, m in todo.items()
        }
        vectors = _dense_vectors(reference, todo, batches, quotas, seed)
        short: dict[str, tuple[int, int, int]] = {}  # layers solved from fewer vectors than inputs (see below)
        for index, (name, dense) in enumerate(todo.items()):
            layer = factorized[name]
            mom = _accumulate(compressed, dense, layer, batches, vectors.pop(name), quotas[name], seed, index)
            has_bias = layer.second.bias is not None
            bn = comp_modules.get(bn_pairs[name]) if name in bn_pairs else None
            centered = has_bias or bn is not None
            solve = _solve_last_factor if isinstance(layer, _TENSOR_LAYERS) else _solve
            _, offset, info = solve(layer, dense, mom, centered, damping)
            with torch.no_grad():
                if has_bias:
                    layer.second.bias.copy_(offset.to(layer.second.bias))
                    info["bias"] = "layer"
                elif bn is not None:
                    bn.running_mean.sub_(offset.to(bn.running_mean))
                    info["bias"] = f"batchnorm:{bn_pairs[name]}"
                else:
                    info["bias"] = "none"
            result.layers[name] = info
            result.order.append(name)
            if mom.n < mom.xpxp.shape[0]:
                short[name] = (mom.n, mom.xpxp.shape[0], quotas[name])
    finally:
        for m, mode in modes.items():
            m.training = mode
    if short:
        what = "of the sequential solve saw fewer input vectors than the inputs they solve for"
        warn_short_layers(short, result.images, images, what, "they rest on the ridge and may lose accuracy")
    result.seconds = time.perf_counter() - start
    return result
