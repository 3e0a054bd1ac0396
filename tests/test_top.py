"""The top-block step (finetune/top.py, --top-lr): its gradient against backpropagation through the whole model, in
one pass and averaged over MeZO's two perturbed passes; one step of a run against MeZO plus Adam computed here;
resume bit for bit; and its refusals."""
import json
import random

import pytest
import torch

from finetune.data.batches import batches
from finetune.data.models import load_model
from finetune.data.scoring import TaskScorer
from finetune.data.tasks import Example, Task
from finetune.top import PROJECTIONS, TopStep
from finetune.trainer import FinetuneConfig, step_closure, train
from finetune.zo.engine import Direction, ZOEngine
import cli
from reference import FakeGroup, bad, kill_at_call
from test_head import _jsonl, _straight_and_resumed, one_token_examples

WORDS = ["red", "blue", "cat", "dog", "sun", "moon", "tree", "rock"]


def mixed_examples(n, seed=0):
    """One-byte options, two or three per example, prompts of 2-5 words (so the batch is padded)."""
    rng = random.Random(seed)
    return [Example(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))) + ":", ("Y", "N", "M")[: 2 + i % 2],
                    rng.randrange(2)) for i in range(n)]


def _tiny():
    torch.manual_seed(0)
    model, tok = load_model("tiny-llama")
    return model, TaskScorer(tok)


def reference_gradient(model, scorer, batch) -> dict[str, torch.Tensor]:
    """Backpropagation of the batch's option cross-entropy through the whole model, in the last MLP's weights."""
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        scorer.loss(model, batch).backward()
    mlp = model.model.layers[-1].mlp
    grad = {n: getattr(mlp, n).weight.grad.clone() for n in PROJECTIONS}
    model.zero_grad(set_to_none=True)
    return grad


def test_one_pass_gives_the_full_models_gradient():
    model, scorer = _tiny()
    batch = mixed_examples(6)
    top = TopStep(model, scorer, lr=0.1)
    with torch.inference_mode(), top.watching(batch):  # as the ZO engine runs its passes
        scorer.loss(model, batch)
    got = top.gradient()
    ref = reference_gradient(model, scorer, batch)
    for n in PROJECTIONS:
        assert float(ref[n].abs().max()) > 0
        assert torch.allclose(got[n], ref[n], rtol=1e-4, atol=1e-7), n


def _errors(model, scorer, batch, ref, eps) -> tuple[float, float]:
    """(relative error of the mean of MeZO's two passes' gradients, of one pass's), worst over the projections."""
    engine, direction = ZOEngine(model), Direction(12345)
    closure = step_closure(model, scorer, batch)
    top, one = TopStep(model, scorer, lr=0.1), TopStep(model, scorer, lr=0.1)
    with top.watching(batch):
        engine.spsa(closure, direction, eps)  # MeZO's two passes
    assert top._passes == 2
    with one.watching(batch), engine.perturbed(direction, eps):  # the first of them alone
        engine.loss(closure)
    mean, single = top.gradient(), one.gradient()
    return tuple(max(float((g[n] - ref[n]).norm() / ref[n].norm()) for n in PROJECTIONS) for g in (mean, single))


def test_mezos_two_passes_average_to_the_gradient_at_theta():
    """One pass at theta + eps z gives the gradient there, off the gradient at theta by O(eps); the mean of MeZO's
    two passes (theta +- eps z) is off by O(eps^2): ten times smaller eps, about 10x and 100x closer."""
    model, scorer = _tiny()
    batch = mixed_examples(6, seed=1)
    ref = reference_gradient(model, scorer, batch)
    (mean3, one3), (mean4, one4) = (_errors(model, scorer, batch, ref, eps) for eps in (1e-3, 1e-4))
    assert 5 < one3 / one4 < 20, (one3, one4)  # first order
    assert mean3 / mean4 > 50, (mean3, mean4)  # second order
    assert mean4 < 0.05 * one4 and mean4 < 1e-3, (mean4, one4)


