"""Method exact: the head step and the top-block step alone, each step one plain forward pass at theta."""
from __future__ import annotations

import json

import torch

import cli
from finetune.bench import BenchConfig
from finetune.data.batches import batches
from finetune.data.tasks import Task
from finetune.top import PROJECTIONS
from finetune.trainer import FinetuneConfig, train
from reference import bad
from test_head import _jsonl, one_token_examples
from test_top import _tiny

HEAD_LR, TOP_LR = 3e-3, 1e-2


def _adam_reference(task: Task, steps: int, batch_size: int, seed: int, rows: list[int]):
    """torch.optim.Adam (betas 0.9, 0.999; eps 1e-8) on the last MLP's projections at TOP_LR and on the output head
    at HEAD_LR, along backpropagation's gradient of each batch's option cross-entropy through the whole model. The
    head is tied to the input embedding: its gradient is kept on the option rows ``rows`` only (the options never
    occur in the prompts, so there it is the head's alone), and Adam leaves the rows with a zero gradient in place."""
    model, scorer = _tiny()
    mlp, head = model.model.layers[-1].mlp, model.get_output_embeddings().weight
    opt = torch.optim.Adam([{"params": [getattr(mlp, n).weight for n in PROJECTIONS], "lr": TOP_LR},
                            {"params": [head], "lr": HEAD_LR}], betas=(0.9, 0.999), eps=1e-8)
    data = batches(task.train, batch_size, seed)
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            scorer.loss(model, next(data)).backward()
        keep = torch.zeros_like(head.grad)
        keep[rows] = head.grad[rows]
        head.grad = keep
        opt.step()  # the other weights are not in it
    model.zero_grad(set_to_none=True)
    return model


def test_exact_is_adam_on_the_head_rows_and_the_last_mlp_along_backpropagations_gradient():
    """Three steps of method exact move the last MLP and the options' head rows as torch.optim.Adam moves them along
    backpropagation's gradient of the same batches (one pass at theta: the exact gradient, not an estimate; within
    1e-5 of steps of about 1e-2); every other weight stays bit for bit; one forward pass per step."""
    examples = one_token_examples(28)
    task = Task("yn", "mc", examples[:16], [], examples[16:20])
    model, scorer = _tiny()
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    cfg = FinetuneConfig(model="tiny-llama", method="exact", steps=3, batch_size=4, seed=3, head_lr=HEAD_LR,
                         top_lr=TOP_LR)
    cfg.validate()
    result = train(cfg, model, scorer, task, progress=False)
    assert (result.forwards, result.backwards, len(result.train_loss)) == (3, 0, 3)
    rows = sorted({t for ex in examples for o in ex.options for t in scorer.tok(o, add_special_tokens=False)
                   ["input_ids"]})
    ref = dict(_adam_reference(task, 3, 4, 3, rows).named_parameters())
    last = len(model.model.layers) - 1
    moved = {f"model.layers.{last}.mlp.{n}.weight" for n in PROJECTIONS} | {"model.embed_tokens.weight"}  # tied head
    assert moved <= set(start)
    for name, p in model.named_parameters():
        if name not in moved:
            assert torch.equal(p, start[name]), name
            continue
        assert float((p.detach() - start[name]).abs().max()) > 5e-3, name
        assert torch.allclose(p.detach(), ref[name].detach(), rtol=0, atol=1e-5), name
    head = model.get_output_embeddings().weight
    assert (head != start["model.embed_tokens.weight"]).any(1).nonzero().flatten().tolist() == rows


def test_bench_gives_exact_one_step_per_forward_pass():
    """At equal forward passes, exact takes twice MeZO's steps (one pass per step against two)."""
    base = FinetuneConfig(model="tiny-llama", task="x.jsonl", top_lr=1e-3)
    runs = BenchConfig(base=base, methods=["mezo", "exact"], seeds=[0], forwards=10, eval_points=0).runs()
    assert [(c.method, c.steps) for c in runs] == [("mezo", 5), ("exact", 10)]


