"""``prunekit bench overhead``: what gating costs in training.

Training step time (forward + backward + SGD step, batch 128 at 32×32) of the plain network and of the
same network gated with each relaxation. Plain and gated steps are interleaved so that a busy neighbour
slows both alike; the median of each is reported with the ratio (target: ≤ 1.15×).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit.bench import md_table, write_report
from prunekit.errors import ConfigError

PRESETS = {
    "quick": {"models": ["resnet20", "resnet56"], "batch": 128, "steps": 8},
    "full": {"models": ["resnet20", "resnet56", "tv:resnet18"], "batch": 128, "steps": 15},
}


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def bench_overhead(out_dir: str | Path, preset: str = "quick", *, gates: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Measure gated/plain step-time ratios; write ``overhead.json`` / ``overhead.md``."""
    if preset not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    cfg = PRESETS[preset]
    kinds = gates or tuple(k for k in ("crisp", "hardconcrete", "bernoulli", "dpp") if k in pk.list_gates())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg["batch"], 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (cfg["batch"],), generator=g)
    results: dict[str, Any] = {}
    rows = []
    for name in cfg["models"]:
        plain = pk.create_model(name, num_classes=10).train()
        for kind in kinds:
            opts = {"keep": 0.5} if kind == "dpp" else {}
            gated = pk.augment(plain, x[:1], gate=kind, gate_options=opts).train()
            opt_p = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)
            opt_g = torch.optim.SGD(gated.parameters(), lr=0.01, momentum=0.9)
            for _ in range(2):  # warm-up
                _step(plain, opt_p, x, y)
                _step(gated, opt_g, x, y)
            tp, tg = [], []
            for _ in range(cfg["steps"]):
                tp.append(_step(plain, opt_p, x, y))
                tg.append(_step(gated, opt_g, x, y))
            mp, mg = statistics.median(tp), statistics.median(tg)
            results[f"{name}/{kind}"] = {"plain_ms": mp * 1e3, "gated_ms": mg * 1e3, "ratio": mg / mp, "groups": len(gated.groups)}
            rows.append([name, kind, len(gated.groups), mp * 1e3, mg * 1e3, mg / mp, "yes" if mg / mp <= 1.15 else "no"])
    md = (
        f"# overhead ({preset})\n\nTraining step (fwd+bwd+SGD), batch {cfg['batch']} at 32×32, median of {cfg['steps']} "
        f"interleaved steps, {torch.get_num_threads()} threads.\n\n"
        + md_table(["model", "gate", "groups", "plain ms", "gated ms", "ratio", "≤1.15×"], rows)
    )
    return write_report(out_dir, "overhead", {"preset": preset, "results": results}, md)
