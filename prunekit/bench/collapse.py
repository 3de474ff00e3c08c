"""``prunekit bench collapse``: does collapse work, is it exact, how fast, and does it really run faster?

For each model: 50% random channel masks on every prunable group → collapse → max |slim − gated|,
collapse time, MACs and params before/after, CPU latency at batch 1 and 64 and the speedup ÷ MACs
reduction. Side by side, Torch-Pruning (``MagnitudePruner``, same 50% ratio per group) on the same model:
whether it handles it, its pruning time and speedup. The dense, prunekit-slim and Torch-Pruning networks
of one model are timed interleaved (``prunekit.latency.measure_latency_interleaved``), so a change of
machine load cannot pass for a difference between the tools. A model that cannot be handled is reported
with its reason (analysis time is bounded, no hangs).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import prunekit as pk
from prunekit.bench import error_reason, md_table, write_report
from prunekit.compare import latency_forms
from prunekit.errors import ConfigError
from prunekit.latency import measure_latency_interleaved
from prunekit.models import list_models

log = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, Any]] = {
    # the headline pair plus one of each family, small inputs: minutes on 2 CPU cores
    "quick": {
        "models": ["resnet56", "tv:resnet50", "resnet20", "vgg16", "mobilenetv2", "unet", "tv:mobilenet_v3_small", "tv:densenet121"],
        "size": 32,
        "tv_size": 64,
        "repeats": 5,
    },
    # every in-house model and every torchvision classification model
    "full": {"models": None, "size": 32, "tv_size": 64, "repeats": 5},
    # issue 17's latency set: eager and inference form (BN folded), PyTorch and ONNX Runtime
    "latency": {
        "models": ["resnet20", "resnet56", "vgg16", "mobilenetv2", "unet", "tv:resnet50"],
        "size": 32,
        "tv_size": 64,
        "repeats": 5,
        "inference": True,
        "onnxruntime": True,
    },
}


def _models(preset: dict[str, Any]) -> list[str]:
    return preset["models"] or list_models(include_torchvision=True)


def _half_masks(gated, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for h in gated.groups:
        keep = torch.zeros(h.size, dtype=torch.bool)
        keep[torch.randperm(h.size, generator=g)[: max(1, h.size // 2)]] = True
        h.set_mask(keep)


def _prunekit_row(name: str, x: torch.Tensor, nets: dict[str, torch.nn.Module]) -> dict[str, Any]:
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("tv:googlenet", "tv:inception_v3") else {}
    model = pk.create_model(name, num_classes=10, **kwargs).eval()
    t0 = time.perf_counter()
    gated = pk.augment(model, x, timeout_s=60)
    t_aug = time.perf_counter() - t0
    _half_masks(gated)
    t0 = time.perf_counter()
    slim = pk.collapse(gated)
    t_col = time.perf_counter() - t0
    macs0, macs1 = pk.count_macs(model, x), pk.count_macs(slim, x)
    nets.update(dense=model, prunekit=slim)
    return {
        "groups": len(gated.groups),
        "fixed_groups": len(gated.fixed_groups),
        "macs_before": macs0,
        "macs_after": macs1,
        "params_before": pk.count_params(model),
        "params_after": pk.count_params(slim),
        "max_diff": slim.pk_collapse["max_diff"],
        "augment_s": t_aug,
        "collapse_s": t_col,
        "macs_reduction": macs0 / max(macs1, 1),
        "removed": len(slim.pk_collapse["removed"]),
    }


def _torch_pruning_row(name: str, x: torch.Tensor, nets: dict[str, torch.nn.Module]) -> dict[str, Any]:
    import torch_pruning as tp

    kwargs = {"aux_logits": False, "init_weights": False} if name in ("tv:googlenet", "tv:inception_v3") else {}
    model = pk.create_model(name, num_classes=10, **kwargs).eval()
    macs0 = pk.count_macs(model, x)
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    if getattr(model, "pk_task", "classification") == "segmentation":
        classifier = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1:]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MagnitudePruner(
            model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=classifier
        )
        pruner.step()
    t_prune = time.perf_counter() - t0
    with torch.no_grad():
        model(x)
    macs1 = pk.count_macs(model, x)
    nets["torch_pruning"] = model
    return {
        "prune_s": t_prune,
        "macs_after": macs1,
        "params_after": pk.count_params(model),
        "macs_reduction": macs0 / max(macs1, 1),
    }


def _add_latency(row: dict[str, Any], nets: dict[str, torch.nn.Module], x: torch.Tensor, cfg: dict[str, Any]) -> None:
    """Time dense, prunekit-slim and Torch-Pruning networks of one model interleaved; speed-ups into the rows.

    With ``cfg["inference"]`` the dense and slim networks are also timed as deployed
    (``prunekit.compare.latency_forms``: inference forms, BatchNorm folded and NCHW for both, so the ratio is the
    pruning's; with ``cfg["onnxruntime"]`` also in ONNX Runtime with the same thread count).
    """
    if "dense" not in nets:
        return
    lat = measure_latency_interleaved(nets, x, (1, 64), rounds=cfg["repeats"], repeats=2)
    # (row, key suffix, {"before": {batch: ms}, "after": {batch: ms}})
    timed = [(key, "", {"before": lat["dense"], "after": lat[key]}) for key in ("prunekit", "torch_pruning") if key in lat]
    if cfg.get("inference") and "prunekit" in nets:
        forms = latency_forms(nets["dense"], nets["prunekit"], x, (1, 64), rounds=cfg["repeats"],
                              onnxruntime=bool(cfg.get("onnxruntime")), eager=False)
        timed += [("prunekit", tag, forms[form]) for form, tag in (("inference", "_inf"), ("onnxruntime", "_ort"))
                  if form in forms]
    for key, tag, before_after in timed:
        r = row.get(key)
        if not r or not r.get("ok"):
            continue
        r[f"latency_ms{tag}"] = before_after
        for b in (1, 64):
            r[f"speedup{tag}_b{b}"] = before_after["before"][b] / before_after["after"][b]
            r[f"speedup{tag}_over_macs_b{b}"] = r[f"speedup{tag}_b{b}"] / r["macs_reduction"]


def _guard(fn, *args) -> dict[str, Any]:
    try:
        return {"ok": True, **fn(*args)}
    except Exception as e:  # noqa: BLE001 - a model we cannot handle is a result, reported with its reason
        return {"ok": False, "error": error_reason(e)}


def bench_collapse(
    out_dir: str | Path, preset: str = "quick", *, models: list[str] | None = None, torch_pruning: bool = True
) -> dict[str, Any]:
    """Run the collapse suite; write ``collapse.json`` / ``collapse.md`` to ``out_dir``.

    Args:
        out_dir: results folder.
        preset: ``quick`` (8 models: ResNet-56, tv:resnet50 and one of each family) or ``full`` (the whole zoo).
        models: override the model list.
        torch_pruning: also prune each model with Torch-Pruning's MagnitudePruner at the same ratio.
    """
    if preset not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    cfg = PRESETS[preset]
    names = models or _models(cfg)
    results: dict[str, Any] = {}
    for name in names:
        size = cfg["tv_size"] if name.startswith("tv:") else cfg["size"]
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        log.info("bench collapse: %s", name)
        nets: dict[str, torch.nn.Module] = {}
        row = {"input": list(x.shape), "prunekit": _guard(_prunekit_row, name, x, nets)}
        if torch_pruning:
            row["torch_pruning"] = _guard(_torch_pruning_row, name, x, nets)
        try:
            _add_latency(row, nets, x, cfg)
        except Exception as e:  # noqa: BLE001 - a network that cannot be timed is reported, not fatal
            row["latency_error"] = error_reason(e)
        results[name] = row
    headers = [
        "model", "groups", "MACs before→after (M)", "params before→after (M)", "max diff", "collapse s",
        "speedup b1", "speedup b64", "MACs red.", "speedup÷MACs b64", "TP ok", "TP prune s", "TP speedup b64",
    ]
    rows = []
    for name, r in results.items():
        p, t = r["prunekit"], r.get("torch_pruning", {})
        if not p["ok"]:
            rows.append([name, "fails: " + p["error"]] + [None] * 9 + [t.get("ok"), None, None])
            continue
        rows.append([
            name, p["groups"], f"{p['macs_before'] / 1e6:.1f}→{p['macs_after'] / 1e6:.1f}",
            f"{p['params_before'] / 1e6:.2f}→{p['params_after'] / 1e6:.2f}", f"{p['max_diff']:.1e}", p["collapse_s"],
            p.get("speedup_b1"), p.get("speedup_b64"), p["macs_reduction"], p.get("speedup_over_macs_b64"),
            "yes" if t.get("ok") else ("no: " + t["error"] if t else None), t.get("prune_s"), t.get("speedup_b64"),
        ])
    if cfg.get("inference"):
        headers += ["inference form: speedup÷MACs b1", "b64", "ONNX Runtime: speedup÷MACs b1", "b64",
                    "ORT slim ms b1", "ORT slim ms b64"]
        for row, r in zip(rows, results.values()):
            p = r["prunekit"]
            ort = p.get("latency_ms_ort", {}).get("after", {})
            row += [p.get("speedup_inf_over_macs_b1"), p.get("speedup_inf_over_macs_b64"),
                    p.get("speedup_ort_over_macs_b1"), p.get("speedup_ort_over_macs_b64"), ort.get(1), ort.get(64)]
    ok = sum(r["prunekit"]["ok"] for r in results.values())
    tp_ok = sum(r.get("torch_pruning", {}).get("ok", False) for r in results.values())
    md = (
        f"# collapse ({preset})\n\n50% random channel masks per prunable group; MACs per sample by torch.utils.flop_counter "
        "(1 MAC = 1 multiply-add, conv/linear only); latency = median CPU ms, dense / prunekit / Torch-Pruning timed "
        "interleaved; TP = Torch-Pruning MagnitudePruner at ratio 0.5. Inference form: BatchNorm folded "
        "(prunekit.optimize_for_inference, NCHW), dense and slim alike; ONNX Runtime: both inference forms exported, "
        f"CPU provider, {torch.get_num_threads()} intra-op thread(s).\n\n"
        + md_table(headers, rows)
        + f"\nprunekit handled {ok}/{len(results)} models, Torch-Pruning {tp_ok}/{len(results)}.\n"
    )
    return write_report(out_dir, "collapse", {"preset": preset, "models": results}, md)