def test_a_run_with_the_top_step_is_mezo_plus_adam_on_the_last_mlp():
    """One step: every weight as MeZO leaves it, except the last MLP's, which Adam's first step moves by
    -lr * g / (|g| + 1e-8), g the mean of the step's two passes' gradients (within O(eps^2) of backpropagation)."""
    examples = one_token_examples(24)
    task = Task("yn", "mc", examples[:16], [], examples[16:19])
    base = dict(model="tiny-llama", method="mezo", steps=1, lr=1e-3, eps=1e-4, batch_size=4, seed=3)
    plain, scorer = _tiny()
    g_ref = reference_gradient(plain, scorer, next(batches(task.train, 4, 3)))
    train(FinetuneConfig(**base), plain, scorer, task, progress=False)
    model, scorer = _tiny()
    train(FinetuneConfig(**base, top_lr=0.01), model, scorer, task, progress=False)
    mlp, mlp0 = model.model.layers[-1].mlp, plain.model.layers[-1].mlp
    moved = {id(getattr(mlp, n).weight) for n in PROJECTIONS}
    for p, q in zip(model.parameters(), plain.parameters()):
        if id(p) not in moved:
            assert torch.equal(p, q)
    for n in PROJECTIONS:
        delta = getattr(mlp, n).weight.detach() - getattr(mlp0, n).weight.detach()
        g = g_ref[n]
        clear = g.abs() > 1e-2 * g.abs().max()  # entries whose sign the O(eps^2) error cannot flip
        assert torch.allclose(delta[clear], -0.01 * torch.sign(g[clear]), rtol=1e-3, atol=1e-6), n


def test_killed_run_with_the_top_step_resumes_bit_for_bit(tmp_path, monkeypatch, capsys):
    task = _jsonl(tmp_path, one_token_examples(40))
    argv = ["finetune", "--model", "tiny-llama", "--task", task, "--steps", "6", "--lr", "1e-3", "--top-lr", "1e-2",
            "--batch-size", "4", "--n-test", "8", "--eval-every", "2", "--snapshot-every", "3"]
    out = _straight_and_resumed(tmp_path, monkeypatch, capsys, argv)
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    for key in ("train_loss", "eval", "eval_history"):
        assert a[key] == b[key], key
    assert a["config"]["top_lr"] == 0.01


def test_top_schedule_decays_the_top_step_alone(tmp_path, monkeypatch, capsys):
    """--top-schedule linear: the top-block step's lr factor is 1 - t/T at step t + 1 (T steps) while the ZO method's
    stays constant; without it the step follows --schedule; a killed run with a decaying top step resumes only with
    its own --steps."""
    factors, zo_lrs = [], []
    real_step = TopStep.step

    def spy(self, lr_factor=1.0):
        factors.append(lr_factor)
        return real_step(self, lr_factor)

    monkeypatch.setattr(TopStep, "step", spy)
    examples = one_token_examples(24)
    task = Task("yn", "mc", examples[:16], [], examples[16:19])
    base = dict(model="tiny-llama", method="mezo", steps=4, lr=1e-3, batch_size=4, top_lr=0.01)
    for kind, want in [(dict(top_schedule="linear"), [1, 0.75, 0.5, 0.25]), (dict(schedule="cosine"),
                       [1, (1 + 2 ** -0.5) / 2, 0.5, (1 - 2 ** -0.5) / 2]), ({}, [1, 1, 1, 1])]:
        factors.clear()
        model, scorer = _tiny()
        train(FinetuneConfig(**base, **kind), model, scorer, task, progress=False)
        assert factors == pytest.approx(want), kind
    seen = []
    monkeypatch.setattr("finetune.trainer.make_schedule", lambda opt, name, steps: seen.append(name) or
                        torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0))
    train(FinetuneConfig(**base, top_schedule="linear"), *_tiny(), task, progress=False)
    assert seen == ["constant"]  # the ZO method's own schedule is untouched
    monkeypatch.undo()

    task = _jsonl(tmp_path, one_token_examples(40))
    argv = ["finetune", "--model", "tiny-llama", "--task", task, "--steps", "6", "--lr", "1e-3", "--top-lr", "1e-2",
            "--top-schedule", "linear", "--batch-size", "4", "--n-test", "8", "--snapshot-every", "3"]
    out = _straight_and_resumed(tmp_path, monkeypatch, capsys, argv)
    assert json.loads((out / "metrics.json").read_text())["config"]["top_schedule"] == "linear"
    longer = [*argv[:argv.index("--steps") + 1], "8", *argv[argv.index("--steps") + 2:]]
    kill_at_call(monkeypatch, 2 * 5)
    with pytest.raises(SystemExit):
        cli.main(longer + ["--out", str(tmp_path / "again")])
    monkeypatch.undo()
    capsys.readouterr()
    assert "linear schedule decays over 8 steps" in bad(capsys, [*argv, "--out", str(tmp_path / "again"), "--resume"])


