"""Plain-language warnings about a finished run: what a user should not take at face value.

A run can end ``done`` and still have learned nothing (accuracy at chance) or have had its mask chosen by the
final calibration rather than by the method (its own rule far from the target). ``run_experiment`` stores these
warnings in ``result["warnings"]``; the CLI summary prints them and the app shows them, so each says what to change
in words both understand (an option's name, never a command-line flag).
"""

from __future__ import annotations

from typing import Any

from prunekit.methods import run_target

CHANCE_MARGIN = 1.5  # accuracy at most this many times chance (1 / classes) counts as "learned nothing"
OWN_RULE_MISS = 0.10  # the own rule missing the target by more than this share of it is worth a warning
FLIPS_WARN = 0.10  # a latency-target run: calibration changing more than this share of the decisions
_ADVICE = ("give the search more epochs or see the method's budget options (their help in the run form, or "
           "'prunekit list methods --details')")


def run_warnings(result: dict[str, Any]) -> list[str]:
    """Warnings for a run's result (``run_experiment``'s dict: ``metrics``, ``config``, ``dataset``,
    ``method_report``), each one sentence with what to change; [] when nothing stands out."""
    out = []
    classes = (result.get("dataset") or {}).get("num_classes")
    acc = (result.get("metrics") or {}).get("acc/test")
    if acc is not None and classes and classes > 1 and acc <= CHANCE_MARGIN / classes:
        out.append(f"test accuracy {acc:.1%} is near chance (1/{classes} = {1 / classes:.1%}): the network learned "
                   "little; train longer (more epochs), check the learning rate, or start from a trained dense model")
    cfg = result.get("config") or {}
    report = result.get("method_report") or {}
    if (cfg.get("method_options") or {}).get("target_latency") is not None:
        # the target is in ms, the own rule's ratio in MACs: what calibration changed says whether the method decided
        flips = report.get("calibration_flips")
        if flips is not None and flips > FLIPS_WARN:
            out.append(f"the final calibration changed {flips:.0%} of the keep/remove decisions to meet the latency "
                       f"target, so it chose part of the mask; {_ADVICE}")
        return out
    target = run_target(cfg.get("method"), cfg.get("method_options"))
    own = report.get("relaxation_macs_ratio")
    if target is not None and own is not None and abs(own - target) > OWN_RULE_MISS * target:
        out.append(f"the method's own rule kept {own:.2f} of the dense MACs against the target {target:g}, "
                   f"so the final calibration chose part of the mask; {_ADVICE}")
    return out
