"""The Hub paths (`--model org/name`, the Hub tasks) run here from a local Hugging Face cache, offline.

The test writes a tiny model and tokenizer into a Hub cache laid out as huggingface_hub lays it out
(``models--org--name/{blobs,snapshots/<commit>,refs/main}``; checked with ``huggingface_hub.scan_cache_dir``),
and the sst2 data into the `datasets` cache the way `datasets` prepares a Hub parquet dataset. Then a fresh
process, with ``HF_HOME`` pointing there and ``HF_HUB_OFFLINE=1`` (the cache locations are read when the
libraries are imported), loads ``zotune-test/tiny-llama`` and ``sst2`` through the code path a real Hub id and
a real Hub task take (load_model -> _from_hub -> Auto*.from_pretrained; load_task -> datasets.load_dataset),
and fine-tunes the one on the other with the CLI.
"""
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import datasets
import huggingface_hub
import pytest
from datasets.packaged_modules.parquet.parquet import Parquet

from finetune.data.models import load_model

ROOT = Path(__file__).resolve().parents[1]
REPO = "zotune-test/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_model_repo(hub_cache: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> Path:
    """Put the files of ``folder`` into ``hub_cache`` as a downloaded model repository at ``commit``: content
    in blobs/ named by their sha256, snapshots/<commit>/<file> relative symlinks to them, refs/main."""
    root = hub_cache / f"models--{repo_id.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True)
    (root / "snapshots" / commit).mkdir(parents=True)
    for file in sorted(folder.iterdir()):
        data = file.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (root / "snapshots" / commit / file.name).symlink_to(os.path.relpath(blob, root / "snapshots" / commit))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return root


SST2 = {split: [{"idx": i, "sentence": f"{split} sentence number {i} is {'fine' if i % 2 else 'awful'} ",
                 "label": i % 2} for i in range(n)] for split, n in (("train", 24), ("validation", 10))}


def cache_sst2(datasets_cache: Path, tmp: Path) -> None:
    """Prepare nyu-mll/glue, config sst2, in the `datasets` cache as a Hub load leaves it: prepared by the parquet
    builder under the dataset's name and config, in <cache>/nyu-mll___glue/sst2/0.0.0/<hash>/glue-<split>.arrow.
    (The builder refuses local data files when given a repo_id, so it prepares under the bare name "glue" and
    the folder is then moved under the namespace, which is all the repo_id changes in the layout.)"""
    files = {}
    for split, rows in SST2.items():
        files[split] = str(tmp / f"sst2-{split}.parquet")
        datasets.Dataset.from_list(rows).to_parquet(files[split])
    builder = Parquet(cache_dir=str(tmp / "build"), dataset_name="glue", config_name="sst2", config_id="sst2",
                      hash=COMMIT[:16], data_files=files)
    builder.download_and_prepare()
    prepared = Path(builder.cache_dir)
    assert prepared.relative_to(tmp / "build").parts == ("glue", "sst2", "0.0.0", COMMIT[:16])
    assert sorted(p.name for p in prepared.glob("*.arrow")) == ["glue-train.arrow", "glue-validation.arrow"]
    datasets_cache.mkdir(parents=True)
    (tmp / "build" / "glue").rename(datasets_cache / "nyu-mll___glue")


SCRIPT = """
import json, sys
import torch
from transformers.utils import cached_file
import cli
from finetune.common.errors import ZotuneError
from finetune.data.models import _classify, load_model
from finetune.data.tasks import load_task

repo, reference, out = sys.argv[1:]
assert _classify(repo) == ("hub", repo)
model, tok = load_model(repo)
ref, _ = load_model(reference)
same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
task = load_task("sst2", seed=4, n_train=12, n_dev=4, n_test=6)
try:
    load_model("zotune-test/absent")
    absent = None
except ZotuneError as err:
    absent = str(err)
code = cli.main(["finetune", "--model", repo, "--task", "sst2", "--n-train", "12", "--n-test", "6", "--steps", "2",
                 "--batch-size", "4", "--seed", "4", "--no-save-model", "--out", out])
print(json.dumps({"same_weights": same, "tokens": tok("hello")["input_ids"], "code": code,
                  "model_class": type(model).__name__, "name_or_path": model.name_or_path,
                  "config_file": cached_file(repo, "config.json"), "absent": absent,
                  "task": {s: [[e.prompt, list(e.options), e.label] for e in getattr(task, s)]
                           for s in ("train", "dev", "test")}}))
"""


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    model, tok = load_model("tiny-llama", seed=5)
    saved = tmp / "saved"
    model.save_pretrained(saved)
    tok.save_pretrained(saved)
    home = tmp / "home"
    cache_model_repo(home / "hub", REPO, saved)
    cache_sst2(home / "datasets", tmp)
    return home, saved


def test_the_cache_is_laid_out_as_huggingface_hub_expects(hf_home):
    home, saved = hf_home
    info = huggingface_hub.scan_cache_dir(home / "hub")
    (repo,) = info.repos
    assert (repo.repo_id, repo.repo_type) == (REPO, "model")
    (revision,) = repo.revisions
    assert revision.commit_hash == COMMIT and revision.refs == {"main"}
    assert sorted(f.file_name for f in revision.files) == sorted(p.name for p in saved.iterdir())
    assert not info.warnings
    located = huggingface_hub.try_to_load_from_cache(REPO, "config.json", cache_dir=home / "hub")
    assert Path(located).read_bytes() == (saved / "config.json").read_bytes()


def expected_sst2(seed, n_train, n_dev, n_test):
    """MeZO's template and label words on the rows written above, and the documented Hub split: train and dev
    from the shuffled train split (dev first), test from the shuffled validation split, one Random(seed)."""
    pools = {split: [[f"{r['sentence'].strip()} It was", [" terrible", " great"], r["label"]] for r in rows]
             for split, rows in SST2.items()}
    rng = random.Random(seed)
    rng.shuffle(pools["train"])
    rng.shuffle(pools["validation"])
    return {"dev": pools["train"][:n_dev], "train": pools["train"][n_dev:n_dev + n_train],
            "test": pools["validation"][:n_test]}


def test_hub_model_and_hub_task_load_offline_from_the_local_cache(hf_home, tmp_path):
    home, saved = hf_home
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, REPO, str(saved), str(out)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["same_weights"] and result["model_class"] == "LlamaForCausalLM" and result["code"] == 0
    assert result["tokens"] == load_model(str(saved))[1]("hello")["input_ids"]
    assert result["name_or_path"] == REPO
    assert result["config_file"] == str(home / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
                                         / "config.json")
    assert result["absent"].startswith("cannot load 'zotune-test/absent': not in the local Hugging Face cache")
    assert result["task"] == expected_sst2(4, 12, 4, 6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["model"], metrics["task"], metrics["forwards"]) == (REPO, "sst2", 4)
    assert metrics["eval"]["n"] == 6 and len(metrics["train_loss"]) == 2
