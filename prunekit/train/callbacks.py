"""Callbacks: how the training loop talks to the outside (run store, progress bars, dashboards).

The loop calls, in order: ``on_train_start(trainer)``, then per step ``on_step_end(trainer, logs)``
(``logs`` holds the scalar metrics of that step, names as in ``prunekit.methods.base``), then per
epoch ``on_epoch_end(trainer, logs)``, and finally ``on_train_end(trainer, result)``. ``layer_logs``
(per-layer rows) are delivered through ``on_layer_metrics(trainer, rows)`` every ``log_every`` steps.
After every step the loop asks ``should_stop(trainer)``; any callback returning True ends training
gracefully after that step (the loop then checkpoints and reports ``stopped``).

A trainer exposes ``model``, ``method``, ``optimizer``, ``config`` (TrainConfig), ``step`` (global
step, 0-based count of finished steps), ``epoch`` and ``device``.
"""

from __future__ import annotations

from typing import Any


class Callback:
    def on_train_start(self, trainer: Any) -> None:
        pass

    def on_step_end(self, trainer: Any, logs: dict[str, float]) -> None:
        pass

    def on_layer_metrics(self, trainer: Any, rows: list[dict[str, Any]]) -> None:
        pass

    def on_epoch_end(self, trainer: Any, logs: dict[str, float]) -> None:
        pass

    def on_train_end(self, trainer: Any, result: dict[str, Any]) -> None:
        pass

    def should_stop(self, trainer: Any) -> bool:
        return False
