"""Gradient-masking flags from the robust accuracies an evaluation measured (pure Python, no torch).

Rule: flag "likely gradient masking" when PGD-CE accuracy minus another attack's accuracy exceeds
max(FLOOR, K_SE * SE), SE = sqrt(p1(1-p1)/n1 + p2(1-p2)/n2) (binomial, treated as unpaired, which
over-states the SE of two attacks on the same points: a conservative threshold). FLOOR is 3 points
against CW and logit-scaled CE (normal robust models: 0.2-0.8 on Fashion-MNIST, about 2 on CIFAR-10)
and 6 points against AutoAttack, a stronger ensemble that normally sits 1.8-2.2 points below PGD-20
on Fashion-MNIST and about 3.7 on CIFAR-10 (AT WRN, REFERENCES.md), while masking reweighting showed
16.2 (GAIR-AT, Fashion-MNIST) and about 15 (GAIRAT, CIFAR-10)."""
from __future__ import annotations

import math
import re

# pgdK (CE), cwK (CW margin), pgdKxS (CE on logits times S, Hitaj et al. 2021): K steps; no cwKxS
# (the CW margin scales with the logits, so its sign-gradient attack would be cwK again)
ATTACK_RE = re.compile(r"^(pgd(?=\d+(?:x\d+)?$)|cw(?=\d+$))(\d+)(?:x(\d+))?$")
FLOOR = {"cw": 0.03, "scaled": 0.03, "autoattack": 0.06}  # accuracy fractions (0.03 = 3 points)
K_SE = 3.0
RULE = ("likely gradient masking when acc(PGD-CE) - acc(X) > max(floor_X, 3 SE), SE = sqrt(p1(1-p1)/n1 + "
        "p2(1-p2)/n2) on the test points each saw; floor 3 points for X = CW and logit-scaled CE, 6 points "
        "for AutoAttack; gap, se, threshold as accuracy fractions")
COMPARISONS = ("cw", "scaled", "autoattack")


def attack_label(name: str, autoattack_version: str = "standard") -> str:
    """Human name: pgd20 -> PGD-20, cw20 -> CW-20, pgd20x10 -> PGD-20 on logits x10, AutoAttack."""
    if name == "autoattack":
        return "AutoAttack" + (" (fast)" if autoattack_version == "fast" else "")
    m = ATTACK_RE.match(name)
    if not m:
        return name
    kind, steps, scale = m.groups()
    return f"PGD-{steps} on logits x{scale}" if scale else f"{kind.upper()}-{steps}"


def _strongest(accs: dict[str, float], kind: str, scaled: bool) -> str | None:
    """Among the pgdK / cwK / pgdKxS attacks of one kind, the one with the lowest accuracy (then most
    steps): a larger S is not always stronger, since CE on over-scaled logits saturates."""
    cands = []
    for a, acc in accs.items():
        m = ATTACK_RE.match(a)
        if m and m.group(1) == kind and bool(m.group(3)) == scaled:
            cands.append((acc, -int(m.group(2)), a))
    return min(cands)[2] if cands else None


def masking_flags(robust_acc: dict, n: int, *, autoattack_n: int | None = None,
                  points: dict[str, int] | None = None, on_autoattack_points: dict[str, float] | None = None,
                  autoattack_version: str = "standard") -> dict:
    """Compare PGD-CE (the strongest pgdK) with CW, logit-scaled CE and AutoAttack (each the strongest).

    robust_acc: attack -> accuracy in [0,1]; n: test points per attack; autoattack_n: AutoAttack's
    (the first points); points: per-attack counts overriding both; on_autoattack_points: PGD-CE's
    accuracy on AutoAttack's points, for a gap on the points both saw.
    Returns {"flag", "reasons": [str], "gaps": {comparison: {...}}, "rule"}."""
    accs = {k: float(v) for k, v in robust_acc.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    pts = {k: int(n) for k in accs}
    if "autoattack" in pts and autoattack_n:
        pts["autoattack"] = int(autoattack_n)
    pts.update({k: int(v) for k, v in (points or {}).items() if k in pts})
    out: dict = {"flag": False, "reasons": [], "gaps": {}, "rule": RULE}
    ref = _strongest(accs, "pgd", scaled=False)
    if ref is None:
        return out
    others = {"cw": _strongest(accs, "cw", False), "scaled": _strongest(accs, "pgd", True),
              "autoattack": "autoattack" if "autoattack" in accs else None}
    for comp, other in others.items():
        if other is None:
            continue
        p1, n1, p2, n2 = accs[ref], pts[ref], accs[other], pts[other]
        if comp == "autoattack" and on_autoattack_points and ref in on_autoattack_points:
            p1, n1 = float(on_autoattack_points[ref]), n2  # PGD-CE on AutoAttack's own points
        if min(n1, n2) <= 0:
            continue
        gap = p1 - p2
        se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
        threshold = max(FLOOR[comp], K_SE * se)
        flag = gap > threshold + 1e-9  # "exceeds": a gap equal to the threshold (up to rounding) is not flagged
        g = out["gaps"][comp] = {"attack": other, "reference": ref, "gap": gap, "se": se, "threshold": threshold,
                                 "n": min(n1, n2), "flag": flag}
        if comp == "autoattack":
            g["autoattack_version"] = autoattack_version
        if flag:
            out["flag"] = True
            out["reasons"].append(describe_gap(g))
    return out


def describe_gap(g: dict) -> str:
    """'CW-20 is 9.1 points below PGD-20 (threshold 3.0, n=1000)'."""
    other = attack_label(g["attack"], g.get("autoattack_version", "standard"))
    return (f"{other} is {100 * g['gap']:.1f} points below {attack_label(g['reference'])} "
            f"(threshold {100 * g['threshold']:.1f}, n={g['n']})")


def merge_masking(results: list[dict]) -> dict:
    """One verdict from several evaluations: per comparison the one on the most test points (the
    first on ties), flagged when any kept comparison is."""
    gaps: dict = {}
    for res in results:
        for comp, g in (res or {}).get("gaps", {}).items():
            if comp not in gaps or g.get("n", 0) > gaps[comp].get("n", 0):
                gaps[comp] = g
    reasons = [describe_gap(gaps[c]) for c in COMPARISONS if c in gaps and gaps[c].get("flag")]
    return {"flag": bool(reasons), "reasons": reasons, "gaps": gaps, "rule": RULE}


def short_flag(masking: dict) -> str:
    """A table cell: '⚠ CW -9.1, AA -16.2' for flagged comparisons, '' when checked and clean, '-' when
    nothing could be compared."""
    gaps = (masking or {}).get("gaps", {})
    if not gaps:
        return "-"

    def tag(c: str) -> str:
        m = ATTACK_RE.match(gaps[c]["attack"])
        return {"cw": "CW", "autoattack": "AA"}.get(c) or (f"CEx{m.group(3)}" if m and m.group(3) else "CE")
    parts = [f"{tag(c)} -{100 * gaps[c]['gap']:.1f}" for c in COMPARISONS if c in gaps and gaps[c].get("flag")]
    return "⚠ " + ", ".join(parts) if parts else ""
