"""The tuner artifact: one ``.safetensors`` file holding a meta-trained tuner, its metadata, and validation.

Tensors (float32):

* ``pertnn.W1`` [B, H, F], ``pertnn.b1`` [B, H], ``pertnn.W2`` [B, 1, H], ``pertnn.b2`` [B, 1]: the
  PertNN bank (:class:`pertnn.PertNNBank`), one MLP per block;
* ``base.block_stats`` [B, 2]: mean and log-variance of each block of the base model, so that
  ``tuners inspect`` can show the learned scales without loading the model;
* only when the tuner has a direction policy: ``policy.W1`` [B, H', 5], ``policy.b1`` [B, H'],
  ``policy.W2`` [B, 1, H'], ``policy.b2`` [B, 1], its gate network (:class:`pertnn.DirectionPolicy`).

The safetensors header's metadata holds ``format`` (``"zotune-tuner"``), ``format_version`` and
``zotune``, a JSON document with: ``base_model``; ``blocks`` (name, shape, numel, kind of every block,
in order; optionally ``energy_numel``, the size the energy normalisation counts for the block when it
is not its numel, as in the paper's effective sizes) and ``tied_groups``, which together are the
architecture fingerprint, plus its ``fingerprint_sha256``; ``features`` (:class:`pertnn.FeatureConfig`)
and ``pertnn`` (:class:`pertnn.PertNNConfig`; files written before their ``kind``/``output`` fields
existed load with the defaults); ``direction_policy`` (``null``, or the policy's config and feature names:
``{"config": {"hidden", "max_gate", "decay"}, "features": [...]}``);
``adapter`` (``null`` or absent: the full model; else the adapter the blocks belong to, e.g.
``{"method": "lora", "r": 8, "alpha": 16.0, "dropout": 0.0, "targets": ["q_proj", "v_proj"]}``, part of the
fingerprint and its hash; :func:`pertnn.blocks.adapter_config`);
``head`` (``null`` or absent: no head step; else ``{"lr": x}``, the Adam lr of the head step,
:mod:`finetune.head`, that fine-tuning with this tuner takes by default, or ``{"race": [x, y, ...]}``, the lrs
of a head race, :class:`finetune.head.HeadRace`: :mod:`meta.head` chooses among them on the meta-training
tasks); ``top`` (``null`` or absent: no top-block step; else ``{"lr": x}``, the Adam lr of the step on the last
MLP, :mod:`finetune.top`, that fine-tuning with this tuner takes by default, and optionally ``"schedule"``, the lr
schedule of that step: constant, linear, cosine or linear-warmup; absent, the run's own ``--schedule``);
``recommended`` (the ``lr`` and ``eps`` meta-training assumed, and optionally ``schedule``, the lr schedule
fine-tuning takes by default for the ZO and head steps: constant, linear, cosine or linear-warmup; absent,
constant); ``provenance`` (meta-training tasks,
steps, seed, package version, date, and the meta-training config); and ``tensors_sha256``, the checksum of
the tensor data (:func:`tensors_sha256`; optional, files written before it existed have none).

What is task-specific (loss history, last scales, the policy's online mean directions, optimizer state)
is never stored: a fine-tune run keeps it online (:class:`pertnn.StepHistory`,
:class:`finetune.zo.online.OnlineMean`). A file with a direction policy has ``format_version`` 2 (older
readers refuse it rather than silently dropping the policy); one with a head step has 3, for the same reason,
one with a head race 4, one with a top-block step 5, one whose top-block step names its own schedule 6, and 7 when
that schedule is linear-warmup (added after format 6; a format-6 reader would refuse its name with a message that
does not say to upgrade), and 8 when it recommends a schedule; one with none of these stays at 1.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from checkpoints.remote import resolve
from finetune.common.atomic import atomic_file
from finetune.common.errors import ZotuneError
from finetune.common.runs import SCHEDULES, sha256_tensors, strict_json
from pertnn import FeatureConfig, PertNNBank, PertNNConfig, fingerprint, fingerprint_mismatch, model_blocks
from pertnn.blocks import adapter_mismatch, adapter_text, trainable_tensors
from pertnn.features import tensor_var_mean
from pertnn.policy import N_POLICY_FEATURES, POLICY_FEATURE_NAMES, DirectionPolicy, PolicyConfig, policy_features

FORMAT = "zotune-tuner"
FORMAT_VERSION = 8  # the newest format this reads (8: a recommended schedule; 7: a top-block step on linear-warmup;
#                    6: a top-block step's own schedule; 5: a top-block step; 4: a head race; 3: a head step; 2: a
#                    direction policy; 1: PertNN)
SCHEDULE_FORMAT = 8  # a tuner that recommends an lr schedule (``recommended["schedule"]``)
SCHEDULES_SINCE = {"linear-warmup": 7}  # a top-block step schedule newer than format 6: the format it needs
HEAD_KEYS = ("lr", "race")  # what a tuner's head step holds: one of them
BANK_TENSORS = ("W1", "b1", "W2", "b2")
_REQUIRED = ("base_model", "blocks", "tied_groups", "fingerprint_sha256", "features", "pertnn", "provenance")


def fingerprint_sha256(fp: dict) -> str:
    """A short, stable hash of a fingerprint (names, shapes, tied groups, and the adapter when there is one)
    for display and quick checks. A full-model fingerprint hashes as it did before adapters existed."""
    doc = {"blocks": [[b["name"], list(b["shape"])] for b in fp["blocks"]],
           "tied_groups": sorted(sorted(g) for g in fp["tied_groups"])}
    if fp.get("adapter") is not None:
        doc["adapter"] = fp["adapter"]
    canon = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()


def adapter_flags(adapter: dict | None) -> str:
    """The command-line options that build the model ``adapter`` describes."""
    if adapter is None:
        return "no --peft (the full model)"
    method = adapter.get("method")
    if method == "lora":
        targets = adapter.get("targets")
        return (f"--peft lora --lora-r {adapter.get('r')} --lora-alpha {adapter.get('alpha'):g} --lora-targets "
                f"{','.join(targets) if isinstance(targets, list) else targets}")
    if method == "prefix":
        return f"--peft prefix --prefix-tokens {adapter.get('tokens')}"
    return f"--peft {method}"


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """The checksum of an artifact's tensor data (names, dtypes, shapes and bytes, in name order)."""
    return sha256_tensors(sorted(tensors.items()))


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _lr_ok(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < float("inf")


def _metadata_problem(meta: dict) -> str | None:
    """What is wrong with the types of the ``zotune`` metadata fields, or None."""
    types = {"base_model": str, "blocks": list, "tied_groups": list, "fingerprint_sha256": str, "features": dict,
             "pertnn": dict, "provenance": dict, "recommended": dict, "direction_policy": (dict, type(None)),
             "tensors_sha256": str, "adapter": (dict, type(None)), "head": (dict, type(None)),
             "top": (dict, type(None))}
    for key, kind in types.items():
        if key in meta and not isinstance(meta[key], kind):
            names = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
            return f"metadata field {key!r} is {type(meta[key]).__name__}, expected {names.replace('NoneType', 'null')}"
    for i, b in enumerate(meta["blocks"]):
        if not (isinstance(b, dict) and isinstance(b.get("name"), str) and isinstance(b.get("shape"), list)
                and all(_is_int(d) and d >= 0 for d in b["shape"]) and _is_int(b.get("numel"))
                and isinstance(b.get("kind", ""), str) and _is_int(b.get("energy_numel", 0))):
            return f"block {i} of its metadata is malformed (needs name, shape, numel)"
    if not all(isinstance(g, list) and all(isinstance(n, str) for n in g) for g in meta["tied_groups"]):
        return "metadata field 'tied_groups' must be a list of lists of names"
    for k, v in meta.get("recommended", {}).items():
        if k in ("lr", "eps") and not (isinstance(v, (int, float)) and not isinstance(v, bool)):
            return f"its recommended {k} is {type(v).__name__}, not a number"
        if k == "schedule" and v not in SCHEDULES:
            return f"its recommended schedule {v!r} is not one of {', '.join(SCHEDULES)}"
    head = meta.get("head")
    if head is not None:
        unknown = sorted(set(head) - set(HEAD_KEYS))
        if unknown:
            return f"its head step has settings this zotune does not know ({', '.join(unknown)}); upgrade zotune"
        if len(head) != 1:
            return "its head step must hold one of 'lr' and 'race'"
        if "lr" in head and not _lr_ok(head["lr"]):
            return f"its head step's lr is {head['lr']!r}, not a finite number >= 0"
        race = head.get("race")
        if "race" in head and not (isinstance(race, list) and len(race) >= 2
                                   and all(_lr_ok(x) and x > 0 for x in race) and len(set(race)) == len(race)):
            return f"its head race is {race!r}, not two or more distinct positive lrs"
    top = meta.get("top")
    if top is not None:
        if "lr" not in top or not set(top) <= {"lr", "schedule"}:
            return (f"its top-block step must hold 'lr', and optionally 'schedule' (it holds "
                    f"{', '.join(sorted(top)) or 'nothing'})")
        if not (_lr_ok(top["lr"]) and top["lr"] > 0):
            return f"its top-block step's lr is {top['lr']!r}, not a finite number > 0"
        if top.get("schedule", "constant") not in SCHEDULES:
            return f"its top-block step's schedule is {top['schedule']!r}, not one of {', '.join(SCHEDULES)}"
    doc = meta.get("direction_policy")
    if doc is not None and not (isinstance(doc.get("config"), dict) and isinstance(doc.get("features", []), list)):
        return "metadata field 'direction_policy' needs a 'config' object and a 'features' list"
    return None


@torch.no_grad()
def block_stats(model: nn.Module) -> torch.Tensor:
    """[B, 2] float32: mean and log(var + 1e-12) of each block of ``model`` (the first two features)."""
    rows = []
    for _, p in trainable_tensors(model):
        var, mean = tensor_var_mean(p.detach())
        rows.append(torch.stack([mean, torch.log(var + 1e-12)]).cpu())
    return torch.stack(rows)


@dataclass
class Tuner:
    """A meta-trained ZO tuner for one base-model architecture: the PertNN bank and its metadata.

    ``Tuner.from_pretrained(path)`` loads and validates an artifact (a local file, or ``hf://owner/name[/file]``
    on the Hugging Face Hub, downloaded into the cache), ``save_pretrained(path)`` writes one
    atomically, ``check_model(model)`` refuses a model of another architecture (a derivative checkpoint
    with the same architecture and other weights is fine). Pass it to :class:`finetune.zo.optim.TunedZO`
    to fine-tune with it.
    """

    bank: PertNNBank
    feature_config: FeatureConfig
    base_model: str
    blocks: list[dict]
    tied_groups: list[list[str]]
    stats: torch.Tensor
    provenance: dict = field(default_factory=dict)
    recommended: dict = field(default_factory=dict)
    policy: DirectionPolicy | None = None
    adapter: dict | None = None  # the adapter the blocks belong to (pertnn.blocks.adapter_config); None: full model
    head: dict | None = None     # the head step fine-tuning takes by default ({"lr": x}); None: none (finetune/head.py)
    top: dict | None = None      # the top-block step fine-tuning takes by default ({"lr": x[, "schedule": s]}); None:
                                 # none (finetune/top.py)

    # ------------------------------------------------------------------------------------ creation
    @classmethod
    def for_model(cls, model: nn.Module, base_model: str, pertnn_config: PertNNConfig | None = None,
                  feature_config: FeatureConfig | None = None, seed: int = 0,
                  policy_config: PolicyConfig | None = None) -> "Tuner":
        """A fresh (untrained) tuner for ``model``'s architecture: every block gets scale 1 (MeZO); with
        ``policy_config``, also a fresh direction policy (every gate 0: still MeZO)."""
        blocks = model_blocks(model)
        gen = torch.Generator().manual_seed(seed)
        bank = PertNNBank([b.numel for b in blocks], pertnn_config or PertNNConfig(), generator=gen)
        policy = None if policy_config is None else DirectionPolicy(len(blocks), policy_config, generator=gen)
        fp = fingerprint(model)
        return cls(bank=bank, feature_config=feature_config or FeatureConfig(), base_model=base_model,
                   blocks=[asdict(b) | {"shape": list(b.shape)} for b in blocks],
                   tied_groups=fp["tied_groups"], stats=block_stats(model), policy=policy, adapter=fp["adapter"])

    # ------------------------------------------------------------------------------------ metadata
    @property
    def fingerprint(self) -> dict:
        return {"blocks": [{"name": b["name"], "shape": list(b["shape"])} for b in self.blocks],
                "tied_groups": [list(g) for g in self.tied_groups], "adapter": self.adapter}

    @property
    def direction_policy(self) -> dict | None:
        """The ``direction_policy`` metadata: None, or the policy's config and feature names."""
        if self.policy is None:
            return None
        return {"config": asdict(self.policy.cfg), "features": list(POLICY_FEATURE_NAMES)}

    @property
    def head_lrs(self) -> list[float]:
        """The head lrs fine-tuning with this tuner takes by default: none, one (a head step) or several (a race)."""
        if self.head is None:
            return []
        return sorted(float(x) for x in self.head["race"]) if "race" in self.head else [float(self.head["lr"])]

    @property
    def head_lr(self) -> float:
        """The Adam lr of the head step that fine-tuning with this tuner takes by default (0: none; a race: its
        smallest lr, the one it starts on)."""
        return self.head_lrs[0] if self.head_lrs else 0.0

    @property
    def head_text(self) -> str:
        """The head step in a few words: ``lr 0.0003``, or ``a race of lrs 0.0001, 0.0003``."""
        lrs = self.head_lrs
        return "none" if not lrs else f"lr {lrs[0]:g}" if len(lrs) == 1 else \
            "a race of lrs " + ", ".join(f"{x:g}" for x in lrs)

    @property
    def top_lr(self) -> float:
        """The Adam lr of the top-block step (:mod:`finetune.top`) that fine-tuning with this tuner takes by default
        (0: none)."""
        return 0.0 if self.top is None else float(self.top["lr"])

    @property
    def top_schedule(self) -> str | None:
        """The lr schedule of the top-block step fine-tuning with this tuner takes by default; None: the run's own
        (``--schedule``)."""
        return None if self.top is None else self.top.get("schedule")

    @property
    def schedule(self) -> str | None:
        """The lr schedule this tuner recommends for a fine-tuning run's ZO and head steps (``--schedule``, which the
        top-block step follows unless it names its own); None: none recorded (constant)."""
        return self.recommended.get("schedule")

    def with_schedule(self, schedule: str | None) -> "Tuner":
        """The same tuner recommending lr schedule ``schedule`` for fine-tuning (None or ``constant``: none)."""
        if schedule not in (None, *SCHEDULES):
            raise ValueError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
        rest = {k: v for k, v in self.recommended.items() if k != "schedule"}
        return replace(self, recommended=rest | ({} if schedule in (None, "constant") else {"schedule": schedule}))

    def with_top(self, lr: float, schedule: str | None = None) -> "Tuner":
        """The same tuner whose fine-tuning also takes the top-block step at Adam lr ``lr`` (0: none), under lr
        schedule ``schedule`` (None: the run's own)."""
        if schedule is not None and schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
        top = {"lr": float(lr)} | ({} if schedule is None else {"schedule": schedule})
        return replace(self, top=None if lr == 0 else top)

    def with_head(self, lr: float) -> "Tuner":
        """The same tuner whose fine-tuning also takes the head step at Adam lr ``lr`` (0: no head step)."""
        return replace(self, head=None if lr == 0 else {"lr": float(lr)})

    def with_head_race(self, lrs) -> "Tuner":
        """The same tuner whose fine-tuning races the head lrs ``lrs`` (:class:`finetune.head.HeadRace`)."""
        return replace(self, head={"race": sorted(float(x) for x in lrs)})

    def without_policy(self) -> "Tuner":
        """The same tuner with no direction policy (PertNN scales only)."""
        return replace(self, policy=None)

    def metadata(self) -> dict:
        return {
            "base_model": self.base_model,
            "blocks": self.blocks,
            "tied_groups": self.tied_groups,
            "fingerprint_sha256": fingerprint_sha256(self.fingerprint),
            "features": asdict(self.feature_config),
            "pertnn": asdict(self.bank.cfg),
            "direction_policy": self.direction_policy,
            "adapter": self.adapter,
            "head": self.head,
            "top": self.top,
            "recommended": self.recommended,
            "provenance": self.provenance,
        }

    def check_model(self, model: nn.Module) -> None:
        """Raise a one-line :class:`ZotuneError` naming the first mismatching blocks unless ``model`` has
        exactly this tuner's architecture (block names, shapes, order and tying; weights may differ) and
        adapter configuration (LoRA rank, alpha, targets...; None = the full model)."""
        mismatch = adapter_mismatch(self.adapter, fingerprint(model)["adapter"])
        if mismatch:
            raise ZotuneError(f"this tuner was meta-trained for {self.base_model} with {adapter_text(self.adapter)} "
                              f"and does not fit this model: {mismatch}. Fine-tune with {adapter_flags(self.adapter)}, "
                              "or meta-train a tuner for this adapter (python cli.py meta-train --peft ...)")
        problems = fingerprint_mismatch(self.fingerprint, fingerprint(model), limit=3)
        if problems:
            raise ZotuneError(f"this tuner was meta-trained for {self.base_model} and does not fit this model: "
                              f"{'; '.join(problems)}. Use a tuner made for this architecture "
                              "(python cli.py meta-train --model ...)")

    # ------------------------------------------------------------------------------------ scales
    @torch.no_grad()
    def scales_at_rest(self, iterations: int = 20, loss: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
        """σ per block at the first step (no loss history, last scale 1) and at the fixed point of
        ``σ ← bank(features with on-trend losses, last scale σ)``, using the base model's block statistics.
        A summary of what the tuner does without any model at hand; returns ``(first, rest)``.

        Raw (paper) features take the losses absolutely: "on trend" then means L+ = L− = ``loss``
        (0.7 by default, the loss level the published tuners were trained around); normalised features do not depend on it."""
        n = self.bank.n_blocks
        x = torch.zeros(n, self.bank.cfg.n_features)
        raw = self.feature_config.kind == "raw"
        x[:, 0] = self.stats[:, 0]
        if raw:
            numel = torch.tensor([b["numel"] for b in self.blocks], dtype=torch.float32)
            x[:, 1] = (torch.exp(self.stats[:, 1]) - 1e-12).clamp_min(0) * numel / (numel - 1).clamp_min(1)
            x[:, 4] = 1.0
        else:
            x[:, 1] = self.stats[:, 1]
        first, out = self.bank.scales_and_output(x)
        sigma = first
        if raw:
            x[:, 2:4] = loss
        for _ in range(iterations):
            if raw:
                x[:, 4] = out.float()
            else:
                x[:, 4] = torch.log(sigma.float().clamp_min(self.feature_config.scale_floor))
            sigma, out = self.bank.scales_and_output(x)
        return first, sigma

    @torch.no_grad()
    def gates_at_rest(self, kappa: float, iterations: int = 20) -> torch.Tensor:
        """|gate| per block with on-trend losses, the scales at rest, a mean of coherence ``kappa`` in every
        block (1: the recent estimates are independent noise; (1 + β)/(1 − β): they all agree), at the fixed
        point of the previous-gate feature. A summary of what the direction policy does, without a model."""
        if self.policy is None:
            raise ValueError("this tuner has no direction policy")
        _, sigma = self.scales_at_rest()
        n = self.bank.n_blocks
        pertnn = torch.zeros(n, self.bank.cfg.n_features)
        gate = torch.zeros(n, dtype=torch.float64)
        for _ in range(iterations):
            gate = self.policy(policy_features(torch.full((n,), float(kappa)), sigma, pertnn, gate))
        return gate.abs()

    # ------------------------------------------------------------------------------------ files
    def save_pretrained(self, path: str | Path) -> Path:
        """Write the artifact to ``path`` (a ``.safetensors`` file) atomically; return the path."""
        path = Path(path)
        tensors = {f"pertnn.{k}": getattr(self.bank, k).detach().to("cpu", torch.float32).contiguous()
                   for k in BANK_TENSORS}
        tensors["base.block_stats"] = self.stats.to(torch.float32).contiguous()
        if self.policy is not None:
            tensors.update({f"policy.{k}": getattr(self.policy, k).detach().to("cpu", torch.float32).contiguous()
                            for k in BANK_TENSORS})
        doc = self.metadata() | {"tensors_sha256": tensors_sha256(tensors)}
        version = (SCHEDULE_FORMAT if self.schedule is not None
                   else SCHEDULES_SINCE.get(self.top_schedule, 6) if self.top_schedule is not None
                   else 5 if self.top is not None
                   else 4 if len(self.head_lrs) > 1 else 3 if self.head is not None
                   else 2 if self.policy is not None else 1)
        meta = {"format": FORMAT, "format_version": str(version),
                "zotune": strict_json(doc, separators=(",", ":"))}
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "Tuner":
        """Load and validate a tuner artifact: a local ``.safetensors`` file, or ``hf://owner/name[/file]``
        (``tuner.safetensors`` of a Hugging Face Hub repository, downloaded into the cache first)."""
        if str(path).startswith("hf://"):
            path = resolve(str(path))
        path = Path(path)
        if not path.is_file():
            raise ZotuneError(f"tuner file {path} not found; give the path of a .safetensors tuner "
                              "(python cli.py tuners list shows the known ones)")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for bad headers and sizes
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ZotuneError(f"{path} is not a readable safetensors file ({first}); it may be truncated or "
                              "corrupt: download or export it again") from None
        return cls._from_parts(path, header, tensors)

    @classmethod
    def _from_parts(cls, path: Path, header: dict, tensors: dict) -> "Tuner":
        def bad(what: str) -> ZotuneError:
            return ZotuneError(f"{path} is not a valid zotune tuner: {what}")

        if header.get("format") != FORMAT:
            raise bad(f"its metadata has format {header.get('format')!r}, expected {FORMAT!r}")
        try:
            version = int(header.get("format_version", ""))
        except ValueError:
            raise bad(f"bad format_version {header.get('format_version')!r}") from None
        if version > FORMAT_VERSION:
            raise ZotuneError(f"{path} has tuner format {version}, newer than this zotune reads "
                              f"({FORMAT_VERSION}); upgrade zotune")
        try:
            meta = json.loads(header["zotune"])
        except (KeyError, json.JSONDecodeError) as e:
            raise bad(f"its 'zotune' metadata is missing or not JSON ({type(e).__name__})") from None
        if not isinstance(meta, dict):
            raise bad(f"its 'zotune' metadata is {type(meta).__name__}, not a JSON object")
        missing = [k for k in _REQUIRED if k not in meta]
        if missing:
            raise bad(f"metadata key {missing[0]!r} is missing")
        problem = _metadata_problem(meta)
        if problem:
            raise bad(problem)
        names = [f"pertnn.{k}" for k in BANK_TENSORS] + ["base.block_stats"]
        absent = [k for k in names if k not in tensors]
        if absent:
            raise bad(f"tensor {absent[0]!r} is missing")
        blocks = meta["blocks"]
        try:
            pcfg = PertNNConfig(**meta["pertnn"])
            fcfg = FeatureConfig(**meta["features"])
            numels = [int(b.get("energy_numel", b["numel"])) for b in blocks]
            B, H, F = len(blocks), pcfg.hidden, pcfg.n_features
        except (TypeError, KeyError, ValueError) as e:
            raise bad(f"malformed config or block list ({e})") from None
        expected = {"pertnn.W1": (B, H, F), "pertnn.b1": (B, H), "pertnn.W2": (B, 1, H), "pertnn.b2": (B, 1),
                    "base.block_stats": (B, 2)}
        for k, shape in expected.items():
            if tuple(tensors[k].shape) != shape:
                raise bad(f"tensor {k!r} has shape {list(tensors[k].shape)}, expected {list(shape)} "
                          f"for {B} blocks")
            if not bool(torch.isfinite(tensors[k]).all()):
                raise bad(f"tensor {k!r} holds non-finite values")
        policy = cls._policy_from_parts(meta.get("direction_policy"), tensors, B, bad)
        adapter = meta.get("adapter")  # absent in older artifacts: the full model
        if adapter is not None and not (isinstance(adapter, dict) and "method" in adapter):
            raise bad(f"malformed adapter metadata {adapter!r}")
        fp = {"blocks": [{"name": b["name"], "shape": b["shape"]} for b in blocks], "tied_groups": meta["tied_groups"],
              "adapter": adapter}
        if fingerprint_sha256(fp) != meta["fingerprint_sha256"]:
            raise bad("its block list does not match its fingerprint hash (edited or corrupt metadata)")
        try:
            bank = PertNNBank(numels, pcfg)
        except ValueError as e:
            raise bad(f"malformed block sizes ({e})") from None
        checksum = meta.get("tensors_sha256")  # files written before it existed have none
        if checksum is not None and checksum != tensors_sha256(tensors):
            raise bad("its tensor data does not match the checksum in its metadata (corrupt file); "
                      "download or export it again")
        with torch.no_grad():
            for k in BANK_TENSORS:
                getattr(bank, k).copy_(tensors[f"pertnn.{k}"])
        return cls(bank=bank, feature_config=fcfg, base_model=meta["base_model"], blocks=blocks,
                   tied_groups=meta["tied_groups"], stats=tensors["base.block_stats"],
                   provenance=meta["provenance"], recommended=meta.get("recommended", {}), policy=policy,
                   adapter=adapter, head=meta.get("head"), top=meta.get("top"))

    @staticmethod
    def _policy_from_parts(doc, tensors: dict, n_blocks: int, bad) -> DirectionPolicy | None:
        """The direction policy described by the ``direction_policy`` metadata and the ``policy.*``
        tensors, validated like the bank (shapes, finite values); None when the metadata says none."""
        if doc is None:
            return None
        try:
            cfg = PolicyConfig(**doc["config"])
        except (TypeError, KeyError, ValueError) as e:
            raise bad(f"malformed direction_policy metadata ({e})") from None
        if list(doc.get("features", [])) != list(POLICY_FEATURE_NAMES):
            raise bad(f"its direction policy uses features {doc.get('features')}, this zotune knows "
                      f"{list(POLICY_FEATURE_NAMES)}; upgrade zotune")
        H = cfg.hidden
        expected = {"policy.W1": (n_blocks, H, N_POLICY_FEATURES), "policy.b1": (n_blocks, H),
                    "policy.W2": (n_blocks, 1, H), "policy.b2": (n_blocks, 1)}
        for k, shape in expected.items():
            if k not in tensors:
                raise bad(f"tensor {k!r} is missing")
            if tuple(tensors[k].shape) != shape:
                raise bad(f"tensor {k!r} has shape {list(tensors[k].shape)}, expected {list(shape)}")
            if not bool(torch.isfinite(tensors[k]).all()):
                raise bad(f"tensor {k!r} holds non-finite values")
        policy = DirectionPolicy(n_blocks, cfg)
        with torch.no_grad():
            for k in BANK_TENSORS:
                getattr(policy, k).copy_(tensors[f"policy.{k}"])
        return policy

