"""Data-parallel training under ``torchrun`` (NCCL on GPUs, gloo on CPU), one process per device.

    torchrun --nproc_per_node 2 -m prunekit.train.ddp --config run.json [--workspace ws]
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 8 -m prunekit.train.ddp --config run.json

:class:`DistributedTrainer` is the ordinary :class:`~prunekit.train.loop.Trainer` with four changes:

* each rank reads its shard of every global batch (``DistributedSampler``, per-rank batch
  ``batch_size // world_size``, so ``TrainConfig.batch_size`` stays the *global* batch; a
  :class:`~prunekit.data.batches.BatchLoader` draws every global batch on every rank and yields the rank's slice);
* before every optimizer step the gradients are averaged over ranks (one flat all-reduce; the arithmetic of
  DDP, without its bucketing and overlap) and buffers (BN statistics) are broadcast from rank 0, so every
  rank applies the same update and parameters, gates included, stay identical;
* random masks stay identical because every rank seeds its global RNG from ``(seed, epoch)`` at each epoch
  (the loop does it) and draws the same numbers per step: the data sharding uses its own generator;
* only rank 0 runs the callbacks (run store, progress) and writes checkpoints; a stop request seen by
  rank 0 is all-reduced so every rank leaves the loop after the same step.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from prunekit.cost import count_params
from prunekit.data.batches import BatchLoader
from prunekit.errors import ConfigError
from prunekit.train.callbacks import Callback
from prunekit.train.config import RunConfig
from prunekit.train.evaluate import evaluate
from prunekit.train.experiment import build_experiment
from prunekit.train.loop import Trainer
from prunekit.train.store import RunStore, StoreCallback

logger = logging.getLogger(__name__)

_STEP_MIX = 0x2545F4914F6CDD1D


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(backend: str | None = None, device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...).

    Args:
        backend: ``nccl`` or ``gloo``; default NCCL when CUDA is used, else gloo.
        device: the run's device setting; ``cpu`` forces gloo even on a GPU machine.

    Returns:
        a single-process DistInfo when not launched by torchrun.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                        dist.get_backend())
    if not launched_by_torchrun():
        return DistInfo()
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    backend = backend or ("nccl" if use_cuda else "gloo")
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"backend must be nccl or gloo, got {backend!r}")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend)


def cleanup(wait_for_peers: bool = True) -> None:
    """Leave the process group. By default every rank first waits at a barrier for the others.

    Without the barrier a rank that finishes early tears its gloo connections down while a peer is still
    writing its checkpoint; the peer's transport threads then abort the process ("terminate called
    without an active exception"). A rank leaving on an error passes ``wait_for_peers=False`` so that it
    does not wait on peers that may never arrive.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if wait_for_peers and dist.get_world_size() > 1:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def step_seed(seed: int, step: int) -> int:
    """A seed from ``(seed, step)``, the same on every rank: for masks sampled outside the global RNG."""
    return (int(seed) * _STEP_MIX + int(step) + 1) % (2**63 - 1)


def step_generator(seed: int, step: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded by :func:`step_seed`: identical random masks on every rank at this step."""
    return torch.Generator(device=device).manual_seed(step_seed(seed, step))


def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers of rank ``src`` to every rank (identical start)."""
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src)


def average_gradients_(params: Sequence[torch.Tensor], world_size: int) -> None:
    """Replace every ``p.grad`` by its mean over ranks, with one flat all-reduce per dtype/device."""
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in groups.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(world_size)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n


def all_reduce_flag(flag: bool) -> bool:
    """True on every rank if it is True on any."""
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class _RankZero(Callback):
    """Runs the wrapped callbacks on rank 0 only and shares rank 0's stop decision with every rank."""

    def __init__(self, callbacks: Sequence[Callback], info: DistInfo) -> None:
        self.callbacks = list(callbacks)
        self.info = info

    def _each(self, event: str, *args: Any) -> None:
        if self.info.is_main:
            for cb in self.callbacks:
                getattr(cb, event)(*args)

    def on_train_start(self, trainer: Any) -> None:
        self._each("on_train_start", trainer)

    def on_step_end(self, trainer: Any, logs: dict[str, float]) -> None:
        self._each("on_step_end", trainer, logs)

    def on_layer_metrics(self, trainer: Any, rows: list[dict[str, Any]]) -> None:
        self._each("on_layer_metrics", trainer, rows)

    def on_epoch_end(self, trainer: Any, logs: dict[str, float]) -> None:
        self._each("on_epoch_end", trainer, logs)

    def on_train_end(self, trainer: Any, result: dict[str, Any]) -> None:
        self._each("on_train_end", trainer, result)

    def should_stop(self, trainer: Any) -> bool:
        local = self.info.is_main and any(cb.should_stop(trainer) for cb in self.callbacks)
        return all_reduce_flag(local) if self.info.distributed else local


