"""``tuners inspect``: a tuner's metadata and a per-block summary of its scales, as text."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from checkpoints.artifact import Tuner
from pertnn.blocks import adapter_text


def block_role(name: str) -> str:
    """A block's role with layer indices replaced by ``*`` (``model.layers.3.mlp.up_proj.weight`` ->
    ``model.layers.*.mlp.up_proj.weight``), to summarise scales across layers."""
    return re.sub(r"\.\d+\.", ".*.", name)


def provenance_text(tuner: Tuner) -> str:
    """One line saying where a tuner comes from (meta-training run, imported file, benchmark, or an untrained bank
    given a head step), and where its head step's and top-block step's lrs and its recommended schedule were chosen
    when it has them."""
    prov = tuner.provenance or {}
    if not prov:
        return "no provenance recorded"
    sel = prov.get("head_selection")
    head = "" if not isinstance(sel, dict) else (
        f"; head step lr chosen on {', '.join(sel.get('tasks', [])) or '?'} by meta-train-head, {sel.get('date', '?')}")
    top = prov.get("top_selection")
    if isinstance(top, dict):  # by meta-train-top (dated), or by a report's screen (it names the report)
        head += (f"; top-block step lr chosen on {', '.join(top.get('tasks', [])) or '?'} "
                 + (f"by meta-train-top, {top['date']}" if "date" in top else f"({top.get('report', '?')})"))
    schedule = prov.get("schedule_selection")
    if isinstance(schedule, dict):  # by a report's screen (it names the report)
        head += f"; schedule chosen on {', '.join(schedule.get('tasks', [])) or '?'} ({schedule.get('report', '?')})"
    if "imported_from" in prov:
        src = prov["imported_from"]
        return (f"imported from the ZO Fine-tuner file {src.get('file', '?')} (run tag {src.get('run_tag', '?')}), "
                f"{prov.get('date', '?')}" + head)
    if not set(prov) - {"head_selection", "top_selection", "schedule_selection"}:  # from an untrained tuner
        return "untrained bank (every scale 1: MeZO's step)" + head
    if "kind" in prov and "meta_tasks" not in prov:  # e.g. a static allocation written by a benchmark
        return str(prov["kind"]) + head
    return (f"meta-trained on {', '.join(prov.get('meta_tasks', [])) or '?'}: {prov.get('steps', '?')} steps, "
            f"seed {prov.get('seed', '?')}, zotune {prov.get('zotune_version', '?')}, {prov.get('date', '?')}" + head)


def policy_text(tuner: Tuner) -> str:
    """One line on the direction policy: its constants and how far its gates open at rest."""
    if tuner.policy is None:
        return "none (PertNN scales only)"
    cfg = tuner.policy.cfg
    parts = []
    for label, kappa in (("noise-like mean, κ=1", 1.0), ("coherent mean", (1 + cfg.decay) / (1 - cfg.decay))):
        g = tuner.gates_at_rest(kappa)
        parts.append(f"{label}: median {float(g.median()):.3f}, max {float(g.max()):.3f}")
    return (f"policy (gate MLP hidden {cfg.hidden}, max gate {cfg.max_gate:g}, mean decay {cfg.decay:g}); "
            f"|gate| at rest with a {'; with a '.join(parts)}")


def head_text(tuner: Tuner) -> str:
    """One line on the head step a tuner takes by default, and how its lr was chosen when recorded."""
    if tuner.head is None:
        text = "none (the output head is left to the ZO step)"
    else:
        text = f"Adam at {tuner.head_text}"
        if len(tuner.head_lrs) > 1:
            text += " (the rows of the lr that fits held-back training examples best)"
        text += (" on the output head's option rows, along their exact gradient read off the forward passes (multiple "
                 "choice, one-token options)")
    sel = (tuner.provenance or {}).get("head_selection")
    if isinstance(sel, dict) and isinstance(sel.get("dev_loss"), dict):
        lrs = sel.get("lrs")  # a grid of ZO lrs searched with the head lr (meta-train-head --lrs)
        lrs = ", ".join(map(str, lrs)) if isinstance(lrs, list) else lrs
        lr = f"lr {sel.get('lr', '?')}" if lrs is None else f"the ZO lr chosen with it from {lrs}: {sel.get('lr', '?')}"
        text += (f"; chosen by final dev loss on {', '.join(sel.get('tasks', [])) or '?'} "
                 f"({sel.get('forwards', '?')} forward passes, seeds {sel.get('seeds', '?')}, {lr}): "
                 + dev_losses_text(sel))
    return text


def dev_losses_text(sel: dict) -> str:
    """A selection's final dev losses by candidate, as ``name: loss, ...`` (a run that diverged: its word); what
    ``tuners inspect`` and the ``meta-train-head`` / ``meta-train-top`` commands print."""
    return ", ".join(f"{k}: {v:.4f}" if isinstance(v, (int, float)) else f"{k}: {v}"
                     for k, v in sel["dev_loss"].items())


def _chosen(tuner: Tuner, key: str) -> str:
    """``; chosen by mean final dev loss on ...`` for the selection ``key`` of the tuner's provenance (the top-block
    step's lr, the recommended schedule), or nothing when it records none."""
    sel = (tuner.provenance or {}).get(key)
    if not (isinstance(sel, dict) and isinstance(sel.get("dev_loss"), dict)):
        return ""
    return (f"; chosen by mean final dev loss on {', '.join(sel.get('tasks', [])) or '?'} "
            f"({sel.get('forwards', '?')} forward passes, seeds {sel.get('seeds', '?')}): {dev_losses_text(sel)}")


def top_text(tuner: Tuner) -> str:
    """One line on the top-block step a tuner takes by default."""
    if tuner.top is None:
        return "none (the last MLP is left to the ZO step)"
    text = (f"Adam at lr {tuner.top_lr:g} on the last layer's MLP, along its exact gradient at the scored position "
            "read off the forward passes (multiple choice, one-token options, Llama family, one process)")
    text += f", its lr decaying on a {tuner.top_schedule} schedule" if tuner.top_schedule else ""
    return text + _chosen(tuner, "top_selection")


def recommended_text(tuner: Tuner) -> str:
    """One line on the fine-tuning settings a tuner recommends (``finetune --tuner`` takes them unless given)."""
    rec = dict(tuner.recommended)
    if not rec:
        return "not recorded"
    schedule = rec.pop("schedule", None)
    text = ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in rec.items())
    if not schedule:
        return text + "; constant lr"
    text += f"; the ZO and head steps' lr decaying on a {schedule} schedule (--schedule)"
    return text + _chosen(tuner, "schedule_selection")


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
        f"direction  {policy_text(tuner)}",
        f"adapter    {adapter_text(tuner.adapter)}",
        f"head step  {head_text(tuner)}",
        f"top step   {top_text(tuner)}",
        f"recommended fine-tuning {recommended_text(tuner)}",
    ]
    if prov:
        lines.append(provenance_text(tuner))
        if "energy_numels" in prov:
            lines.append(f"energy normalisation counts {prov['energy_numels']}")
        if "summary" in prov:
            lines.append(f"meta-training summary {prov['summary']}")
    lines.append("")
    rest_losses = "L+ = L− = 0.7, raw features" if tuner.feature_config.kind == "raw" else "on-trend losses"
    lines.append("scales σ (1 = MeZO; energy-normalised so that Σ numel·σ² = Σ numel): "
                 f"at the first step, and at rest (fixed point with {rest_losses})")
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
