"""Tables of the pareto and latency suites: selection on validation, mean ± std over seeds, verdicts in words.

``summarize`` keeps, per (dataset, method, target, seed), the option variant of best validation accuracy and
averages over seeds; ``pareto_markdown`` writes one table per dataset and says plainly, per target, whether the
best prunekit method beats or loses to the best Torch-Pruning pruner; ``latency_rows``/``latency_markdown`` put
every slim network's latency beside the Torch-Pruning networks' at the same target (suite 4).
"""

from __future__ import annotations

import statistics
from typing import Any

from prunekit.bench import md_table
from prunekit.bench.pareto.preset import TP_PRUNERS, ParetoPreset


def _select(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (dataset, method, target, seed) keep the option variant of best validation accuracy."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["dataset"], r["method"], r["target"], r["seed"])
        r["selected"] = False
        if "error" in r:
            best.setdefault(key, r)
            continue
        cur = best.get(key)
        if cur is None or "error" in cur or (r["acc_val"] or 0) > (cur["acc_val"] or 0):
            best[key] = r
    for r in best.values():
        r["selected"] = True
    return list(best.values())


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    if len(values) == 1:
        return values[0], None
    return statistics.fmean(values), statistics.stdev(values)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Selected rows grouped over seeds: mean (and std with >1 seed) of accuracy, MACs ratio and latency."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in _select(rows):
        groups.setdefault((r["dataset"], r["method"], r["target"]), []).append(r)
    out = []
    for (dataset, method, target), rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        s: dict[str, Any] = {"dataset": dataset, "method": method, "target": target, "seeds": len(ok)}
        if not ok:
            s["error"] = rs[0]["error"]
            out.append(s)
            continue
        for k in ("acc_val", "acc_test", "macs_ratio", "macs", "params", "latency_ms_b1", "latency_ms_b32",
                  "relaxation_macs_ratio", "calibration_flips"):
            vals = [float(r[k]) for r in ok if r.get(k) is not None]
            if vals:
                s[k], s[k + "_std"] = _mean_std(vals)
        s["options"] = ok[0].get("options", {})
        out.append(s)
    return out


def _pct(v: float | None, std: float | None = None) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _target_key(t: float | None) -> float:
    return 1.0 if t is None else float(t)


def pareto_markdown(summary: list[dict[str, Any]], p: ParetoPreset, preset: str) -> str:
    """One table per dataset plus a plain statement of where prunekit loses to Torch-Pruning."""
    lines = [f"# pareto ({preset}): accuracy vs MACs on one budget, {p.model}\n",
             f"Budget per run: {p.epochs} epochs, batch {p.batch_size}, SGD lr {p.lr} cosine (sDprun: its own optimizer, "
             f"constant lr of its variant, classifier lr {p.sdprun_lr}), {'all images' if p.limit is None else f'{p.limit} images per split'}"
             f"{'' if p.max_steps_per_epoch is None else f', at most {p.max_steps_per_epoch} steps per epoch'}; "
             f"seeds {list(p.seeds)}. MACs per sample by torch.utils.flop_counter (conv/linear multiply-adds); "
             f"latency = median CPU ms with {p.latency_threads} thread. Accuracy in %, test split, variant chosen on val. "
             "'own rule': MACs ratio of what the method's own decision rule kept, before any calibration; 'calib. "
             "flips': share of keep/remove decisions a final calibration changed (- : the method has no such rule).\n"]
    for dataset in dict.fromkeys(s["dataset"] for s in summary):
        rows_d = [s for s in summary if s["dataset"] == dataset]
        dense = next((s for s in rows_d if s["method"] == "dense" and "error" not in s), None)
        table = []
        for s in sorted(rows_d, key=lambda s: (-_target_key(s["target"]), s["method"])):
            if "error" in s:
                table.append([s["method"], s["target"], "fails: " + s["error"]] + [None] * 8)
                continue
            speed = (dense["latency_ms_b32"] / s["latency_ms_b32"]) if dense and s.get("latency_ms_b32") else None
            delta = (100 * (s["acc_test"] - dense["acc_test"])) if dense else None
            own = s.get("relaxation_macs_ratio")
            flips = s.get("calibration_flips")
            table.append([s["method"], s["target"], f"{s['macs_ratio']:.3f}",
                          None if own is None else f"{own:.3f}", None if flips is None else f"{flips:.1%}",
                          f"{s['params'] / 1e3:.1f}k",
                          _pct(s.get("acc_val"), s.get("acc_val_std")), _pct(s["acc_test"], s.get("acc_test_std")),
                          None if delta is None else f"{delta:+.2f}", s.get("latency_ms_b1"),
                          None if speed is None else f"{speed:.2f}x"])
        lines.append(f"## {dataset}\n")
        lines.append(md_table(["method", "target", "MACs ratio", "own rule", "calib. flips", "params", "acc val",
                               "acc test", "Δ vs dense",
                               "latency b1 (ms)", "speed-up b32"], table))
        lines += _verdicts(rows_d)
    return "\n".join(lines)


def _verdicts(rows_d: list[dict[str, Any]]) -> list[str]:
    """Per target: the best prunekit method vs the best Torch-Pruning pruner, in words."""
    out = []
    for t in sorted({s["target"] for s in rows_d if s["target"] is not None}):
        ok = [s for s in rows_d if s["target"] == t and "error" not in s]
        pk = [s for s in ok if s["method"] not in TP_PRUNERS]
        tp = [s for s in ok if s["method"] in TP_PRUNERS]
        if not pk or not tp:
            continue
        a, b = max(pk, key=lambda s: s["acc_test"]), max(tp, key=lambda s: s["acc_test"])
        d = 100 * (a["acc_test"] - b["acc_test"])
        word = "beats" if d > 0 else ("ties" if d == 0 else "**loses to**")
        losers = [s["method"] for s in pk if s["acc_test"] < b["acc_test"]]
        out.append(f"- target {t}: best prunekit ({a['method']}, {_pct(a['acc_test'])}%) {word} best Torch-Pruning "
                   f"({b['method']}, {_pct(b['acc_test'])}%) by {d:+.2f} points; below {b['method']}: "
                   f"{', '.join(losers) or 'none'}.")
    return out + ([""] if out else [])


def latency_rows(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Suite 4: every slim network's latency beside Torch-Pruning's at the same target (ratios > 1: slower)."""
    out = []
    for s in summary:
        if "error" in s or s["method"] in TP_PRUNERS or s["target"] is None:
            continue
        peers = {m: x for x in summary if x["dataset"] == s["dataset"] and x["target"] == s["target"]
                 and "error" not in x for m in [x["method"]] if m in TP_PRUNERS}
        row = {k: s.get(k) for k in ("dataset", "method", "target", "macs_ratio", "latency_ms_b1", "latency_ms_b32")}
        for m, x in peers.items():
            row[f"{m}_macs_ratio"] = x["macs_ratio"]
            for b in (1, 32):
                k = f"latency_ms_b{b}"
                if s.get(k) and x.get(k):
                    row[f"vs_{m}_b{b}"] = s[k] / x[k]
        out.append(row)
    return out


def latency_markdown(rows: list[dict[str, Any]], summary: list[dict[str, Any]], p: ParetoPreset, preset: str) -> str:
    lines = [f"# latency ({preset}): slim networks vs Torch-Pruning at the same MACs target, {p.model}\n",
             f"Median CPU ms, {p.latency_threads} thread, batch 1 and 32, every network of a dataset timed interleaved "
             f"({p.latency_rounds} rounds). 'vs TP' = this network's latency ÷ the "
             "Torch-Pruning network's at the same target (< 1: prunekit's slim network is faster).\n"]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        dense = next((s for s in summary if s["dataset"] == dataset and s["method"] == "dense" and "error" not in s), None)
        tps = [s for s in summary if s["dataset"] == dataset and s["method"] in TP_PRUNERS and "error" not in s]
        table = [[s["method"], s["target"], f"{s['macs_ratio']:.3f}", s.get("latency_ms_b1"), s.get("latency_ms_b32"),
                  None, None] for s in ([dense] if dense else []) + tps]
        for r in rows:
            if r["dataset"] != dataset:
                continue
            table.append([r["method"], r["target"], f"{r['macs_ratio']:.3f}", r["latency_ms_b1"], r["latency_ms_b32"],
                          r.get("vs_tp-groupnorm_b32"), r.get("vs_tp-magnitude_b32")])
        table.sort(key=lambda row: (-_target_key(row[1]), row[0]))
        lines.append(f"## {dataset}\n")
        lines.append(md_table(["method", "target", "MACs ratio", "b1 (ms)", "b32 (ms)", "b32 vs TP-groupnorm",
                               "b32 vs TP-magnitude"], table))
    return "\n".join(lines)
