"""The training progress bar of ``prunekit train``: tqdm on stderr, fed by the loop's callbacks."""

from __future__ import annotations

import sys
from typing import Any

from prunekit.train.callbacks import Callback


class ProgressBar(Callback):
    """A tqdm bar over all training steps on stderr, showing loss, train accuracy and the last val metric."""

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable
        self.bar: Any = None
        self._shown = 0
        self._postfix: dict[str, str] = {}

    def on_train_start(self, trainer: Any) -> None:
        from tqdm.auto import tqdm

        total = trainer.steps_per_epoch * trainer.config.epochs or None
        self.bar = tqdm(total=total, initial=trainer.step, unit="step", dynamic_ncols=True, disable=self.disable,
                        file=sys.stderr, desc="train")
        self._shown = trainer.step

    def _advance(self, trainer: Any) -> None:
        if self.bar is not None:
            self.bar.update(trainer.step - self._shown)
            self._shown = trainer.step

    def on_step_end(self, trainer: Any, logs: dict[str, float]) -> None:
        if "loss" in logs:
            self._postfix["loss"] = f"{logs['loss']:.3f}"
        if "acc/train" in logs:
            self._postfix["acc"] = f"{logs['acc/train']:.3f}"
        self._advance(trainer)
        if self.bar is not None:
            self.bar.set_postfix(self._postfix, refresh=False)

    def on_epoch_end(self, trainer: Any, logs: dict[str, float]) -> None:
        self._advance(trainer)
        for key in ("acc/val", "miou/val"):
            if key in logs:
                self._postfix[key.replace("/", "_")] = f"{logs[key]:.3f}"
        if self.bar is not None:
            self.bar.set_description(f"epoch {logs.get('epoch', trainer.epoch)}/{trainer.config.epochs}")
            self.bar.set_postfix(self._postfix)

    def on_train_end(self, trainer: Any, result: dict[str, Any]) -> None:
        if self.bar is not None:
            self._advance(trainer)
            self.bar.close()
            self.bar = None
