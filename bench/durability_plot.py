#!/usr/bin/env python3
"""Draws bench/durability_fsync.png from bench/durability_fsync.jsonl.

The JSON lines are what `herald-durability fsync` prints: one line per run and
one summary line per fsync mode. Each bar is a mode's median; the dots are
its single runs, so the spread on this shared machine is visible too.
"""
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
rows = [json.loads(line) for line in (HERE / "durability_fsync.jsonl").read_text().splitlines() if line.strip()]
summaries = {row["summary"]: row for row in rows if "summary" in row}
modes = [mode for mode in ("never", "batch", "always") if mode in summaries]

figure, axis = plt.subplots(figsize=(6, 4))
for index, mode in enumerate(modes):
    summary = summaries[mode]
    axis.bar(index, summary["median_accepted_per_s"], color="#4c72b0" if mode == "batch" else "#999999")
    axis.scatter([index] * len(summary["all_accepted_per_s"]), summary["all_accepted_per_s"], color="black", s=12, zorder=3)
    per_fsync = summary["median_records_per_fsync"]
    label = f'{summary["median_accepted_per_s"]:,.0f}/s' + (f"\n{per_fsync:.1f} records/fsync" if per_fsync else "")
    axis.annotate(label, (index, summary["median_accepted_per_s"]), ha="center", va="bottom", fontsize=8)
axis.set_xticks(range(len(modes)), [f"--fsync {mode}" for mode in modes])
axis.set_ylabel("AS requests answered 201 per second")
axis.set_title("Durable Web Push requests per fsync mode (median of runs, 2 shards)")
axis.title.set_fontsize(9)
figure.tight_layout()
figure.savefig(HERE / "durability_fsync.png", dpi=120)
print(HERE / "durability_fsync.png")
