"""``prunekit bench pareto``: accuracy vs MACs vs latency of every method and Torch-Pruning on one budget.

Every method trains the same model on the same data (same subset, split, augmentation, epochs, batch,
lr schedule and seed) and lands on the same MACs targets; the slim network is collapsed
(``prunekit.collapse``) and measured: MACs per sample (``prunekit.cost.count_macs``: flop counter,
1 MAC = one multiply-add of a conv/linear layer), parameters, validation and test accuracy, and CPU
latency (median ms, one thread). Methods and how they meet a target:

* ``crisp``, ``growing``, ``l0``, ``l1``, ``slimming``: ``target_macs`` in their Config (calibrated).
* ``sdprun``: ``target_macs`` in its Config too, met by its own optimizer (a controller sets the dual-averaging
  threshold); the channels it zeroed exactly are what collapse removes: no L2 pruning, no calibration. Its
  dual averaging runs at the constant lr of its bench variant (``SDPrunMethod.bench_variants``), its classifier at ``sdprun_lr``.
* ``dpp`` (filter): exactly-k masks; ``keep`` is solved so that k of N per group gives the target MACs.
* ``bridgeout``: trained once per seed, then the lowest-L2 filters of every group are removed, the same
  fraction per group, until the target MACs are met, with **no fine-tuning** (the paper's protocol;
  ``prunekit.curve``'s rule). Each such network is reported twice: as is, and as ``bridgeout+bn`` after its
  BatchNorm statistics are re-estimated on ``bn_batches`` training batches (weights untouched).
* ``tp-groupnorm`` / ``tp-magnitude``: Torch-Pruning's ``GroupNormPruner`` (with its sparse regulariser)
  and ``MagnitudePruner`` (L1), progressive pruning to the target half-way, fine-tuned for the rest
  (``prunekit.bench.torch_pruning``).

Selection on validation: a method with several option variants in the preset's ``grid`` is reported
with the variant of best validation accuracy; test accuracy is reported, never used to choose. With
more than one seed, accuracies are mean ± std over seeds. Suite 4 (latency vs MACs of the slim networks
against the Torch-Pruning networks at the same target) is written beside it as ``latency.json/.md``.

Latency: every network of a dataset is kept until the end and then timed **interleaved**
(``prunekit.latency.measure_latency_interleaved``: round after round over all of them), so that the
load of a shared CPU drifting during an hour of training cannot pass for a difference between
methods. Each row also carries the latency measured right after its training (``latency_inline_*``).

Crash safety and extension: every finished (dataset, method, seed) is appended to ``pareto.partial.jsonl``
in the output folder; ``resume=True`` (``prunekit bench pareto --resume``) reuses those trainings when the
budget is the same, so an interrupted run goes on and a finished one can be extended with more seeds,
methods or variants (:mod:`prunekit.bench.pareto.journal`; rows from the earlier process keep their inline
latency: ``latency_source``).

Presets: ``smoke`` (minutes: 512-image subsets, 4 steps per epoch, one target: proves the plumbing,
the accuracies mean nothing), ``hour`` (4,000-image subsets, 6 epochs, targets
0.3/0.5/0.7, about 55–70 s per training on 2 CPU cores: 1 h 17 min measured before L1 and slimming got their
staged variant, about 1 h 30 min with it) and ``paper`` (ResNet-56, full CIFAR-10, 200 epochs, 3 seeds: for a GPU).

Modules: :mod:`~prunekit.bench.pareto.preset` (methods, grids, presets), :mod:`~prunekit.bench.pareto.targets`
(landing DPP and the post-hoc methods on a MACs target), :mod:`~prunekit.bench.pareto.journal` (resume),
:mod:`~prunekit.bench.pareto.report` (selection, mean ± std, tables) and :mod:`~prunekit.bench.pareto.suite`
(the two suites).
"""

from prunekit.bench.pareto.preset import METHODS, PRESETS, ParetoPreset
from prunekit.bench.pareto.suite import bench_latency, bench_pareto

__all__ = ["METHODS", "PRESETS", "ParetoPreset", "bench_latency", "bench_pareto"]
