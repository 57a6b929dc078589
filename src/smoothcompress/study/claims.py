"""The paper's claims, judged by results rows.

:func:`assess_claims` judges the paper's four claims (smooth training keeps accuracy; smooth + SVD beats baseline
+ SVD; pruning does better on smooth models; SVD beats pruning at equal parameters) on the rates where compression
bites (``CLAIM_MIN_RATE``), differences within ``PAR_POINTS`` being ties. A row's method family
(:mod:`smoothcompress.methods`) tells SVD (``"low-rank"``) from pruning (``"pruning"``).
"""

from __future__ import annotations

import itertools
import math

from smoothcompress.methods import label_budget
from smoothcompress.study.summary import BASELINE, Setting, index_summary, method_families, several_contexts, summarize

__all__ = ["CLAIM_MIN_RATE", "PAR_POINTS", "assess_claims"]

# A claim is judged on the rates where compression bites, not where every method keeps the dense accuracy.
CLAIM_MIN_RATE = 0.5
# Two accuracies closer than this (in points) are "on par": of the order of the seed-to-seed spread of short runs.
PAR_POINTS = 1.0


def _compare(
    index: dict, a: Setting, la: str, b: Setting, lb: str, rates: list[float]
) -> list[tuple[float, float, str]]:
    """(rate, acc_a - acc_b in points, note) at every rate where both were tried.

    A side whose rate was out of reach loses that rate outright (difference -inf or +inf).
    """
    out = []
    for rate in rates:
        x, y = index.get((a, la, rate)), index.get((b, lb, rate))
        if not x or not y or ("acc" not in x and "acc" not in y):
            continue
        if "acc" not in x or "acc" not in y:
            out.append((rate, math.inf if "acc" in x else -math.inf, f"{lb if 'acc' in x else la} out of reach"))
            continue
        note = f"{100 * x['rate_achieved']:.1f} vs {100 * y['rate_achieved']:.1f}% removed"
        out.append((rate, 100 * (x["acc"] - y["acc"]), note))
    return out


def _verdict(diffs: list[tuple[float, float, str]]) -> str:
    """Differences within ``PAR_POINTS`` are ties: a claim is supported with at least one win and no loss."""
    if not diffs:
        return "no data"
    wins = sum(d > PAR_POINTS for _, d, _ in diffs)
    losses = sum(d < -PAR_POINTS for _, d, _ in diffs)
    if wins and not losses:
        return "supported"
    if wins:
        return "partly supported"
    return "not supported" if losses else "no difference"


def _fmt_diffs(what: str, diffs: list[tuple[float, float, str]], notes: bool = False) -> str:
    """``"<what> at rate 70%: +1.2, ..."``, or that no rate has rows of both sides."""
    if not diffs:
        return f"no rate from {100 * CLAIM_MIN_RATE:.0f}% has rows of both sides"

    def one(r, d, note):
        value = f"{d:+.1f}" if math.isfinite(d) else f"({note})"
        return f"{100 * r:.0f}%: {value}" + (f" ({note})" if notes and math.isfinite(d) else "")

    return f"{what} at rate " + ", ".join(one(*x) for x in diffs)


def assess_claims(rows: list[dict]) -> list[dict]:
    """Judge the paper's four claims from the rows; each item has ``claim``, ``setting``, ``verdict``, ``evidence``.

    Rules (stated in the report): accuracies are seed means; rates >= ``CLAIM_MIN_RATE`` count; differences within
    ``PAR_POINTS`` are ties; "supported" means at least one win and no loss over those rates (claim 1: dense
    accuracy within ``PAR_POINTS`` of the baseline or better). Smooth runs are compared with the baseline of the
    same model, width and variant. Claim 4 compares equal requested rates and lists the achieved ones, SVD rows at a
    FLOPs budget left out (their parameter count is their own); claims 2 and 3 compare one label at one rate, so
    at any budget.
    """
    summary = summarize(rows)
    index = index_summary(summary)
    groups = sorted({s["group"] for s in summary}, key=Setting.sort_key)
    rates = sorted({s["rate"] for s in summary if s["rate"] >= CLAIM_MIN_RATE})
    labels = sorted({s["label"] for s in summary if s["label"] != "dense"})
    families = method_families(rows)
    svd = [lab for lab in labels if families.get(lab) == "low-rank"]
    svd_params = [lab for lab in svd if label_budget(lab) == "params"]  # at a FLOPs budget, parameters are its own
    pruning = [lab for lab in labels if families.get(lab) == "pruning"]
    multi = several_contexts(groups)
    claims = []

    def add(claim: str, setting: str, verdict: str, evidence: str) -> None:
        claims.append({"claim": claim, "setting": setting, "verdict": verdict, "evidence": evidence})

    for base in (g for g in groups if g.reg == BASELINE):
        smooth = [g for g in groups if g.reg != BASELINE and g.context() == base.context()]
        for g in smooth:
            name = g.name(multi)
            d, b = index.get((g, "dense", 0.0), {}), index.get((base, "dense", 0.0), {})
            if "acc" in d and "acc" in b:
                diff = 100 * (d["acc"] - b["acc"])
                add(
                    "1. smooth training matches baseline accuracy",
                    name,
                    "supported" if diff >= -PAR_POINTS else "not supported",
                    f"dense {100 * d['acc']:.2f}% vs baseline {100 * b['acc']:.2f}% ({diff:+.2f} points)",
                )
            for claim, labs in (
                ("2. smooth + SVD beats baseline + SVD", svd),
                ("3. pruning does better on smooth models", pruning),
            ):
                for lab in labs:
                    diffs = _compare(index, g, lab, base, lab, rates)
                    add(claim, f"{name}, {lab}", _verdict(diffs), _fmt_diffs("points vs baseline", diffs))
        for g in [base, *smooth]:
            for lab_s, lab_p in itertools.product(svd_params, pruning):
                diffs = _compare(index, g, lab_s, g, lab_p, rates)
                add(
                    "4. SVD beats pruning at equal parameters",
                    f"{g.name(multi)}, {lab_s} vs {lab_p}",
                    _verdict(diffs),
                    _fmt_diffs("points SVD minus pruning", diffs, notes=True),
                )
    return claims