def test_an_exact_arm_is_labelled_without_a_zo_lr(tmp_path, capsys):
    """In tables, in late-rise notes and in what bench prints, an exact arm shows no ZO lr (it takes none)."""
    from finetune.bench import _arm_label, late_rises

    m = {"method": "exact", "head_lr": 3e-4, "config": {"lr": 1e-6, "schedule": "linear", "top_lr": 1e-3,
                                                         "top_schedule": "linear"}}
    assert _arm_label(m) == "exact linear, head 0.0003, top 0.001 linear"
    assert _arm_label({**m, "method": "tuner"}) == "tuner 1e-06 linear, head 0.0003, top 0.001 linear"
    rows = [{"method": "exact", "lr": 1e-6, "late_rise_seeds": [1, 2]}, {"method": "mezo", "lr": 3e-5,
                                                                          "late_rise_seeds": [0]}]
    assert late_rises(rows) == ["exact, seeds 1, 2", "mezo lr 3e-05, seed 0"]
    yn = _jsonl(tmp_path, one_token_examples(40))
    assert cli.main(["bench", "--model", "tiny-llama", "--task", yn, "--methods", "mezo,exact", "--top-lr", "1e-3",
                     "--lr-grid", "mezo=1e-3", "--forwards", "4", "--seeds", "0", "--eval-points", "0", "--batch-size",
                     "4", "--n-test", "4", "--n-dev", "4", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "   exact  no ZO lr    final loss" in out and "    mezo  lr 0.001    final loss" in out, out


def test_exact_refuses_what_it_cannot_use(tmp_path, capsys):
    yn = _jsonl(tmp_path, one_token_examples(24))
    base = ["finetune", "--model", "tiny-llama", "--task", yn, "--method", "exact", "--steps", "2", "--batch-size",
            "4", "--n-test", "4"]
    cases = [([], "add --head-lr"), (["--head-lr", "0"], "add --head-lr"), (["--top-lr", "1e-3", "--q", "2"], "--q"),
             (["--top-lr", "1e-3", "--optimizer", "adam"], "--optimizer"),
             (["--top-lr", "1e-3", "--weight-decay", "0.1"], "--weight-decay"),
             (["--head-lr", "1e-3", "--save-log"], "--save-log"),
             (["--head-lr", "1e-3", "--lr", "1e-3"], "drop --lr")]
    for k, (args, words) in enumerate(cases):
        out = tmp_path / f"o{k}"
        err = bad(capsys, [*base, *args, "--out", str(out)])
        assert words in err, err
        assert not out.exists()
    for k, grid in enumerate(("exact=1e-3,1e-2", "exact=1e-3")):  # one value too: it would move nothing
        out = tmp_path / f"bench{k}"
        err = bad(capsys, ["bench", "--model", "tiny-llama", "--task", yn, "--methods", "mezo,exact", "--top-lr",
                           "1e-3", "--lr-grid", grid, "--forwards", "4", "--out", str(out)])
        assert "--lr-grid exact" in err and not out.exists()


def test_exact_runs_from_the_cli_and_records_one_pass_per_step(tmp_path, capsys):
    yn = _jsonl(tmp_path, one_token_examples(40))
    out = tmp_path / "run"
    assert cli.main(["finetune", "--model", "tiny-llama", "--task", yn, "--method", "exact", "--head-lr", "1e-2",
                     "--top-lr", "1e-2", "--steps", "6", "--batch-size", "4", "--n-test", "8", "--no-save-model",
                     "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert (m["forwards"], m["config"]["method"], len(m["train_loss"])) == (6, "exact", 6)


def test_exact_takes_its_steps_from_a_tuner_file(tmp_path, capsys):
    """`--tuner FILE --method exact` runs the file's head and top-block steps, with their schedules and the schedule
    the file recommends, as the same lrs and schedules given by hand do (bit for bit); a file that carries neither
    step, or both turned off, is refused in one line and nothing is written."""
    from checkpoints import Tuner
    from finetune.data.models import load_model

    model, _ = load_model("tiny-llama")
    plain = Tuner.for_model(model, "tiny-llama")
    steps = plain.with_head(3e-3).with_top(1e-2, "linear").with_schedule("linear")
    path, bare = steps.save_pretrained(tmp_path / "steps.safetensors"), plain.save_pretrained(tmp_path / "b.safetensors")
    yn = _jsonl(tmp_path, one_token_examples(40))
    base = ["finetune", "--model", "tiny-llama", "--task", yn, "--method", "exact", "--steps", "6", "--batch-size", "4",
            "--n-test", "8", "--no-save-model"]
    assert cli.main([*base, "--tuner", str(path), "--out", str(tmp_path / "file")]) == 0
    assert cli.main([*base, "--head-lr", "3e-3", "--top-lr", "1e-2", "--top-schedule", "linear", "--schedule", "linear",
                     "--out", str(tmp_path / "hand")]) == 0
    a, b = (json.loads((tmp_path / k / "metrics.json").read_text()) for k in ("file", "hand"))
    assert a["train_loss"] == b["train_loss"] and a["eval"] == b["eval"] and a["forwards"] == 6
    assert a["config"]["method"] == "exact" and a["config"]["schedule"] == "linear"
    assert a["head_lr"] == 3e-3 and a["config"]["top_lr"] == 1e-2 and a["config"]["top_schedule"] == "linear"
    for k, extra in enumerate([["--tuner", str(bare)], ["--tuner", str(path), "--head-lr", "0", "--top-lr", "0"]]):
        out = tmp_path / f"refused{k}"
        assert "takes neither" in bad(capsys, [*base, *extra, "--out", str(out)])
        assert not out.exists()