def test_the_top_step_refuses_what_it_cannot_serve(tmp_path, jsonl, capsys):
    yn = _jsonl(tmp_path, one_token_examples(40))
    base = ["finetune", "--steps", "1", "--batch-size", "4", "--n-test", "4"]
    cases = [
        (["--model", "tiny-llama", "--task", yn, "--method", "fo", "--lr", "1e-3"], "for ZO methods"),
        (["--model", "tiny-llama", "--task", yn, "--peft", "lora"], "keeps frozen"),
        (["--model", "tiny-opt", "--task", yn], "Llama-family"),
        (["--model", "tiny-llama", "--task", str(jsonl)], "one token each"),
        (["--model", "tiny-llama", "--task", yn, "--save-log"], "--save-log"),
        (["--model", "tiny-llama", "--task", yn, "--top-lr", "-1"], "--top-lr"),
    ]
    for k, (args, words) in enumerate(cases):
        argv = [*base, *args, *([] if "--top-lr" in args else ["--top-lr", "1e-3"]), "--out", str(tmp_path / f"o{k}")]
        err = bad(capsys, argv)
        assert words in err and "--top-lr" in err, err
        assert not (tmp_path / f"o{k}").exists()


def test_the_top_step_refuses_data_parallel_runs():
    from finetune.common.errors import ZotuneError
    from finetune.trainer import check_parallel

    for mode in ("batch", "directions"):
        with pytest.raises(ZotuneError, match="runs in one process"):
            check_parallel(FinetuneConfig(top_lr=1e-3), opt=None, dp=FakeGroup(mode))
    check_parallel(FinetuneConfig(top_lr=0.0), opt=None, dp=FakeGroup("batch"))


def test_under_autocast_the_local_backward_pass_stays_in_float32():
    """--autocast bf16 runs the forward pass in bf16; the step's own backward pass through the block is float32: its
    gradient equals top_gradient computed outside autocast from the same recorded vectors (bf16 products would be
    off by about 1e-3)."""
    from finetune.head import option_token_ids
    from finetune.top import top_gradient

    model, scorer = _tiny()
    batch = mixed_examples(6, seed=2)
    mlp, norm, head = model.model.layers[-1].mlp, model.model.norm, model.get_output_embeddings()
    seen = {}
    hooks = [mlp.register_forward_hook(lambda m, i, o: seen.update(u=i[0][:, -1].float().clone(),
                                                                   m=o[:, -1].float().clone())),
             norm.register_forward_hook(lambda m, i, o: seen.update(x=i[0][:, -1].float().clone()))]
    top = TopStep(model, scorer, lr=0.1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), top.watching(batch):
        scorer.loss(model, batch)
    for h in hooks:
        h.remove()
    rows = [head.weight.detach()[ids] for ids in option_token_ids(scorer, batch)]
    ref = top_gradient(mlp, top.weights, seen["u"], seen["x"] - seen["m"], norm.weight.detach(),
                       norm.variance_epsilon, rows, [e.label for e in batch])
    got = top.gradient()
    for n in PROJECTIONS:
        assert torch.allclose(got[n], ref[n], rtol=1e-5, atol=1e-8), n
