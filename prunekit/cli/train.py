"""``prunekit train``: one experiment from the command line, with a progress bar and a summary table.

The parser is built in two steps so that help and argument errors of the other commands, and the usual typos
here, need no torch: :func:`register` adds the flags, :func:`check` checks names and ``KEY=VALUE`` options
without heavy imports, and :func:`complete` adds what comes from torch-importing modules (the defaults of
``TrainConfig``/``RunConfig``, the optimizer and schedule choices, one flag per method option). ``prunekit``
calls ``complete`` only when this command runs or shows its help.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunekit.cli._common import (
    add_data_root_arg,
    add_parser,
    data_root,
    format_table,
    human,
    model_macs,
    out,
    parse_kv,
    parse_value,
    to_json,
)
from prunekit.cli._names import check_name
from prunekit.cli.runs import add_background_option, launch_background
from prunekit.errors import ConfigError

if TYPE_CHECKING:
    from prunekit.methods import OptionSpec
    from prunekit.train.config import RunConfig

METHOD_OPT_PREFIX = "method_opt__"  # argparse dest of a generated method-option flag
GIVEN = "given_"  # argparse dest: the train flags given on the command line (a --recipe fills only the others)
# argparse dest -> TrainConfig field, for the flags whose name differs (the rest: same name)
_TRAIN_DEST = {"threads": "num_threads", "workers": "num_workers", "no_amp": "amp"}


def method_option_owners() -> dict[str, list[tuple[str, OptionSpec]]]:
    """Every option name of every registered method -> the methods that have it, with their specs."""
    from prunekit.methods import list_methods, method_class

    owners: dict[str, list[tuple[str, OptionSpec]]] = {}
    for name in list_methods():
        for spec in method_class(name).options():
            owners.setdefault(spec.name, []).append((name, spec))
    return owners


def add_method_option_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--<option>`` flag per option name of the registered methods (generated from their Configs); a name
    that is already a flag of ``train`` (``--lr``, ``--seed``) is reachable as ``--method-opt KEY=VALUE``."""
    taken = set(parser._option_string_actions)
    g = parser.add_argument_group(
        "method options", "generated from each method's Config (see 'prunekit list methods --details'); a flag applies to "
        "the methods its help names; every option also works as --method-opt KEY=VALUE")
    for name, owners in sorted(method_option_owners().items()):
        flag = "--" + name.replace("_", "-")
        if flag in taken:
            continue
        defaults = ", ".join(f"{m} {s.default!r}" for m, s in owners)
        spec = owners[0][1]
        g.add_argument(flag, dest=METHOD_OPT_PREFIX + name, default=argparse.SUPPRESS, metavar=spec.kind.upper(),
                       help=f"{spec.describe()} [default: {defaults}]".replace("%", "%%"))


def parse_option_value(spec: OptionSpec, text: Any, flag: str) -> Any:
    """A command-line value turned into the option's type (ConfigError naming the flag and the value)."""
    value = parse_value(text) if isinstance(text, str) else text
    if value is None and spec.nullable:
        return None
    try:
        if spec.kind == "int" and not isinstance(value, bool):
            return int(value)
        if spec.kind == "float" and not isinstance(value, bool):
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} must be a {spec.kind}, got {text!r}") from None
    if spec.kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{flag} must be true or false, got {text!r}")
    if spec.kind == "choice" and value not in spec.choices:
        value = str(text)
    return tuple(value) if isinstance(spec.default, tuple) and isinstance(value, list) else value


