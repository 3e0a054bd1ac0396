"""--autocast bf16: every forward pass of a run under torch.autocast, weights and updates in fp32."""
import pytest
import torch
from torch import nn

import cli
from finetune.data.batches import batches
from finetune.data.models import load_model
from finetune.data.scoring import TaskScorer
from finetune.data.tasks import Task
from finetune.trainer import FinetuneConfig, make_run_optimizer, train
from reference import synthetic_examples


def _task():
    examples = synthetic_examples(48)
    return Task("synthetic", "mc", examples[:32], examples[32:40], examples[40:])


def _linear_outputs(model) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("method", ["mezo", "fo"])
def test_autocast_run_equals_the_same_steps_taken_under_torch_autocast_by_hand(method):
    task = _task()
    cfg = FinetuneConfig(model="tiny-llama", method=method, steps=3, lr=1e-2, batch_size=4, n_test=8,
                         autocast="bf16")
    model, tok = load_model("tiny-llama")
    scorer = TaskScorer(tok)
    seen = _linear_outputs(model)
    result = train(cfg, model, scorer, task, progress=False)
    assert seen and set(seen) == {torch.bfloat16}  # steps and evaluations alike
    assert all(p.dtype == torch.float32 for p in model.parameters())

    # the reference enters autocast for each forward pass, as a torch AMP loop does
    ref, _ = load_model("tiny-llama")
    opt = make_run_optimizer(cfg, ref)
    data = batches(task.train, 4, 0)

    def amp(f):
        def wrapped(*args):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return f(*args)
        return wrapped

    before = amp(scorer.assess)(ref, task.test, 4)
    losses = []
    for _ in range(3):
        batch = next(data)
        losses.append(opt.step(amp(lambda: scorer.loss(ref, batch))))
    after = amp(scorer.assess)(ref, task.test, 4)
    assert result.train_loss == losses
    assert (result.loss_before, result.loss_after) == (before["loss"], after["loss"])
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)

    plain, _ = load_model("tiny-llama")  # and it is not a no-op: fp32 compute gives other losses
    fp32 = train(FinetuneConfig(**{**cfg.__dict__, "autocast": None}), plain, scorer, task, progress=False)
    assert fp32.train_loss != result.train_loss


def test_autocast_with_low_precision_weights_is_refused_in_one_line(capsys, tmp_path):
    code = cli.main(["finetune", "--model", "tiny-llama", "--autocast", "bf16", "--dtype", "bf16",
                     "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --autocast bf16") and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_bench_fits_its_calibration_reference_under_autocast_as_finetune_does(tmp_path, jsonl):
    """bench's calibration reference (the label prior of the frozen model) is scored in the runs' precision: with
    --autocast bf16 it equals the one a bf16 finetune run reports, and differs from the fp32 one."""
    import json

    common = ["--model", "tiny-llama", "--task", str(jsonl), "--batch-size", "4", "--n-test", "8", "--n-dev", "8"]
    refs = {}
    for name, extra in (("bf16", ["--autocast", "bf16"]), ("fp32", [])):
        out = tmp_path / f"bench-{name}"
        assert cli.main(["bench", *common, *extra, "--methods", "mezo", "--lr-grid", "mezo=1e-3", "--seeds", "0",
                         "--forwards", "2", "--eval-points", "1", "--out", str(out)]) == 0
        refs[name] = json.loads((out / "bench.json").read_text())["calibration"]
    run = tmp_path / "run"
    assert cli.main(["finetune", *common, "--autocast", "bf16", "--method", "mezo", "--lr", "1e-3", "--steps", "1",
                     "--no-save-model", "--out", str(run)]) == 0
    by_finetune = json.loads((run / "metrics.json").read_text())["calibration"]
    assert refs["bf16"]["test"] == by_finetune["test"] and refs["bf16"]["train"] == by_finetune["train"]
    assert refs["bf16"]["test"]["before"] != refs["fp32"]["test"]["before"]
