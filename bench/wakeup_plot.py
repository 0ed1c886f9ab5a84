#!/usr/bin/env python3
"""Plot bench/wakeup_connected.csv (written by herald-devices) into a PNG:
connected UA sockets over time, "always connected" vs "sleep + UDP wakeup".

Usage: python3 bench/wakeup_plot.py [CSV] [PNG]   (needs matplotlib)
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

source = sys.argv[1] if len(sys.argv) > 1 else "bench/wakeup_connected.csv"
target = sys.argv[2] if len(sys.argv) > 2 else "bench/wakeup_connected.png"

with open(source, newline="") as handle:
    rows = list(csv.DictReader(handle))
columns = [name for name in rows[0].keys() if name != "t_s"] if rows else []
labels = {
    "always_connected": "always connected (keep-alives)",
    "sleep_connected": "sleep + UDP wakeup",
}
fig, axis = plt.subplots(figsize=(8, 4.5), dpi=110)
for column in columns:
    points = [(float(r["t_s"]), float(r[column])) for r in rows if r[column] != ""]
    axis.plot([p[0] for p in points], [p[1] for p in points], label=labels.get(column, column))
axis.set_xlabel("seconds since the notification stream started")
axis.set_ylabel("open UA WebSockets")
axis.set_title("Herald: connected sockets, same notification stream")
axis.set_ylim(bottom=0)
axis.grid(alpha=0.3)
axis.legend()
fig.tight_layout()
fig.savefig(target)
print(f"wrote {target}")
