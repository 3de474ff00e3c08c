"""``prunekit bench collapse``: does collapse work, is it exact, how fast, and does it really run faster?

For each model: 50% random channel masks on every prunable group → collapse → max |slim − gated|,
collapse time, MACs and params before/after, CPU latency at batch 1 and 64 and the speedup ÷ MACs
reduction. Side by side, Torch-Pruning (``MagnitudePruner``, same 50% ratio per group) on the same model:
whether it handles it, its pruning time and speedup. The dense, prunekit-slim and Torch-Pruning networks
of one model are timed interleaved (``prunekit.latency.measure_latency_interleaved``), so a change of
machine load cannot pass for a difference between the tools. A model that cannot be handled is reported
with its reason (analysis time is bounded, no hangs).

**round_to and the latency table** (presets with ``round_to``; issue 17 items 3 and 4). 50 % masks keep widths that
are already multiples of 8 on most models, so round_to is measured on masks of *uneven* widths: every group keeps
a random share drawn from U(0.35, 0.65) (seeded), "off" as drawn, "on" rounded to multiples of ``round_to`` by
``prunekit.methods.round_masks`` (random scores). Both slim networks are timed interleaved with the dense
one (eager, and with ``inference`` as deployed); the speed-up ÷ MACs reduction of each uses its own MACs. The
latency table of the dense network (``prunekit.latency_table``, batch 1 and 64, torch's thread count; its untimed
rest fitted to a half-width reference network, as a ``target_latency`` run does) predicts both slim networks'
latency ÷ dense; the fit column is predicted ÷ measured − 1 (eager, same interleaved run).
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
from prunekit.latency_table import build_latency_table, varying_dims
from prunekit.methods import latency_reference, round_masks
from prunekit.models import list_models

log = logging.getLogger(__name__)

# The wider zoo of issue 19 (tests/test_zoo.py checks each exactly): name -> (input side, builder options), the
# smallest input each model allows; the CNNs of tests/test_collapse.py and the in-house models come on top.
ZOO_TORCHVISION: dict[str, tuple[int, dict[str, Any]]] = {
    "tv:convnext_tiny": (32, {}),
    "tv:shufflenet_v2_x0_5": (64, {}),
    "tv:vit_b_16": (32, {"image_size": 32}),
    "tv:swin_t": (32, {}),
    "tv:mobilenet_v3_large": (64, {}),
    "tv:regnet_y_400mf": (64, {}),
    "tv:mnasnet1_0": (64, {}),
    "tv:squeezenet1_0": (64, {}),
    "tv:resnet34": (64, {}),
}
ZOO_TIMM: dict[str, tuple[int, dict[str, Any]]] = {
    "timm:deit_tiny_patch16_224": (64, {"img_size": 64}),
    "timm:vit_small_patch16_224": (64, {"img_size": 64}),
    "timm:swin_tiny_patch4_window7_224": (32, {"img_size": 32, "window_size": 4}),
    "timm:resnet18": (64, {}),
    "timm:resnet18d": (64, {}),
    "timm:convnext_atto": (64, {}),
    "timm:mobilenetv3_small_050": (64, {}),
    "timm:efficientnet_b0": (64, {}),
    "timm:regnetx_002": (64, {}),
    "timm:lcnet_050": (64, {}),
    "timm:poolformer_s12": (64, {}),
    "timm:pvt_v2_b0": (64, {}),  # attention without a known head layout: its Q/K/V width stays whole
}
# Torch-Pruning is not run on the attention models: on timm's DeiT-Tiny and torchvision's Swin-T (64/32 px) its
# MagnitudePruner used more than 16 GB here and the process was killed (2026-12-02), so these rows say so instead.
ZOO_NO_TORCH_PRUNING = {"tv:vit_b_16", "tv:swin_t", "timm:deit_tiny_patch16_224", "timm:vit_small_patch16_224",
                        "timm:swin_tiny_patch4_window7_224", "timm:pvt_v2_b0"}
ZOO_CNN = ["tv:vgg11_bn", "tv:resnet18", "tv:resnet50", "tv:mobilenet_v2", "tv:mobilenet_v3_small", "tv:efficientnet_b0",
           "tv:mnasnet0_5", "tv:densenet121", "tv:googlenet", "tv:squeezenet1_1", "tv:resnext50_32x4d",
           "tv:regnet_x_400mf"]

PRESETS: dict[str, dict[str, Any]] = {
    # the headline pair plus one of each family, small inputs: minutes on 2 CPU cores
    "quick": {
        "models": ["resnet56", "tv:resnet50", "resnet20", "vgg16", "mobilenetv2", "unet", "tv:mobilenet_v3_small", "tv:densenet121"],
        "size": 32,
        "tv_size": 64,
        "repeats": 5,
        "round_to": 8,  # round_to off/on columns; no latency table (DenseNet-121's 120 layer shapes take minutes)
    },
    # every in-house model and every torchvision classification model
    "full": {"models": None, "size": 32, "tv_size": 64, "repeats": 5},
    # the engine's wider zoo (issue 19): in-house, torchvision CNNs, ConvNeXt, ShuffleNet, ViT/Swin and timm, each at
    # its smallest input, beside Torch-Pruning where it can prune them
    "zoo": {"models": "zoo", "size": 32, "tv_size": 64, "repeats": 3, "inputs": {**ZOO_TORCHVISION, **ZOO_TIMM},
            "no_torch_pruning": ZOO_NO_TORCH_PRUNING},
    # issue 17's latency set: eager and inference form (BN folded), PyTorch and ONNX Runtime
    "latency": {
        "models": ["resnet20", "resnet56", "vgg16", "mobilenetv2", "unet", "tv:resnet50"],
        "size": 32,
        "tv_size": 64,
        "repeats": 5,
        "inference": True,
        "onnxruntime": True,
        "round_to": 8,
        "table": {"rounds": 5, "repeats": 2},
    },
    # the latency preset's columns on two small models: a check that takes about a minute on 2 cores
    "latency-quick": {
        "models": ["resnet20", "mobilenetv2"],
        "size": 32,
        "tv_size": 64,
        "repeats": 3,
        "inference": True,
        "onnxruntime": True,
        "round_to": 8,
        "table": {"rounds": 3, "repeats": 2},
    },
}
BATCHES = (1, 64)


def _models(preset: dict[str, Any]) -> list[str]:
    if preset["models"] == "zoo":
        return [*list_models(include_torchvision=False), *ZOO_CNN, *ZOO_TORCHVISION, *ZOO_TIMM]
    return preset["models"] or list_models(include_torchvision=True)


def _create(name: str, cfg: dict[str, Any]) -> torch.nn.Module:
    """``name`` with 10 classes and the preset's builder options for it, in eval mode."""
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("tv:googlenet", "tv:inception_v3") else {}
    kwargs.update(cfg.get("inputs", {}).get(name, (None, {}))[1])
    return pk.create_model(name, num_classes=10, **kwargs).eval()


