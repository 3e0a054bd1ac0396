"""The head race (--head-race, finetune/head.py HeadRace): its lanes against independent logistic regressions
trained by torch.optim.Adam, what it records, and its refusals (kill-and-resume: tests/test_head.py)."""
import json

import pytest
import torch
import torch.nn.functional as F

import cli
from finetune.data.batches import batches
from finetune.data.tasks import Task
from finetune.trainer import FinetuneConfig, train
from reference import bad
from test_head import _ids, _jsonl, _tiny, one_token_examples


def test_a_race_is_independent_adam_lanes_and_the_model_holds_the_lane_with_the_lowest_running_loss():
    """ZO lr 0 and a tiny eps, so the ZO method leaves the option rows where they are: each lane is then a softmax
    regression on the passes' head inputs, trained here from the initial rows by its own torch.optim.Adam (its
    logits computed from its own rows, not from the passes' logits), scored before each update on the step's
    passes, and averaged with factor 0.95. The model must end with the rows of the lane with the lowest running
    loss, and the race must have switched lanes on the way (else the check would be weak)."""
    examples = one_token_examples(64, seed=1)
    task = Task("yn", "mc", examples[:48], [], examples[48:51])  # 3 test rows: its passes are not the steps'
    lrs = [1e-3, 0.05]
    model, scorer = _tiny()
    head = model.get_output_embeddings()
    ids = _ids(scorer)
    w0 = head.weight.detach()[ids].clone()
    seen = []
    head.register_forward_hook(lambda m, i, o: seen.append(i[0][:, -1].float().clone()) if len(i[0]) == 4 else None)
    cfg = FinetuneConfig(model="tiny-llama", method="mezo", steps=12, lr=0.0, eps=1e-6, batch_size=4, seed=2,
                         head_race=lrs)
    result = train(cfg, model, scorer, task, progress=False)
    assert len(seen) == 2 * 12
    seen = [h.clone() for h in seen]  # out of inference mode, for autograd
    lanes = [torch.nn.Parameter(w0.clone()) for _ in lrs]
    adams = [torch.optim.Adam([w], lr=lr, betas=(0.9, 0.999), eps=1e-8) for w, lr in zip(lanes, lrs)]
    running, held = [None, None], [0, 0]
    for k, batch in zip(range(12), batches(task.train, 4, 2)):
        labels = torch.tensor([e.label for e in batch])
        for j, (w, adam) in enumerate(zip(lanes, adams)):
            adam.zero_grad()
            loss = sum(F.cross_entropy(h @ w.T, labels) for h in seen[2 * k:2 * k + 2]) / 2
            loss.backward()
            adam.step()
            running[j] = loss.item() if running[j] is None else 0.95 * running[j] + 0.05 * loss.item()
        active = min(range(2), key=lambda j: (running[j], j))
        held[active] += 1
    assert result.head_race["steps_active"] == held and min(held) > 0
    assert result.head_race["lrs"] == lrs and result.head_lr == lrs[active]
    assert torch.allclose(head.weight.detach()[ids], lanes[active].detach(), rtol=1e-4, atol=1e-5)


def test_finetune_records_and_prints_the_race(tmp_path, capsys):
    # (kill-and-resume of a race: tests/test_head.py, with the head step's)
    task = _jsonl(tmp_path, one_token_examples(60))
    assert cli.main(["finetune", "--model", "tiny-llama", "--task", task, "--steps", "6", "--lr", "1e-3",
                     "--head-race", "1e-1,1e-3", "--batch-size", "4", "--n-test", "8",
                     "--out", str(tmp_path / "r")]) == 0
    race = json.loads((tmp_path / "r" / "metrics.json").read_text())["head_race"]
    assert race["lrs"] == [1e-3, 1e-1] and sum(race["steps_active"]) == 6
    held = ", ".join(f"{lr:g} for {n}" for lr, n in zip(race["lrs"], race["steps_active"]))
    assert f"head race (steps each lr held the rows: {held}; at the end {race['active']:g})" in capsys.readouterr().out


def test_a_bench_records_the_race(tmp_path):
    task = _jsonl(tmp_path, one_token_examples(60))
    assert cli.main(["bench", "--model", "tiny-llama", "--task", task, "--methods", "mezo", "--lr-grid", "mezo=1e-3",
                     "--forwards", "8", "--batch-size", "4", "--n-dev", "4", "--n-test", "4",
                     "--seeds", "0", "--head-race", "1e-3,1e-2", "--out", str(tmp_path / "b")]) == 0
    (run,) = json.loads((tmp_path / "b" / "bench.json").read_text())["runs"]
    assert run["head_race"]["lrs"] == [1e-3, 1e-2] and sum(run["head_race"]["steps_active"]) == 4
    assert run["head_lr"] == run["head_race"]["active"]


def test_the_race_refuses_what_it_cannot_serve(tmp_path, capsys):
    yn = _jsonl(tmp_path, one_token_examples(40))
    base = ["finetune", "--model", "tiny-llama", "--steps", "1", "--batch-size", "4", "--n-test", "4", "--task", yn]
    cases = {"a": (["--head-race", "1e-3"], "two or more"),
             "b": (["--head-race", "1e-3,1e-3"], "distinct"),
             "c": (["--head-race", "0,1e-3"], "--head-race"),
             "d": (["--head-race", "1e-3,1e-2", "--head-lr", "1e-3"], "not both"),
             "e": (["--head-race", "1e-3,1e-2", "--method", "fo"], "backpropagation"),
             "f": (["--head-race", "1e-3,1e-2", "--peft", "lora"], "frozen"),
             "g": (["--head-race", "1e-3,1e-2", "--save-log"], "--head-race")}
    for name, (extra, says) in cases.items():
        assert says in bad(capsys, [*base, *extra, "--out", str(tmp_path / name)]), name
        assert not (tmp_path / name).exists()
    from finetune.common.errors import ZotuneError
    from finetune.trainer import check_parallel

    with pytest.raises(ZotuneError, match="data-parallel"):
        check_parallel(FinetuneConfig(head_race=[1e-3, 1e-2]), opt=None, dp=None)
