"""One rank of a data-parallel test run, started by tests/test_distributed.py under torchrun.

    python -m torch.distributed.run --nproc-per-node 2 tests/dp_worker.py SCENARIO OUT_DIR

Scenarios: ``corrupt`` (rank 1 changes one weight after two steps: the checksum must stop every rank),
``meta-killed`` / ``meta-resume`` TASKS (meta-training interrupted after a checkpoint, then resumed).
"""
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from finetune.common.errors import ZotuneError  # noqa: E402
from finetune.data.models import load_model  # noqa: E402
from finetune.data.scoring import TaskScorer  # noqa: E402
from finetune.data.tasks import Task  # noqa: E402
from finetune.trainer import FinetuneConfig, train  # noqa: E402
from finetune.zo.distributed import from_env  # noqa: E402


def corrupt(out: Path) -> None:
    from reference import synthetic_examples

    torch.set_num_threads(1)
    dp = from_env(mode="batch", check_every=1)
    examples = synthetic_examples(16)
    task = Task("synthetic", "mc", examples, examples[:4], examples[:4])
    model, tok = load_model("tiny-llama")
    calls = {"n": 0}

    class Corrupting(TaskScorer):
        def loss_terms(self, model, examples, like=None):
            calls["n"] += 1
            if dp.rank == 1 and calls["n"] == 5:  # the first pass of step 3: parameters hold their own values here
                with torch.no_grad():
                    next(model.parameters()).data.view(-1)[0] += 1e-3
            return super().loss_terms(model, examples, like)

    cfg = FinetuneConfig(model="tiny-llama", steps=5, lr=1e-3, batch_size=4)
    try:
        train(cfg, model, Corrupting(tok), task, progress=False, dp=dp)
        outcome = "finished"
    except ZotuneError as exc:
        outcome = str(exc)
    (out / f"rank{dp.rank}.json").write_text(json.dumps({"outcome": outcome}))
    dp.close()


def meta(out: Path, killed: bool) -> None:
    from meta.train import MetaConfig, MetaTrainer, meta_train

    dp = from_env(check_every=1)
    cfg = MetaConfig(model="tiny-llama", tasks=sys.argv[3].split(","), steps=4, batch_size=5, hidden=8,
                     restart_every=3, threads=1)
    if killed:
        advance = MetaTrainer.advance

        def killed_at_3(self):
            if self.step == 2:
                raise KeyboardInterrupt
            return advance(self)

        MetaTrainer.advance = killed_at_3
        try:
            meta_train(cfg, out / "t.safetensors", snapshot_every=2, progress=False, dp=dp)
        except KeyboardInterrupt:
            pass
    else:
        meta_train(cfg, out / "t.safetensors", resume=True, snapshot_every=2, progress=False, dp=dp)
    dp.close()


if __name__ == "__main__":
    scenario, out = sys.argv[1], Path(sys.argv[2])
    if scenario == "corrupt":
        corrupt(out)
    else:
        meta(out, killed=scenario == "meta-killed")
