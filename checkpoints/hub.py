"""Sharing tuners: a Hub-ready folder with a model card, push to and pull from the Hugging Face Hub,
``hf://`` specs, and the list of tuners at hand (shipped in ``checkpoints/pretrained/`` and cached).

A shared tuner is a Hub model repository holding ``tuner.safetensors`` (the artifact, unchanged) and a
generated ``README.md`` model card whose front matter says ``library_name: zotune`` and the base model.
``hf://owner/name`` means that repository's ``tuner.safetensors``; ``hf://owner/name/path/file.safetensors``
another file in it. Pulled files live in ``<cache>/tuners/<owner>--<name>/`` (see
:func:`finetune.common.cache.cache_dir`). Every Hub failure (offline, missing repository or file, refused
upload) becomes a one-line :class:`ZotuneError`.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from checkpoints.artifact import Tuner, adapter_flags
from checkpoints.inspect import provenance_text
from pertnn.blocks import adapter_text
from checkpoints.remote import _REPO, TUNER_FILE, check_repo, download, hub_error, resolve
from finetune.common.atomic import atomic_dir
from finetune.common.cache import cache_dir
from finetune.common.errors import ZotuneError, first_line
from finetune.common.runs import check_output

CARD_FILE = "README.md"
SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained"
TAGS = ("zotune", "zeroth-order", "learned-optimizer")


def _is_hub_id(name: str) -> bool:
    return bool(_REPO.fullmatch(name)) and not Path(name).expanduser().exists()


# --------------------------------------------------------------------------------------- card
def model_card(tuner: Tuner, repo: str | None = None) -> str:
    """The ``README.md`` of a shared tuner: Hub front matter, what it is, its provenance and results,
    and how to use it."""
    meta = tuner.metadata()
    prov = tuner.provenance or {}
    repo_ref = repo or "OWNER/NAME"
    front = ["---", "library_name: zotune"]
    if _is_hub_id(tuner.base_model):
        front.append(f"base_model: {json.dumps(tuner.base_model)}")
    front += ["tags:", *[f"- {t}" for t in TAGS], "---", ""]
    n_params = sum(b["numel"] for b in tuner.blocks)
    mode = ("the ZO Fine-tuner paper's compatibility mode (raw features, σ = abs(MLP))"
            if meta["features"].get("kind") == "raw" else "zotune's PertNN (normalised features, softplus output)")
    lines = [
        f"# zotune tuner for {tuner.base_model}", "",
        "A learned zeroth-order (ZO) fine-tuner: one small MLP per trainable tensor of the base model (a PertNN "
        "bank) that sets the scale of that tensor's random perturbation at every step of MeZO-style "
        "fine-tuning. It is meta-trained once per base model and reused for any task on that architecture "
        "(derivative checkpoints with the same parameter names and shapes included).", "",
        "| | |", "|---|---|",
        f"| base model | `{tuner.base_model}` |",
        f"| blocks | {len(tuner.blocks)} tensors, {n_params:,} parameters |",
        f"| architecture fingerprint | `{meta['fingerprint_sha256'][:16]}` |",
        f"| adapter | {adapter_text(tuner.adapter)} |",
        f"| PertNN | hidden {meta['pertnn']['hidden']}, {mode}, energy normalisation "
        f"{'on' if meta['pertnn']['energy_norm'] else 'off'} |",
        f"| provenance | {provenance_text(tuner)} |",
    ]
    if prov.get("meta_tasks"):
        lines.append(f"| meta-training tasks | {', '.join(prov['meta_tasks'])} |")
    for key in ("steps", "seed", "date"):
        if key in prov and "imported_from" not in prov:
            lines.append(f"| meta-training {key} | {prov[key]} |")
    if tuner.head is not None:
        lines.append(f"| head step | Adam at {tuner.head_text} on the output head's option rows, along their exact "
                     "gradient read off the forward passes (multiple choice with one-token options; `--head-lr 0` "
                     "turns it off) |")
    if tuner.recommended:
        lines.append(f"| recommended fine-tuning | {', '.join(f'{k} = {v}' for k, v in tuner.recommended.items())} |")
    lines.append("")
    results = {k: prov[k] for k in ("results", "summary") if isinstance(prov.get(k), dict) and prov[k]}
    lines += ["## Results", ""]
    if results:
        for key, table in results.items():
            lines += [f"{'Meta-training summary' if key == 'summary' else 'Fine-tuning results'}:", ""]
            lines += [f"- {k}: {v}" for k, v in table.items()] + [""]
    else:
        lines += ["No results recorded with this tuner.", ""]
    lr = tuner.recommended.get("lr", 1e-4)
    eps = tuner.recommended.get("eps", 1e-3)
    lines += [
        "## How to use", "",
        "With zotune installed (`pip install -e .` in its repository), from the command line:", "",
        "```bash",
        f"python cli.py tuners pull {repo_ref}",
        f"python cli.py finetune --tuner hf://{repo_ref} --task sst2 --lr {lr:g} --eps {eps:g}"
        + (f" --schedule {tuner.schedule}" if tuner.schedule else "")
        + ("" if tuner.adapter is None else f" {adapter_flags(tuner.adapter)}") + " --out runs/sst2",
        "```", "",
        "or in Python, in your own loop:", "",
        "```python",
        "from checkpoints import Tuner",
        "from finetune.zo.optim import TunedZO",
        "",
        f'tuner = Tuner.from_pretrained("hf://{repo_ref}")',
        f"opt = TunedZO(model, tuner, lr={lr:g}, eps={eps:g})  # refuses a model of another architecture",
        "for batch in batches:",
        "    loss = opt.step(lambda: loss_fn(model, batch))  # two forward passes, no backward",
        "```", "",
        *([] if tuner.head is None else [
            "This tuner also takes a head step, which `finetune --tuner` applies by itself; in your own loop, wrap "
            "each step in `head.watching(batch)` of "
            + ("`finetune.head.HeadStep(model, scorer, lr=tuner.head_lr)`" if len(tuner.head_lrs) == 1 else
               "`finetune.head.HeadRace(model, scorer, tuner.head_lrs)`")
            + " and call `head.step()` after it (docs/python-api.md).", ""]),
        *([] if tuner.top is None else [
            "This tuner also takes a top-block step (the last layer's MLP, Llama family), which `finetune --tuner` "
            "applies by itself; in your own loop, wrap each step in `top.watching(batch)` of "
            "`finetune.top.TopStep(model, scorer, tuner.top_lr)` and call `top.step()` after it"
            + ("." if tuner.top_schedule is None else
               f" (`top.step(finetune.zo.optim.schedule_factor('{tuner.top_schedule}', t, T))` at step t + 1 of T: "
               f"this tuner's top-block step decays on a {tuner.top_schedule} schedule)."), ""]),
        f"`{TUNER_FILE}` is a safetensors file (no pickled code); `python cli.py tuners inspect {TUNER_FILE}` "
        "prints its metadata and per-block scales.", "",
    ]
    return "\n".join(front + lines)


def export(tuner_path: str | Path, out: str | Path, repo: str | None = None) -> Path:
    """Write a Hub-ready folder ``out`` (``tuner.safetensors`` and ``README.md``) atomically; an existing
    non-empty ``out`` is refused. ``repo`` only fills in the usage examples of the card."""
    if repo is not None:
        check_repo(repo)
    out = check_output(Path(out), flag="the export folder")
    tuner_path = resolve(tuner_path)
    tuner = Tuner.from_pretrained(tuner_path)
    with atomic_dir(out) as tmp:
        shutil.copyfile(tuner_path, tmp / TUNER_FILE)
        (tmp / CARD_FILE).write_text(model_card(tuner, repo))
    return out


# --------------------------------------------------------------------------------------- Hub
def push(tuner_path: str | Path, repo: str, private: bool = False) -> str:
    """Publish a tuner to the Hub repository ``repo`` (created if needed) as ``tuner.safetensors`` plus a
    generated model card; return the repository's URL. Needs a Hub token (``hf auth login``)."""
    import huggingface_hub

    check_repo(repo)
    with tempfile.TemporaryDirectory(prefix="zotune-push-") as tmp:
        folder = export(tuner_path, Path(tmp) / "upload", repo=repo)
        try:
            api = huggingface_hub.HfApi()
            api.create_repo(repo, repo_type="model", exist_ok=True, private=private)
            api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model",
                              commit_message="Upload zotune tuner")
        except Exception as e:  # noqa: BLE001 - every Hub failure is reported on one line
            raise hub_error(f"push to {repo}", repo, e, "check the network and try again") from None
    return f"https://huggingface.co/{repo}"