def shard_loader(loader: DataLoader, info: DistInfo, seed: int) -> DataLoader:
    """The same data, each rank reading its ``1/world_size`` of every global batch."""
    if loader.batch_size is None:
        raise ConfigError("distributed training needs a DataLoader with a batch_size (not a batch_sampler)")
    if loader.batch_size % info.world_size:
        raise ConfigError(f"batch_size must be divisible by the world size {info.world_size}, got {loader.batch_size}")
    sampler = DistributedSampler(loader.dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=seed, drop_last=True)
    return DataLoader(loader.dataset, batch_size=loader.batch_size // info.world_size, sampler=sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      drop_last=loader.drop_last, persistent_workers=loader.persistent_workers)


class DistributedTrainer(Trainer):
    """:class:`Trainer` for one rank of a torchrun job; same arguments, plus ``dist_info``.

    With a single process (``world_size == 1``) it behaves exactly like ``Trainer``.
    """

    def __init__(self, *args: Any, dist_info: DistInfo | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dist = dist_info or init_distributed(device=self.config.device)
        if not self.dist.distributed:
            return
        if self.dist.backend == "nccl":
            self.device = torch.device("cuda", self.dist.local_rank)
        if isinstance(self.train_loader, DataLoader):
            self.train_loader = shard_loader(self.train_loader, self.dist, self.config.seed)
        elif isinstance(self.train_loader, BatchLoader):
            self.train_loader = self.train_loader.shard(self.dist.rank, self.dist.world_size)
        if isinstance(self.train_loader, (DataLoader, BatchLoader)):
            n = len(self.train_loader)
            self.steps_per_epoch = min(n, self.config.max_steps_per_epoch or n)
        self.callbacks = [_RankZero(self.callbacks, self.dist)]
        if not self.dist.is_main:
            self.checkpoint_dir = None

    def _setup(self) -> None:
        super()._setup()
        if not self.dist.distributed:
            return
        broadcast_module_(self.model)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        world, model = self.dist.world_size, self.model

        def _sync(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            average_gradients_(params, world)
            with torch.no_grad():  # BN running statistics: rank 0's, as DDP's broadcast_buffers does
                for b in model.buffers():
                    if b.is_floating_point():
                        dist.broadcast(b, 0)

        self.optimizer.register_step_pre_hook(_sync)

    def _seed_epoch(self, epoch: int) -> None:
        super()._seed_epoch(epoch)
        sampler = getattr(self.train_loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)


def run_distributed(
    cfg: Any, callbacks: Sequence[Callback] = (), checkpoint_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
) -> dict[str, Any]:
    """``run_experiment`` for one rank of a torchrun job (the test split is evaluated on every rank)."""
    info = init_distributed(device=cfg.train.device)
    exp = build_experiment(cfg)
    trainer = DistributedTrainer(exp.model, exp.loaders, cfg.train, exp.method, callbacks, exp.task,
                                 checkpoint_dir=checkpoint_dir, resume_from=resume_from, run_config=cfg.to_dict(),
                                 dist_info=info)
    result = trainer.fit()
    test = evaluate(trainer.model, exp.loaders.test, exp.task, trainer.device, channels_last=cfg.train.channels_last)
    result["metrics"].update({f"{k}/test": v for k, v in test.items() if k != "samples"})
    result.update(config=cfg.to_dict(), params=count_params(trainer.model), task=exp.task, world_size=info.world_size)
    return result


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="torchrun ... -m prunekit.train.ddp")
    p.add_argument("--config", required=True, help="RunConfig as JSON (a file path or an inline JSON object)")
    p.add_argument("--workspace", default=None, help="run store folder; rank 0 records the run there")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    text = a.config if a.config.lstrip().startswith("{") else Path(a.config).read_text()
    cfg = RunConfig.from_dict(json.loads(text))
    info = init_distributed(device=cfg.train.device)
    callbacks: list[Callback] = []
    ckpt_dir = None
    store = None
    run_id = None
    if info.is_main:
        store = RunStore(a.workspace)
        run_id = store.create_run(cfg.to_dict())
        ckpt_dir = store.run_dir(run_id) / "checkpoints"
        callbacks.append(StoreCallback(store, run_id, checkpoint_dir=ckpt_dir))
        logger.info("run %s on %d processes (%s)", run_id, info.world_size, info.backend or "single")
    try:
        result = run_distributed(cfg, callbacks, checkpoint_dir=ckpt_dir)
        if store is not None:
            store.set_status(run_id, "stopped" if result["status"] == "stopped" else "done",
                             result={k: v for k, v in result.items() if k != "model"})
    except BaseException as e:
        if store is not None:
            store.set_status(run_id, "failed", error=f"{type(e).__name__}: {e}")
        cleanup(wait_for_peers=False)
        raise
    cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
