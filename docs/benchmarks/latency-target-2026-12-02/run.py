"""crisp target_latency (half the dense latency, batch 64, 1 thread) vs crisp target_macs at the MACs it reached (BENCHMARKS.md section 1; run: OMP_NUM_THREADS=1 python run.py 64)."""
import json
import sys

from prunekit.collapse import collapse
from prunekit.cost import count_macs
from prunekit.latency import measure_latency_interleaved
from prunekit.train.config import RunConfig, TrainConfig
from prunekit.train.experiment import build_experiment, run_experiment

B = int(sys.argv[1]) if len(sys.argv) > 1 else 64
def cfg(opts):
    return RunConfig(model="resnet20", dataset="shapes", method="crisp", method_options=opts,
                     data_options={"num_samples": 512, "num_test": 128},
                     train=TrainConfig(epochs=4, batch_size=64, lr=0.05, num_threads=1, device="cpu", log_every=50))
probe = build_experiment(cfg({"target_latency": 1e-3, "latency_batch": B, "latency_threads": 1}))
dense_ms = probe.method.latency_info["dense_ms"]
lat = run_experiment(cfg({"target_latency": dense_ms / 2, "latency_batch": B, "latency_threads": 1}))
x = lat["model"].example_input[:1]
slim_lat = collapse(lat["model"])
macs = count_macs(slim_lat, x) / count_macs(lat["model"], x)
mac = run_experiment(cfg({"target_macs": macs}))
slim_mac = collapse(mac["model"])
dense = probe.model.model
t = measure_latency_interleaved({"dense": dense, "lat": slim_lat, "macs": slim_mac}, x, (B,), rounds=7, repeats=3, threads=1)
out = {"batch": B, "dense_ms_table": dense_ms, "report": lat["method_report"]["latency"], "macs_ratio_latency_run": macs,
       "macs_ratio_macs_run": mac["method_report"]["ratio"], "interleaved_ms": t,
       "acc": {"latency": lat["metrics"].get("acc/test"), "macs": mac["metrics"].get("acc/test")}}
print(json.dumps(out, indent=1, default=str))  # noqa: T201 - the script's output