def pull(repo: str, filename: str = TUNER_FILE) -> tuple[Path, Tuner]:
    """Download a tuner from the Hub into the cache and validate it; return its path and the tuner."""
    path = download(repo, filename)
    return path, Tuner.from_pretrained(path)


# --------------------------------------------------------------------------------------- list
def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def list_tuners() -> list[dict]:
    """The shipped tuners (``checkpoints/pretrained/*.safetensors``) and the cached ones, each as a dict
    with ``source`` (``shipped`` or ``hf://owner/name[/file]``), ``path``, ``size`` (bytes), and
    ``base_model`` and ``provenance`` (a line) or ``error`` when the file does not load."""
    found: list[tuple[str, Path]] = []
    if SHIPPED_DIR.is_dir():
        found += [("shipped", p) for p in sorted(SHIPPED_DIR.glob("*.safetensors"))]
    cached = cache_dir() / "tuners"
    if cached.is_dir():
        for folder in sorted(p for p in cached.iterdir() if p.is_dir() and "--" in p.name):
            repo = folder.name.replace("--", "/", 1)
            for p in sorted(folder.rglob("*.safetensors")):
                rel = p.relative_to(folder)
                if any(part.startswith(".") for part in rel.parts):
                    continue  # the Hub client's own metadata
                found.append((f"hf://{repo}" + ("" if rel.as_posix() == TUNER_FILE else f"/{rel.as_posix()}"), p))
    rows = []
    for source, path in found:
        row = {"source": source, "path": str(path), "size": path.stat().st_size}
        try:
            tuner = Tuner.from_pretrained(path)
            row |= {"base_model": tuner.base_model, "provenance": provenance_text(tuner)}
        except ZotuneError as e:
            row["error"] = str(e)
        except Exception as e:  # noqa: BLE001 - one bad file never stops the list
            row["error"] = f"{path} does not load ({type(e).__name__}: {first_line(e)})"
        rows.append(row)
    return rows


def list_text() -> str:
    """The report printed by ``python cli.py tuners list``."""
    rows = list_tuners()
    if not rows:
        return (f"no tuners shipped ({SHIPPED_DIR}) or cached ({cache_dir() / 'tuners'}); "
                "get one with: python cli.py tuners pull owner/name")
    lines = []
    for r in rows:
        lines.append(f"{r['source']:<8} {r['path']}  ({_size(r['size'])})")
        if "error" in r:
            lines.append(f"         unreadable: {r['error']}")
        else:
            lines.append(f"         base model {r['base_model']}; {r['provenance']}")
    return "\n".join(lines)
