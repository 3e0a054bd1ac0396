"""``tuners inspect``: a tuner's metadata and a per-block summary of its scales, as text."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from checkpoints.artifact import Tuner


def block_role(name: str) -> str:
    """A block's role with layer indices replaced by ``*`` (``model.layers.3.mlp.up_proj.weight`` ->
    ``model.layers.*.mlp.up_proj.weight``), to summarise scales across layers."""
    return re.sub(r"\.\d+\.", ".*.", name)


def inspect_text(path: str | Path, all_blocks: bool = False) -> str:
    """The report printed by ``python cli.py tuners inspect FILE``."""
    tuner = Tuner.from_pretrained(path)
    meta = tuner.metadata()
    prov = tuner.provenance
    first, rest = tuner.scales_at_rest()
    lines = [
        f"tuner      {path}",
        f"base model {tuner.base_model}",
        f"blocks     {len(tuner.blocks)} ({sum(b['numel'] for b in tuner.blocks):,} parameters); "
        f"fingerprint {meta['fingerprint_sha256'][:16]}",
        f"pertnn     {meta['pertnn']}",
        f"features   {meta['features']}",
        f"direction  {meta['direction_policy'] or 'none (PertNN scales only)'}",
        f"recommended fine-tuning {tuner.recommended or 'not recorded'}",
    ]
    if prov:
        lines.append(f"meta-trained on {', '.join(prov.get('meta_tasks', [])) or '?'}: {prov.get('steps', '?')} steps, "
                     f"seed {prov.get('seed', '?')}, zotune {prov.get('zotune_version', '?')}, {prov.get('date', '?')}")
        if "summary" in prov:
            lines.append(f"meta-training summary {prov['summary']}")
    lines.append("")
    lines.append("scales σ (1 = MeZO; energy-normalised so that Σ numel·σ² = Σ numel): "
                 "at the first step, and at rest (fixed point with on-trend losses)")
    if all_blocks:
        lines.append(f"{'block':<60} {'kind':<9} {'numel':>12} {'first':>8} {'rest':>8}")
        for b, f, r in zip(tuner.blocks, first.tolist(), rest.tolist()):
            lines.append(f"{b['name']:<60} {b['kind']:<9} {b['numel']:>12,} {f:>8.3f} {r:>8.3f}")
    else:
        groups: dict[str, list[int]] = {}
        for i, b in enumerate(tuner.blocks):
            groups.setdefault(block_role(b["name"]), []).append(i)
        lines.append(f"{'blocks (role)':<52} {'n':>4} {'rest min':>9} {'median':>8} {'max':>8} {'energy':>7}")
        numel = torch.tensor([b["numel"] for b in tuner.blocks], dtype=torch.float64)
        energy = numel * rest.double() ** 2
        for role, idx in groups.items():
            r = rest[idx]
            share = float(energy[idx].sum() / energy.sum())
            mezo = float(numel[idx].sum() / numel.sum())
            lines.append(f"{role:<52} {len(idx):>4} {float(r.min()):>9.3f} {float(r.median()):>8.3f} "
                         f"{float(r.max()):>8.3f} {share:>6.1%} (MeZO {mezo:.1%})")
    return "\n".join(lines)
