"""The head step's lr for the held-out runs: among the hotels design-check runs at MeZO's hotels lr (3e-5), the one
with the lowest final dev loss (the bench's rule; the test split never selects). Prints it.

    python reports/tuner-v2-smollm2/select_head_lr.py reports/tuner-v2-smollm2/head-hybrid-hotels.json
"""
import json
import sys

rows = [r for r in json.load(open(sys.argv[1])) if r["lr"] == 3e-5 and r["head_lr"] > 0]
best = min(rows, key=lambda r: r["curve"][-1]["dev_loss"])
for r in sorted(rows, key=lambda r: r["head_lr"]):
    print(f"head lr {r['head_lr']:g}: final dev loss {r['curve'][-1]['dev_loss']:.4f}", file=sys.stderr)
print(f"{best['head_lr']:g}")
