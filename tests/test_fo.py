"""The first-order reference (--method fo): steps against torch.optim written out by hand, pass counting,
the optimizer mapping, and resume bit for bit."""
import json

import pytest
import torch

import cli
from finetune.data.batches import batches
from finetune.data.models import load_model
from finetune.data.scoring import TaskScorer
from finetune.data.tasks import Task
from finetune.trainer import FinetuneConfig, train
from reference import bad, kill_at_call, synthetic_examples


def _task():
    examples = synthetic_examples(48)
    return Task("synthetic", "mc", examples[:32], examples[32:40], examples[40:])


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "momentum"])
def test_fo_steps_equal_torch_optim_steps_on_the_same_batches(optimizer):
    task = _task()
    cfg = FinetuneConfig(model="tiny-llama", method="fo", optimizer=optimizer, steps=3, lr=1e-2, batch_size=4,
                         weight_decay=0.1, n_test=8)
    model, tok = load_model("tiny-llama")
    scorer = TaskScorer(tok)
    result = train(cfg, model, scorer, task, progress=False)

    ref, _ = load_model("tiny-llama")
    params = [p for p in ref.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    if optimizer == "adam":
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    else:  # decoupled decay on matrices, written out: theta *= 1 - lr * wd, then the SGD step
        opt = torch.optim.SGD(params, lr=1e-2, momentum=0.9 if optimizer == "momentum" else 0.0)
    data = batches(task.train, 4, 0)
    losses = []
    for _ in range(3):
        batch = next(data)
        opt.zero_grad()
        loss = scorer.loss(ref, batch)
        loss.backward()
        losses.append(loss.item())
        if optimizer == "sgd":
            with torch.no_grad():
                for p in decay:
                    p.mul_(1 - 1e-2 * 0.1)
        elif optimizer == "momentum":  # torch's SGD with momentum takes the decay as coupled L2
            for p in decay:
                p.grad.add_(p.detach(), alpha=0.1)
        opt.step()
    assert result.train_loss == pytest.approx(losses, rel=1e-6)
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), load_model("tiny-llama")[0].parameters()))
    assert result.forwards == 3 and result.backwards == 3


def test_fo_lowers_the_training_loss():
    task = _task()
    model, tok = load_model("tiny-gpt2")
    scorer = TaskScorer(tok)
    with torch.no_grad():
        before = scorer.loss(model, task.train).item()
    train(FinetuneConfig(model="tiny-gpt2", method="fo", steps=20, lr=1e-3, batch_size=8), model, scorer, task,
          progress=False)
    with torch.no_grad():
        after = scorer.loss(model, task.train).item()
    assert after < before - 0.05, (before, after)


def test_cli_fo_records_forward_and_backward_passes_and_its_optimizer(tmp_path, jsonl, capsys):
    out = tmp_path / "fo"
    base = ["finetune", "--model", "tiny-opt", "--task", str(jsonl), "--steps", "3", "--batch-size", "4",
            "--n-test", "4", "--no-save-model"]
    assert cli.main([*base, "--method", "fo", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert (m["method"], m["optimizer"], m["forwards"], m["backwards"]) == ("fo", "adam", 3, 3)
    assert cli.main([*base, "--method", "fo", "--optimizer", "sgd", "--out", str(tmp_path / "sgd")]) == 0
    assert json.loads((tmp_path / "sgd" / "metrics.json").read_text())["optimizer"] == "sgd"
    assert cli.main([*base, "--out", str(tmp_path / "mezo")]) == 0  # the ZO default is still MeZO's sgd
    m = json.loads((tmp_path / "mezo" / "metrics.json").read_text())
    assert (m["optimizer"], m["forwards"], m["backwards"]) == ("sgd", 6, 0)
    assert "--q does not apply to --method fo" in bad(capsys, [*base, "--method", "fo", "--q", "2",
                                                                          "--out", str(tmp_path / "q")])


def test_fo_resumes_bit_for_bit(tmp_path, jsonl, monkeypatch, capsys):
    """Seven AdamW steps (linear schedule, weight decay) straight, and the same run killed in step 5 and
    resumed from the snapshot of step 3: same losses, evaluations and weights, bit for bit."""
    argv = ["finetune", "--method", "fo", "--model", "tiny-llama", "--task", str(jsonl), "--steps", "7",
            "--lr", "1e-3", "--weight-decay", "0.1", "--schedule", "linear", "--batch-size", "4", "--n-test", "8",
            "--eval-every", "2", "--snapshot-every", "3"]
    assert cli.main(argv + ["--out", str(tmp_path / "straight")]) == 0

    real_loss = kill_at_call(monkeypatch, 5)  # step 5's forward pass: the snapshot of step 3 survives
    out = tmp_path / "resumed"
    with pytest.raises(SystemExit):
        cli.main(argv + ["--out", str(out)])
    assert [p.name for p in (tmp_path / ".resumed.partial").iterdir()] == ["snapshot.pt"]
    monkeypatch.setattr(TaskScorer, "loss", real_loss)
    capsys.readouterr()
    assert cli.main(argv + ["--out", str(out), "--resume"]) == 0
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    for key in ("train_loss", "forwards", "backwards", "eval", "eval_history"):
        assert a[key] == b[key], key
    ma, _ = load_model(str(tmp_path / "straight" / "model"))
    mb, _ = load_model(str(out / "model"))
    for (k, v), w in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(v, w), k