def _size(name: str, cfg: dict[str, Any]) -> int:
    side = cfg.get("inputs", {}).get(name, (None, {}))[0]
    return side or (cfg["tv_size"] if name.startswith(("tv:", "timm:")) else cfg["size"])


def _half_masks(gated, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for h in gated.groups:
        keep = torch.zeros(h.size, dtype=torch.bool)
        keep[torch.randperm(h.size, generator=g)[: max(1, h.size // 2)]] = True
        h.set_mask(keep)


def _uneven_masks(gated, seed: int = 0) -> None:
    """Every group keeps a random share from U(0.35, 0.65) of its channels (at least one)."""
    g = torch.Generator().manual_seed(seed)
    for h in gated.groups:
        share = 0.35 + 0.3 * float(torch.rand(1, generator=g))
        keep = torch.zeros(h.size, dtype=torch.bool)
        keep[torch.randperm(h.size, generator=g)[: max(1, round(share * h.size))]] = True
        h.set_mask(keep)


def _round_to_row(name: str, x: torch.Tensor, nets: dict[str, torch.nn.Module], cfg: dict[str, Any]) -> dict[str, Any]:
    """Uneven masks, collapsed as drawn (``uneven``) and rounded to ``round_to`` (``rounded``); their MACs and the
    latency table's predicted latency ratios at every batch of :data:`BATCHES`."""
    from prunekit.cost import cost_model, gate_values

    model = _create(name, cfg)
    dense_copy = _create(name, cfg)
    dense_copy.load_state_dict(model.state_dict())
    gated = pk.augment(model, x, timeout_s=60)
    reference = latency_reference(gated) if cfg.get("table") else None  # half width: what the table fits c to
    _uneven_masks(gated)
    drawn = [h.gate.keep.clone() for h in gated.groups]
    scores = [torch.rand(h.size, generator=torch.Generator().manual_seed(h.index)) for h in gated.groups]
    rounded = round_masks(drawn, scores, cfg["round_to"])
    t0 = time.perf_counter()
    tables = {b: build_latency_table(dense_copy, x, b, varying=varying_dims(gated), reference=reference,
                                     **cfg["table"]) for b in BATCHES} if cfg.get("table") else {}
    t_table = time.perf_counter() - t0
    macs0 = pk.count_macs(dense_copy, x)
    row: dict[str, Any] = {"round_to": cfg["round_to"], "table_s": t_table if tables else None,
                           "table_cached": all(not t.timed for t in tables.values())}
    for key, masks in (("uneven", drawn), ("rounded", rounded)):
        for h, m in zip(gated.groups, masks):
            h.set_mask(m)
        counts = cost_model(gated).channels(gate_values(gated, "hard"))
        slim = pk.collapse(gated)
        nets[key] = slim
        macs = pk.count_macs(slim, x)
        row[key] = {"macs_after": macs, "macs_reduction": macs0 / max(macs, 1),
                    "multiples": sum(int(m.sum()) % cfg["round_to"] == 0 or bool(m.all()) for m in masks),
                    "groups": len(masks),
                    "predicted_ratio": {b: float(t.ratio(counts)) for b, t in tables.items()}}
    nets.setdefault("dense", dense_copy)
    return row


def _prunekit_row(name: str, x: torch.Tensor, nets: dict[str, torch.nn.Module], cfg: dict[str, Any]) -> dict[str, Any]:
    model = _create(name, cfg)
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


def _torch_pruning_row(name: str, x: torch.Tensor, nets: dict[str, torch.nn.Module], cfg: dict[str, Any]) -> dict[str, Any]:
    import torch_pruning as tp

    model = _create(name, cfg)
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
    lat = measure_latency_interleaved(nets, x, BATCHES, rounds=cfg["repeats"], repeats=2)
    rt = row.get("round_to")
    if rt and rt.get("ok"):
        for key in ("uneven", "rounded"):
            r = rt[key]
            r["latency_ms"] = lat[key]
            for b in BATCHES:
                measured = lat[key][b] / lat["dense"][b]
                r[f"speedup_over_macs_b{b}"] = 1 / measured / r["macs_reduction"]
                if b in r["predicted_ratio"]:
                    r[f"fit_b{b}"] = r["predicted_ratio"][b] / measured - 1
            if cfg.get("inference"):
                forms = latency_forms(nets["dense"], nets[key], x, BATCHES, rounds=cfg["repeats"], onnxruntime=False,
                                      eager=False)["inference"]
                for b in BATCHES:
                    r[f"speedup_inf_over_macs_b{b}"] = forms["before"][b] / forms["after"][b] / r["macs_reduction"]
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


def _round_to_md(results: dict[str, Any], cfg: dict[str, Any]) -> str:
    """The round_to and latency-table section of the report."""
    headers = ["model", "MACs red. off→on", "groups on multiples off→on", "speedup÷MACs b1 off→on", "b64 off→on"]
    if cfg.get("inference"):
        headers += ["inference form b1 off→on", "b64 off→on"]
    headers += ["table fit b1 off/on", "table fit b64 off/on", "table s"]
    rows = []

    def pair(r: dict[str, Any], key: str, fmt: str = "{:.2f}") -> str:
        a, b = r["uneven"].get(key), r["rounded"].get(key)
        return "—" if a is None or b is None else f"{fmt.format(a)}→{fmt.format(b)}"

    for name, row in results.items():
        r = row.get("round_to")
        if not r:
            continue
        if not r.get("ok"):
            rows.append([name, "fails: " + r["error"]] + [None] * (len(headers) - 2))
            continue
        cells = [name, pair(r, "macs_reduction"),
                 f"{r['uneven']['multiples']}→{r['rounded']['multiples']} of {r['rounded']['groups']}",
                 pair(r, "speedup_over_macs_b1"), pair(r, "speedup_over_macs_b64")]
        if cfg.get("inference"):
            cells += [pair(r, "speedup_inf_over_macs_b1"), pair(r, "speedup_inf_over_macs_b64")]
        cells += [pair(r, "fit_b1", "{:+.0%}").replace("→", " / "), pair(r, "fit_b64", "{:+.0%}").replace("→", " / "),
                  r["table_s"]]
        rows.append(cells)
    return (
        f"\n## round_to={cfg['round_to']} and the latency table\n\nUneven masks (every group keeps U(0.35, 0.65) of its "
        "channels, seeded): off = as drawn, on = rounded to multiples of round_to by the same random ranking. "
        "Speed-up ÷ MACs reduction with each network's own MACs, timed interleaved with the dense network. Table fit = "
        "the latency table's predicted latency ratio (slim ÷ dense) ÷ the measured eager ratio − 1 "
        + (f"(table: batch 1 and 64, {torch.get_num_threads()} thread(s), {cfg['table']['rounds']} rounds × "
           f"{cfg['table']['repeats']} runs per grid point; 'table s' = time to build both, ≈ 0 when cached)"
           if cfg.get("table") else "(no latency table in this preset: '—')") + ".\n\n"
        + md_table(headers, rows)
    )


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
        preset: ``quick`` (8 models: ResNet-56, tv:resnet50 and one of each family), ``full`` (every in-house and
            torchvision model), ``zoo`` (issue 19's wider zoo with timm and transformers, each at its smallest input),
            ``latency`` (issue 17's six models: inference form, ONNX Runtime, round_to, latency-table fit) or
            ``latency-quick`` (the latency preset's columns on ResNet-20 and MobileNetV2).
        models: override the model list.
        torch_pruning: also prune each model with Torch-Pruning's MagnitudePruner at the same ratio.
    """
    if preset not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    cfg = PRESETS[preset]
    names = models or _models(cfg)
    results: dict[str, Any] = {}
    for name in names:
        size = _size(name, cfg)
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        log.info("bench collapse: %s", name)
        nets: dict[str, torch.nn.Module] = {}
        row = {"input": list(x.shape), "prunekit": _guard(_prunekit_row, name, x, nets, cfg)}
        if torch_pruning and name in cfg.get("no_torch_pruning", ()):
            row["torch_pruning"] = {"ok": False, "error": "not run (its pruner exhausted memory on attention models here)"}
        elif torch_pruning:
            row["torch_pruning"] = _guard(_torch_pruning_row, name, x, nets, cfg)
        if cfg.get("round_to"):
            row["round_to"] = _guard(_round_to_row, name, x, nets, cfg)
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
    md_round = _round_to_md(results, cfg) if cfg.get("round_to") else ""
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
        + md_round
    )
    return write_report(out_dir, "collapse", {"preset": preset, "models": results}, md)
