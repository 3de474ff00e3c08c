"""Merge the `hour` run with its three follow-ups into one table, selecting every variant on validation.

    .venv/bin/python docs/benchmarks/pareto-schedules/merge.py   # writes merged.json and merged.md here

Every run used the same preset budget and seed (dense reproduced to the digit in each), so a row is the
same training whichever run produced it. Rows are taken from, latest first: the schedule follow-up
(L1/slimming staged, CRISP with half the run fine-tuning), the slimming-floor follow-up, the post-hoc
follow-up (+bn rows), the `hour` run. Latency is dropped: runs under different load are not comparable
(the interleaved comparison is section 4 of BENCHMARKS.md).
"""

import json
from pathlib import Path

from prunekit.bench.pareto import PRESETS
from prunekit.bench.pareto.report import pareto_markdown, summarize

HERE = Path(__file__).parent
RUNS = ["pareto-hour", "pareto-posthoc", "pareto-slimming-floor", "pareto-schedules"]  # oldest first

rows: dict[tuple, dict] = {}
for run in RUNS:
    for r in json.loads((HERE.parent / run / "pareto.json").read_text())["rows"]:
        # variant ids are per run: the options without the target name a variant across runs
        variant = json.dumps({k: v for k, v in r.get("options", {}).items() if k not in ("target_macs", "keep")},
                             sort_keys=True)
        r = {k: v for k, v in r.items() if not k.startswith("latency")}
        # a later run replaces the same training (the floor changed slimming)
        rows[(r["dataset"], r["method"], r["target"], r["seed"], variant)] = {**r, "variant": variant, "source": run}
merged = list(rows.values())
summary = summarize(merged)
md = pareto_markdown(summary, PRESETS["hour"], "hour + follow-ups, merged")
chosen = [f"| {s['dataset']} | {s['method']} | {s['target']} | {json.dumps(s['options'])} |"
          for s in summary if s["method"] in ("l1", "slimming", "crisp") and s["target"] is not None]
md += "\n## variant chosen on validation\n\n| dataset | method | target | options |\n|---|---|---|---|\n"
md += "\n".join(chosen) + "\n"
(HERE / "merged.json").write_text(json.dumps({"runs": RUNS, "rows": merged, "summary": summary}, indent=1, default=str))
(HERE / "merged.md").write_text(md)
print(md)  # noqa: T201 -- a script, run by hand
