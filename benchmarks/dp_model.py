"""A worked model of data-parallel ZO: bytes exchanged per step and expected scaling on N GPUs.

    python benchmarks/dp_model.py --out reports/distributed/model.json

Everything here is arithmetic on stated inputs; nothing was run on a GPU (none was available). The inputs:

* bytes exchanged: what finetune/zo/distributed.py sends (counted from the code, exact);
* step cost on one GPU: ``T_1 = 2 F(B) + U``. F(b) is a forward pass over b examples, modelled as
  ``max(weights / bandwidth, 2 P b T / throughput)``; U is the three passes over the weights that a ZO step
  adds to its two forward passes (write θ+εz, write θ-εz, update θ; each reads θ, generates noise and writes
  P values: ~8 bytes of traffic per bf16 parameter with Gaussian noise); every rank repeats U in full.
  with these inputs U is ~35% of 2 F(16) for both models (on our CPUs SmolLM2-135M measured ~15%,
  docs/engine.md: CPUs are slower at the forward relative to their memory bandwidth);
* on N ranks: ``T_N = 2 F(B/N) + U + 2 c`` with c the latency of one small all-gather.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

MODELS = {
    # parameters, trainable blocks (tensors), layers
    "Llama-3.2-1B": {"params": 1.236e9, "blocks": 16 * 9 + 2},
    "Llama-3.1-8B": {"params": 8.03e9, "blocks": 32 * 9 + 3},
}
ASSUMED = {
    "hbm_bytes_per_s": 3.35e12,       # H100 SXM HBM3 peak bandwidth
    "bf16_flops_per_s": 4.0e14,       # ~40% of H100's 989 dense bf16 TFLOPS, achieved in a forward pass
    "tokens_per_example": 128,        # MeZO-style classification prompts
    "options_per_example": 2,         # loss terms per example (option scores); 1 for generation tasks
    "allgather_latency_s": 30e-6,     # one small NCCL all-gather inside a node (NVLink); ~100 us across nodes
    "bytes_per_param": 2,             # bf16
    "update_traffic_bytes_per_param": 8,
}


def forward_s(p: float, b: float, a: dict) -> float:
    read = p * a["bytes_per_param"] / a["hbm_bytes_per_s"]
    compute = 2 * p * b * a["tokens_per_example"] / a["bf16_flops_per_s"]
    return max(read, compute)


def step_s(p: float, batch: int, n: int, a: dict) -> float:
    u = 3 * p * a["update_traffic_bytes_per_param"] / a["hbm_bytes_per_s"]
    c = 0.0 if n == 1 else a["allgather_latency_s"]
    return 2 * forward_s(p, math.ceil(batch / n), a) + u + 2 * c


def bytes_per_step(batch: int, n: int, blocks: int, check_every: int, a: dict) -> dict:
    """Bytes each rank receives per MeZO step (batch mode), and the checksum's share."""
    shard = math.ceil(batch / n)
    if n == 1:
        return {"loss_terms": 0, "checksum_amortised": 0.0}
    gather = 2 * n * shard * a["options_per_example"] * 4  # two all-gathers of fp32 terms, padded shards
    checksum = 2 * blocks * 8 / check_every                # two all-reduces (min, max) of int64 per block
    return {"loss_terms": gather, "checksum_amortised": checksum}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    a = ASSUMED
    rows = []
    for name, m in MODELS.items():
        for batch in (16, 64):
            t1 = step_s(m["params"], batch, 1, a)
            for n in (1, 2, 4, 8, 16):
                tn = step_s(m["params"], batch, n, a)
                b = bytes_per_step(batch, n, m["blocks"], 100, a)
                rows.append({"model": name, "global_batch": batch, "ranks": n, "step_ms": round(1e3 * tn, 2),
                             "speedup": round(t1 / tn, 2), "bytes_loss_terms": b["loss_terms"],
                             "bytes_checksum_amortised": round(b["checksum_amortised"], 1),
                             "first_order_ddp_allreduce_bytes": round(2 * (n - 1) / n * m["params"] * 2)})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"assumed": a, "models": MODELS, "rows": rows}, indent=1))
    print("| model | global batch | ranks | step (ms) | speed-up | ZO bytes/step/rank | FO DDP all-reduce bytes/step/rank |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['global_batch']} | {r['ranks']} | {r['step_ms']} | {r['speedup']} | "
              f"{r['bytes_loss_terms']:.0f} (+{r['bytes_checksum_amortised']}) | {r['first_order_ddp_allreduce_bytes']:.3g} |")


if __name__ == "__main__":
    main()
