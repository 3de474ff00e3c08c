"""Data-parallel training: 2 gloo processes under torchrun end with the same weights and gates as one process
training on the same global batches; gates stay identical across ranks; only rank 0 runs callbacks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from prunekit.train.ddp import DistInfo, average_gradients_, cleanup, init_distributed, step_generator, step_seed

_COMMON = textwrap.dedent('''
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset
    from prunekit.train.config import TrainConfig

    class Gate(nn.Module):
        """A concrete-relaxation channel gate whose noise comes from the global RNG."""

        def __init__(self, c):
            super().__init__()
            self.logits = nn.Parameter(torch.zeros(c))

        def forward(self, x):
            if self.training:
                u = torch.rand_like(self.logits).clamp(1e-6, 1 - 1e-6)
                m = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.logits) / 0.5)
            else:
                m = torch.sigmoid(self.logits)
            return x * m.view(1, -1, 1, 1)

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Gate(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(8, 4))

    def dataset():
        g = torch.Generator().manual_seed(1)
        return TensorDataset(torch.randn(128, 3, 8, 8, generator=g), torch.randint(0, 4, (128,), generator=g))

    CFG = TrainConfig(epochs=2, batch_size=16, lr=0.2, momentum=0.9, weight_decay=0.0, log_every=1, seed=5,
                      schedule="constant", device="cpu")
''')

_WORKER = textwrap.dedent('''
    import json, sys
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader
    from prunekit.train.callbacks import Callback
    from prunekit.train.ddp import DistributedTrainer, cleanup, init_distributed
    from pk_ddp_common import CFG, build, dataset

    out = sys.argv[1]
    info = init_distributed(device="cpu")

    class Count(Callback):
        n = 0
        def on_step_end(self, trainer, logs):
            Count.n += 1

    model = build()
    loader = DataLoader(dataset(), batch_size=CFG.batch_size, shuffle=True)
    tr = DistributedTrainer(model, (loader, None), CFG, None, [Count()], checkpoint_dir=f"{out}/ck{info.rank}",
                            dist_info=info)
    result = tr.fit()
    torch.save({k: v.detach().clone() for k, v in tr.model.state_dict().items()}, f"{out}/state{info.rank}.pt")
    json.dump({"rank": info.rank, "world": info.world_size, "backend": info.backend, "callback_steps": Count.n,
               "steps": result["steps"], "steps_per_epoch": tr.steps_per_epoch},
              open(f"{out}/info{info.rank}.json", "w"))
    cleanup()
''')


class _GlobalBatches:
    """The global batches of a 2-rank DistributedSampler(shuffle, drop_last) run, as one process sees them."""

    def __init__(self, n: int, world: int, per_rank: int, seed: int) -> None:
        self.n, self.world, self.per_rank, self.seed, self.epoch = n, world, per_rank, seed, 0

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        idx = torch.randperm(self.n, generator=g).tolist()
        total = self.n // self.world * self.world
        shards = [idx[r:total:self.world] for r in range(self.world)]
        for k in range(len(self))[: len(shards[0]) // self.per_rank]:
            yield [i for s in shards for i in s[k * self.per_rank:(k + 1) * self.per_rank]]

    def __len__(self) -> int:
        return self.n // self.world // self.per_rank


def test_single_process_helpers():
    assert init_distributed() == DistInfo() and DistInfo().is_main and not DistInfo().distributed
    assert step_seed(1, 2) == step_seed(1, 2) != step_seed(1, 3)
    a = torch.rand(4, generator=step_generator(7, 10))
    assert torch.equal(a, torch.rand(4, generator=step_generator(7, 10)))


def test_average_gradients_in_a_gloo_group_of_one(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        p = torch.nn.Parameter(torch.ones(3))
        p.grad = torch.tensor([2.0, 4.0, 6.0])
        q = torch.nn.Parameter(torch.ones(2, 2))
        q.grad = torch.full((2, 2), 3.0)
        average_gradients_([p, q], world_size=1)
        assert p.grad.tolist() == [2.0, 4.0, 6.0] and q.grad.tolist() == [[3.0, 3.0], [3.0, 3.0]]
    finally:
        dist.destroy_process_group()


def test_cleanup_leaves_the_group_and_is_idempotent(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    cleanup()
    assert not dist.is_initialized()
    cleanup(wait_for_peers=False)  # nothing to leave: no error
    assert not dist.is_initialized()


@pytest.mark.slow  # two torch processes started by torchrun: ~15 s on a busy 2-core machine
def test_torchrun_gloo_matches_single_process(tmp_path, monkeypatch):
    (tmp_path / "pk_ddp_common.py").write_text(_COMMON)
    (tmp_path / "worker.py").write_text(_WORKER)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    env_path = str(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "worker.py"), str(out)]
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([env_path, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    infos = [json.loads((out / f"info{r}.json").read_text()) for r in (0, 1)]
    assert [i["world"] for i in infos] == [2, 2] and infos[0]["backend"] == "gloo"
    assert infos[0]["steps"] == 16 and infos[0]["steps_per_epoch"] == 8  # 128 samples / global batch 16
    assert infos[0]["callback_steps"] == 16 and infos[1]["callback_steps"] == 0  # only rank 0 logs
    assert (out / "ck0" / "last.pt").exists() and not (out / "ck1").exists()  # only rank 0 checkpoints

    s0 = torch.load(out / "state0.pt", weights_only=True)
    s1 = torch.load(out / "state1.pt", weights_only=True)
    for k in s0:  # gates (and everything else) identical across ranks
        assert torch.equal(s0[k], s1[k]), k

    from pk_ddp_common import CFG, build, dataset
    from torch.utils.data import DataLoader

    from prunekit.train.loop import Trainer

    torch.set_num_threads(1)
    ref_loader = DataLoader(dataset(), batch_sampler=_GlobalBatches(128, 2, CFG.batch_size // 2, CFG.seed))
    ref = Trainer(build(), (ref_loader, None), CFG)
    ref.fit()
    for k, v in ref.model.state_dict().items():
        torch.testing.assert_close(s0[k], v, rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    assert not torch.equal(s0["1.logits"], torch.zeros(8))  # the gates did train
