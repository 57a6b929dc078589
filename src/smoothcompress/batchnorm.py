"""BatchNorm-aware weighting for SVD compression: which layer feeds which BatchNorm, and the BatchNorm's scale.

In eval mode a BatchNorm that alone consumes a layer's output scales output channel ``c`` by
``g_c = |gamma_c| / sqrt(running_var_c + eps)`` (:func:`bn_scale`), so the network effectively applies
``diag(g) W``. :func:`smoothcompress.compress` with ``bn_aware=True`` passes ``g`` as ``out_scale`` to the
factorization (:func:`smoothcompress.factorized.factorize_weight`), which then minimises
``||diag(g) (W - W_r)||_F``. Layer -> BatchNorm pairs are found by tracing the model with ``torch.fx``
(:func:`find_bn_pairs`); a model that cannot be traced has no pairs, and the reason is reported.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

__all__ = ["bn_scale", "find_bn_pairs", "trace_bn_pairs"]


def bn_scale(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """Per-channel factor ``|gamma| / sqrt(running_var + eps)`` by which an eval-mode BatchNorm scales its input.

    Parameters
    ----------
    bn : nn.BatchNorm1d or nn.BatchNorm2d
        Must track running statistics.

    Returns
    -------
    Tensor
        Shape (num_features,), float64.
    """
    if bn.running_var is None:
        raise ValueError("the BatchNorm does not track running statistics, so its inference scale is unknown")
    var = bn.running_var.detach().to(torch.float64)
    gamma = bn.weight.detach().to(torch.float64).abs() if bn.weight is not None else torch.ones_like(var)
    return gamma / torch.sqrt(var + bn.eps)


def trace_bn_pairs(model: nn.Module) -> tuple[dict[str, str], str | None]:
    """(pairs, note): pairs maps a Conv2d/Linear name to the BatchNorm that alone consumes its output."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:  # noqa: BLE001 - fx raises many types; any failure means "no pairs known"
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return {}, f"torch.fx could not trace the model ({type(e).__name__}: {msg}); plain SVD truncation used"
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or type(modules.get(node.target)) not in (nn.Conv2d, nn.Linear):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module" or len(users[0].all_input_nodes) != 1:
            continue
        layer, bn = modules[node.target], modules.get(users[0].target)
        if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) or bn.running_var is None:
            continue
        if calls[node.target] != 1 or calls[users[0].target] != 1 or bn.num_features != layer.weight.shape[0]:
            continue
        pairs[node.target] = users[0].target
    return pairs, None


def find_bn_pairs(model: nn.Module) -> dict[str, str]:
    """Layers whose output goes only into a BatchNorm, found by ``torch.fx`` tracing.

    Parameters
    ----------
    model : nn.Module
        Any model; it is traced, not run, and not modified.

    Returns
    -------
    dict
        ``{layer name: BatchNorm name}`` for Conv2d/Linear layers followed by a BatchNorm1d/2d that tracks running
        statistics. Empty, with a warning, when the model cannot be traced.
    """
    pairs, note = trace_bn_pairs(model)
    if note:
        warnings.warn(note, stacklevel=2)
    return pairs
