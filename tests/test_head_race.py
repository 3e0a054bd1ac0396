"""The head race (--head-race, finetune/head.py HeadRace): its lanes against independent logistic regressions
trained by torch.optim.Adam, what it records, and its refusals (kill-and-resume: tests/test_head.py)."""
import json
import math
import zlib

import pytest
import torch
import torch.nn.functional as F

import cli
from finetune.data.batches import batches
from finetune.data.tasks import Task
from finetune.trainer import FinetuneConfig, train
from reference import FakeGroup, bad
from test_head import _ids, _jsonl, _tiny, one_token_examples


def test_a_race_is_independent_adam_lanes_and_the_model_holds_the_lane_whose_shadow_fits_held_back_examples():
    """ZO lr 0 and a tiny eps, so the ZO method leaves the option rows where they are: each lane and each shadow is
    then a softmax regression on the passes' head inputs, trained here from the initial rows by its own
    torch.optim.Adam (logits from its own rows, not from the passes' logits). A lane learns from every example; its
    shadow from those whose CRC-32 of prompt, NUL and label is not 0 mod 5, and is scored on the others before it
    steps: each held-back example's latest loss (mean over the step's passes) in a table, the score the table's
    mean. Two epochs, so the table's entries are replaced. The model must end with the rows of the lane with the
    lowest score, and the lead must have changed hands several times on the way (else the check would be weak)."""
    examples = one_token_examples(64, seed=1)
    task = Task("yn", "mc", examples[:48], [], examples[48:51])  # 3 test rows: its passes are not the steps'
    lrs, steps = [1e-2, 0.3], 24
    model, scorer = _tiny()
    head = model.get_output_embeddings()
    ids = _ids(scorer)
    w0 = head.weight.detach()[ids].clone()
    seen = []
    head.register_forward_hook(lambda m, i, o: seen.append(i[0][:, -1].float().clone()) if len(i[0]) == 4 else None)
    cfg = FinetuneConfig(model="tiny-llama", method="mezo", steps=steps, lr=0.0, eps=1e-6, batch_size=4, seed=2,
                         head_race=lrs)
    result = train(cfg, model, scorer, task, progress=False)
    assert len(seen) == 2 * steps
    seen = [h.clone() for h in seen]  # out of inference mode, for autograd
    lanes = [torch.nn.Parameter(w0.clone()) for _ in lrs]
    shadows = [torch.nn.Parameter(w0.clone()) for _ in lrs]
    adams = [torch.optim.Adam([w], lr=lr, betas=(0.9, 0.999), eps=1e-8) for w, lr in zip(lanes + shadows, lrs * 2)]
    tables, held, replaced, path = [{}, {}], [0, 0], 0, []
    for k, batch in zip(range(steps), batches(task.train, 4, 2)):
        labels = torch.tensor([e.label for e in batch])
        keys = [zlib.crc32(f"{e.prompt}\x00{e.label}".encode()) for e in batch]
        out = torch.tensor([key % 5 == 0 for key in keys])
        passes = seen[2 * k:2 * k + 2]
        for j in range(2):
            with torch.no_grad():
                for i in torch.nonzero(out).flatten().tolist():
                    replaced += keys[i] in tables[j]
                    tables[j][keys[i]] = sum(F.cross_entropy(h[i:i + 1] @ shadows[j].T, labels[i:i + 1]).item()
                                             for h in passes) / 2
            for w, adam, rows in ((lanes[j], adams[j], slice(None)), (shadows[j], adams[2 + j], ~out)):
                if not labels[rows].numel():
                    continue
                adam.zero_grad()
                loss = sum(F.cross_entropy(h[rows] @ w.T, labels[rows]) for h in passes) / 2
                loss.backward()
                adam.step()
        scores = [sum(t.values()) / len(t) if t else math.inf for t in tables]
        active = min(range(2), key=lambda j: (scores[j], j))
        held[active] += 1
        path.append(active)
    assert replaced and 0 < len(tables[0]) < len(task.train)  # some held back, and seen again in epoch 2
    assert result.head_race["steps_active"] == held
    assert sum(a != b for a, b in zip(path, path[1:])) >= 3  # the lead changed hands, back and forth
    assert result.head_race["lrs"] == lrs and result.head_lr == lrs[active]
    assert result.head_race["held_back"] == len(tables[0])
    assert result.head_race["scores"] == pytest.approx(scores, rel=1e-4)
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
             "f": (["--head-race", "1e-3,1e-2", "--peft", "prefix"], "frozen")}
    for name, (extra, says) in cases.items():
        assert says in bad(capsys, [*base, *extra, "--out", str(tmp_path / name)]), name
        assert not (tmp_path / name).exists()
    from finetune.common.errors import ZotuneError
    from finetune.trainer import check_parallel

    with pytest.raises(ZotuneError, match="runs data-parallel in --dp-mode batch only"):
        check_parallel(FinetuneConfig(head_race=[1e-3, 1e-2]), opt=None, dp=FakeGroup("directions"))


def test_a_held_back_example_twice_in_a_batch_is_scored_once_and_a_non_finite_score_never_leads():
    from finetune.head import HeadRace, held_back, race_key

    model, scorer = _tiny()
    examples = one_token_examples(40)
    ex = next(e for e in examples if held_back(e))
    other = next(e for e in examples if not held_back(e))
    race = HeadRace(model, scorer, [1e-3, 1e-2])
    with torch.no_grad():
        ref = F.cross_entropy(scorer.option_scores(model, [ex]), torch.tensor([ex.label])).item()
        with race.watching([ex, other, ex]):
            scorer.loss(model, [ex, other, ex])
            scorer.loss(model, [ex, other, ex])
    race.step()
    for lane in race.lanes:  # before the step every shadow had the model's rows: the observed loss, once
        assert lane["table"] == {race_key(ex): pytest.approx(ref, rel=1e-5)}
    race.lanes[0]["table"][race_key(ex)] = float("nan")
    assert race.score(0) == math.inf and race.score(1) == pytest.approx(ref, rel=1e-5)
    summary = race.summary()
    assert summary["scores"][0] is None and json.dumps(summary, allow_nan=False)
