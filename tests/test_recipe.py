"""Training recipes (``--recipe fast``), label smoothing, the per-step linear schedule and the generated train flags."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.cli import main
from prunekit.errors import ConfigError
from prunekit.train import Callback, TrainConfig, Trainer
from prunekit.train.config import train_options
from prunekit.train.evaluate import task_loss
from prunekit.train.loop import linear_decay
from prunekit.train.recipe import Recipe, get_recipe, list_recipes, recipe_config

pytestmark = pytest.mark.usefixtures("one_thread")  # the RNGs: conftest restores them


def _parse(argv: list[str]):
    from prunekit.cli import _parse as parse
    from prunekit.cli.train import config_from_args

    return config_from_args(parse(argv)[1])


def test_fast_recipe_sets_its_values_and_given_values_win():
    assert {"default", "fast"} <= set(list_recipes())
    fast = get_recipe("fast").config()
    for key, value in get_recipe("fast").train.items():
        assert getattr(fast, key) == value
    assert fast.channels_last and fast.label_smoothing > 0 and fast.schedule == "linear"
    mine = recipe_config("fast", schedule="cosine", epochs=7)
    assert (mine.schedule, mine.epochs, mine.label_smoothing) == ("cosine", 7, fast.label_smoothing)
    assert recipe_config(None, epochs=2) == TrainConfig(epochs=2)


def test_unknown_recipe_and_bad_values_are_refused_by_name():
    with pytest.raises(ConfigError, match="unknown recipe 'quick'"):
        get_recipe("quick")
    with pytest.raises(ConfigError, match="unknown train config keys: epoch"):
        get_recipe("fast").config(epoch=3)
    with pytest.raises(ConfigError, match=r"label_smoothing must be in \[0, 1\), got 1.5"):
        get_recipe("fast").config(label_smoothing=1.5)
    with pytest.raises(ConfigError, match="recipe 'bad' sets unknown train config keys: lr_max"):
        Recipe("bad", "", {"lr_max": 1.0})
    with pytest.raises(ConfigError, match="schedule must be one of .*got 'onecycle'"):
        Recipe("bad", "", {"schedule": "onecycle"})


def test_cli_recipe_fills_only_the_flags_not_given():
    fast = get_recipe("fast").config()
    assert _parse(["train"]).train == TrainConfig()
    assert _parse(["train", "--recipe", "fast"]).train == fast
    # a flag given with the default's value still wins over the recipe's value
    cfg = _parse(["train", "--recipe", "fast", "--schedule", "cosine", "--no-channels-last", "--label-smoothing", "0",
                  "--epochs", "5"]).train
    assert (cfg.schedule, cfg.channels_last, cfg.label_smoothing, cfg.epochs) == ("cosine", False, 0.0, 5)
    assert cfg.warmup_epochs == fast.warmup_epochs
    assert _parse(["train", "--label-smoothing", "0.2", "--loader", "torch"]).train == \
        TrainConfig(label_smoothing=0.2, loader="torch")


def test_generated_train_flags_describe_their_option():
    specs = {s.name: s for s in train_options()}
    assert set(specs) == {"label_smoothing", "loader"}
    assert "[0, 1)" in specs["label_smoothing"].describe() and "unit: probability" in specs["label_smoothing"].describe()
    assert specs["loader"].choices == ("auto", "batch", "torch")


@pytest.mark.parametrize(("argv", "message"), [
    (["--recipe", "nope"], "argument --recipe: invalid choice: 'nope'"),
    (["--label-smoothing", "1.5"], "label_smoothing must be in [0, 1), got 1.5"),
    (["--label-smoothing", "x"], "argument --label-smoothing: invalid float value: 'x'"),
    (["--loader", "fast"], "argument --loader: invalid choice: 'fast'"),
    (["--recipe", "fast", "--workers", "2", "--loader", "batch"], "num_workers must be 0 with it, got 2"),
])
def test_cli_refuses_bad_values_naming_argument_and_value(argv, message, capsys):
    assert main(["train", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_trains_with_the_fast_recipe(capsys):
    rc = main(["train", "--recipe", "fast", "--model", "resnet20", "--dataset", "shapes", "--data-opt",
               "num_samples=48", "--data-opt", "num_test=16", "--data-opt", "image_size=16", "--epochs", "1",
               "--batch-size", "16", "--threads", "1", "--device", "cpu", "--json", "--no-progress"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    train = result["config"]["train"]
    assert result["status"] == "completed" and result["steps"] == 3
    assert (train["schedule"], train["channels_last"], train["batch_size"]) == ("linear", True, 16)
    assert train["label_smoothing"] == get_recipe("fast").train["label_smoothing"]


def test_label_smoothing_is_the_mixed_target_cross_entropy():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    eps = 0.1
    target = F.one_hot(y, 4).float() * (1 - eps) + eps / 4
    manual = -(target * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(task_loss(logits, y, "classification", label_smoothing=eps), manual)
    assert torch.equal(task_loss(logits, y, "classification"), F.cross_entropy(logits, y))


def test_linear_decay_values():
    assert linear_decay(0, 100) == 1.0 and linear_decay(50, 100) == 0.5 and linear_decay(99, 100) == pytest.approx(0.01)
    assert linear_decay(10, 100, warmup=20) == 1.0  # still warming up: the ramp scales it
    assert linear_decay(60, 100, warmup=20) == 0.5
    assert linear_decay(100, 100) == 0.0 and linear_decay(5, 0) == 1.0


class _Lrs(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_step_end(self, trainer, logs):
        self.lrs.append(logs["lr"])


def test_linear_schedule_warms_up_then_decays_to_zero_per_step():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(80, 8, generator=g), torch.randint(0, 4, (80,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    rec = _Lrs()
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.1, device="cpu", log_every=1, schedule="linear", warmup_epochs=0.5,
                      label_smoothing=0.1)
    Trainer(model, (DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True), None), cfg, callbacks=[rec]).fit()
    lrs = rec.lrs  # 20 steps, warm-up 5
    assert len(lrs) == 20
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert all(a > b for a, b in zip(lrs[5:], lrs[6:]))  # strictly down, per step, across the epoch boundary
    assert lrs[-1] == pytest.approx(0.1 / 15)