def register(subparsers: Any) -> None:
    p = add_parser(subparsers, "train", "train a model (optionally with a pruning method)",
                   "Train MODEL on DATASET, optionally with a pruning METHOD; prints a summary table.")
    add_train_arguments(p)
    add_background_option(p)
    p.set_defaults(func=run)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``train`` (and ``sweep``), without what needs torch: :func:`complete` adds their defaults."""
    g = p.add_argument_group("experiment")
    g.add_argument("--model", help="model name (see 'prunekit list models'; tv:NAME for torchvision)")
    g.add_argument("--dataset", help="dataset name (see 'prunekit list datasets')")
    g.add_argument("--method", help="pruning method (see 'prunekit list methods')")
    g.add_argument("--method-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the method's config; repeatable")
    g.add_argument("--data-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a dataset option, e.g. num_samples=2000 for shapes; repeatable")
    add_data_root_arg(g)
    g.add_argument("--in-channels", type=int, default=None, help="model input channels (default: the data's)")
    g.add_argument("--num-classes", type=int, default=None, help="model classes (default: the data's)")
    g.add_argument("--val-fraction", type=float, help="share of train held out for validation")
    g.add_argument("--name", default=None, help="a name for this run")

    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, help="training epochs")
    o.add_argument("--batch-size", type=int, help="mini-batch size")
    o.add_argument("--lr", type=float, help="base learning rate")
    o.add_argument("--optimizer", help="optimizer (sdprun only with --method sdprun)")
    o.add_argument("--momentum", type=float, help="SGD momentum")
    o.add_argument("--nesterov", action="store_true", help="Nesterov momentum for SGD")
    o.add_argument("--weight-decay", type=float, help="weight decay")
    o.add_argument("--schedule", help="lr schedule, stepped per epoch")
    o.add_argument("--milestones", type=int, nargs="*", help="epochs where the step schedule multiplies lr by --gamma")
    o.add_argument("--gamma", type=float, help="lr factor at each milestone")
    o.add_argument("--warmup-epochs", type=float, help="linear lr warm-up over this many epochs (at most half the run)")
    o.add_argument("--seed", type=int, help="random seed (data order, init, noise)")
    o.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap on steps per epoch (quick runs)")
    o.add_argument("--log-every", type=int, help="steps between logged metrics")
    o.add_argument("--recipe", default=None,
                   help="a training recipe: its values replace the defaults of the flags above (flags given still win); "
                        "'fast': label smoothing, per-step linear lr decay, channels_last (see 'prunekit bench recipe')")

    d = p.add_argument_group("hardware")
    d.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    d.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    d.add_argument("--workers", type=int, help="data loader worker processes")
    d.add_argument("--no-amp", action="store_true", help="disable mixed precision (used on CUDA only)")
    d.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False,
                   help="channels-last memory format (--no-channels-last: off, e.g. after --recipe fast)")

    r = p.add_argument_group("output")
    r.add_argument("--out", default=None, metavar="DIR",
                   help="folder for the checkpoint (last.pt), config.json and result.json")
    r.add_argument("--resume", default=None, metavar="CHECKPOINT", help="continue from this checkpoint")
    r.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")


def check(args: argparse.Namespace) -> None:
    """What can be checked before torch is imported: the model, dataset and method names (as the registries word
    their errors) and the ``KEY=VALUE`` options; ConfigError otherwise. The values themselves are checked by
    TrainConfig/RunConfig and the method (in :func:`config_from_args`)."""
    check_name("model", args.model)
    check_name("dataset", args.dataset)
    check_name("method", args.method)
    parse_kv(args.method_opt, "--method-opt")
    parse_kv(args.data_opt, "--data-opt")
    data_root(args.data_root)


def complete(p: argparse.ArgumentParser) -> None:
    """Add to ``p`` (built by :func:`add_train_arguments`) what comes from modules that import torch: the defaults
    of TrainConfig and RunConfig, the optimizer and schedule choices, and the generated method-option flags."""
    from prunekit.optim import optimizer_names
    from prunekit.train.config import SCHEDULES, RunConfig, TrainConfig
    from prunekit.train.recipe import list_recipes

    t, r = TrainConfig(), RunConfig()
    p.set_defaults(
        model=r.model, dataset=r.dataset, method=r.method, val_fraction=r.val_fraction, epochs=t.epochs,
        batch_size=t.batch_size, lr=t.lr, optimizer=t.optimizer, momentum=t.momentum, weight_decay=t.weight_decay,
        schedule=t.schedule, milestones=list(t.milestones), gamma=t.gamma, warmup_epochs=t.warmup_epochs,
        seed=t.seed, log_every=t.log_every, device=t.device, workers=t.num_workers,
    )
    actions = p._option_string_actions
    actions["--optimizer"].choices = optimizer_names()
    actions["--schedule"].choices = SCHEDULES
    actions["--recipe"].choices = list_recipes()
    add_train_option_flags(p)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for action in p._actions:
        if _TRAIN_DEST.get(action.dest, action.dest) in train_fields and not isinstance(action, _Given):
            action.__class__ = _given_class(type(action))
    add_method_option_flags(p)


class _Given(argparse.Action):
    """Marks an action whose use is noted in ``namespace.given_`` (see :func:`_given_class`)."""


@functools.cache
def _given_class(base: type[argparse.Action]) -> type[argparse.Action]:
    """``base`` (argparse's store, store_true, ...) that also notes its dest in ``namespace.given_`` when the flag is
    on the command line: a --recipe value must not replace a value the user gave, even one equal to the default."""

    def __call__(self: argparse.Action, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        base.__call__(self, parser, namespace, values, option_string)
        setattr(namespace, GIVEN, (*getattr(namespace, GIVEN, ()), self.dest))

    return type(f"Given{base.__name__}", (base, _Given), {"__call__": __call__})


def add_train_option_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field declared with ``option()`` (``train_options()``), help from its spec."""
    from prunekit.train.config import train_options

    group = next((g for g in p._action_groups if g.title == "optimisation"), p)
    for spec in train_options():
        flag = "--" + spec.name.replace("_", "-")
        if flag in p._option_string_actions:
            continue
        kind = {"int": int, "float": float}.get(spec.kind)
        group.add_argument(flag, dest=spec.name, type=kind, default=spec.default, choices=spec.choices or None,
                           metavar=None if spec.choices else spec.kind.upper(),
                           help=f"{spec.describe()} [default: {spec.default!r}]".replace("%", "%%"))


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--method-opt`` pairs plus the generated method-option flags, typed and checked against the method."""
    from prunekit.methods import method_class

    cls = method_class(args.method)
    specs = {s.name: s for s in cls.options()}
    given = {k[len(METHOD_OPT_PREFIX):]: v for k, v in vars(args).items()
             if k.startswith(METHOD_OPT_PREFIX) and v is not None}
    opts: dict[str, Any] = {}
    for name, value in given.items():
        flag = "--" + name.replace("_", "-")
        if name not in specs:
            raise ConfigError(f"{flag} is not an option of method {args.method!r}"
                              + (f" (its options: {', '.join(sorted(specs))})" if specs else " (it has no options)"))
        opts[name] = parse_option_value(specs[name], value, flag)
    for name, value in parse_kv(args.method_opt, "--method-opt").items():
        opts[name] = parse_option_value(specs[name], value, f"--method-opt {name}") if name in specs else value
    return opts


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig the flags describe (ConfigError on bad values)."""
    from prunekit.train.config import RunConfig, train_options
    from prunekit.train.recipe import recipe_config

    values = dict(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        momentum=args.momentum, nesterov=args.nesterov, weight_decay=args.weight_decay, schedule=args.schedule,
        milestones=tuple(args.milestones), gamma=args.gamma, warmup_epochs=args.warmup_epochs, device=args.device, amp=not args.no_amp,
        channels_last=args.channels_last, seed=args.seed, num_threads=args.threads, log_every=args.log_every,
        max_steps_per_epoch=args.max_steps_per_epoch, num_workers=args.workers,
        **{s.name: getattr(args, s.name, s.default) for s in train_options()},
    )
    recipe = getattr(args, "recipe", None)
    if recipe:
        given = {_TRAIN_DEST.get(d, d) for d in getattr(args, GIVEN, ())}
        # the recipe's values where no flag was given
        values = {k: v for k, v in values.items() if k in given}
    train = recipe_config(recipe, **values)
    return RunConfig(
        model=args.model, dataset=args.dataset, method=args.method, method_options=method_options(args),
        train=train, data_root=data_root(args.data_root), data_options=parse_kv(args.data_opt, "--data-opt"),
        in_channels=args.in_channels, num_classes=args.num_classes, val_fraction=args.val_fraction, name=args.name,
    )


def summary_rows(result: dict[str, Any], macs: float | None) -> list[tuple[str, str]]:
    m = result["metrics"]
    rows = [("model", f"{result['config']['model']} ({result['config']['method']})"),
            ("dataset", result["config"]["dataset"]),
            ("status", f"{result['status']} after {result['epochs']} epochs, {result['steps']} steps")]
    for key in ("acc/val", "acc/test", "miou/val", "miou/test", "loss/test"):
        if key in m:
            rows.append((key, f"{m[key]:.4f}"))
    rows.append(("params", human(result["params"])))
    if macs is not None:
        rows.append(("MACs", human(macs)))
    report = result.get("method_report") or {}
    if "relaxation_macs_ratio" in report:
        own, flips = report["relaxation_macs_ratio"], report.get("calibration_flips", 0.0)
        rows.append(("own rule", f"{own:.3f} of dense MACs (what the method decided before any calibration)"))
        rows.append(("calibration", f"changed {flips:.1%} of the keep/remove decisions" if flips else "none needed"))
    if "mask_moved" in report:
        rows.append(("mask moved", f"{report['mask_moved']:.1%} of the kept channels were not in the initial top-k"))
    if "sparsity" in report:
        rows.append(("sparsity", f"{report['sparsity']:.3f}"))
    size = report.get("size")
    if isinstance(size, dict) and "bits" in size:
        rows.append(("size", f"{size['bits'] / 8e6:.3f} MB ({size.get('ratio', float('nan')):.3f} of dense fp32)"))
    rows.append(("train time", f"{result['train_time_s']:.1f} s"))
    rows.append(("throughput", f"{result['throughput']:.0f} img/s"))
    rows += [("warning", w) for w in result.get("warnings") or ()]
    return rows


def run(args: argparse.Namespace) -> int:
    from prunekit.cli._progress import ProgressBar
    from prunekit.train.experiment import run_experiment

    cfg = config_from_args(args)
    if args.background:
        return launch_background(args, cfg)
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    bar = ProgressBar(disable=args.no_progress or args.json)
    result = run_experiment(cfg, callbacks=[bar], checkpoint_dir=out_dir, resume_from=args.resume)
    macs = model_macs(result["model"], _example_input(result))
    if macs is not None:
        result["macs"] = macs
    if out_dir is not None:
        (out_dir / "result.json").write_text(to_json(result))
    out(to_json(result) if args.json else format_table(summary_rows(result, macs), title="prunekit train"))
    return 0


def _example_input(result: dict[str, Any]) -> Any:
    import torch

    info = result["dataset"]
    h, w = info["image_size"]
    param = next(result["model"].parameters())
    return torch.zeros(1, info["in_channels"], h, w, device=param.device)
