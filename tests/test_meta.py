"""Tests for meta-training: the meta-gradient (closed form, higher, finite differences) and the loop."""
from __future__ import annotations

import copy

import pytest
import torch

from finetune.data.models import load_model
from finetune.data.scoring import TaskScorer
from finetune.data.tasks import Example
from finetune.zo.engine import Direction, ZOEngine
from meta.metagrad import closed_form, unrolled
from pertnn import PertNNBank, PertNNConfig, StepHistory, model_blocks
from reference import central_difference, kill_meta_at

BATCH = [Example(prompt=f"q{i}: is {i} even?", options=(" yes", " no"), label=i % 2) for i in range(4)]


def _setup(name="tiny-llama", noise="table", dtype=torch.float64, seed=0):
    model, tok = load_model(name, seed=seed)
    model = model.to(dtype)
    scorer = TaskScorer(tok, max_length=32)
    engine = ZOEngine(model, noise=noise)
    gen = torch.Generator().manual_seed(1)
    bank = PertNNBank([b.numel for b in model_blocks(model)], PertNNConfig(hidden=8), generator=gen, dtype=dtype)
    bank.randomize_output_(gen)  # a non-zero last layer, so every bank parameter gets a gradient
    return model, scorer, engine, bank


def _loss_fn(scorer):
    return lambda m: scorer.loss(m, BATCH)


# Llama and Qwen2 compute RMSNorm in float32 whatever the model dtype, which puts ~1e-7 noise on the loss
# and makes finite differences useless there; GPT-2 and OPT run in float64 throughout.
@pytest.mark.parametrize("name,noise,fd", [
    ("tiny-gpt2", "table", True), ("tiny-opt", "gaussian", True),
    ("tiny-llama", "table", False), ("tiny-qwen2", "gaussian", False),
])
def test_closed_form_equals_higher_and_finite_difference(name, noise, fd):
    """K = 1: the closed-form chain rule and autograd through higher give the same bank gradient, and both
    match a central finite difference of L(θ − η g σ(φ) u) in bank parameters (g held fixed)."""
    model, scorer, engine, bank = _setup(name, noise=noise)
    loss_fn = _loss_fn(scorer)
    seed, eps, lr = 1234, 1e-3, 0.5
    theta0 = [p.detach().clone() for p in engine.params]

    hist_a = StepHistory(len(engine.params))
    hist_a.update(0.7, 0.6, torch.ones(len(engine.params)))  # non-trivial loss features
    hist_b = copy.deepcopy(hist_a)
    feats = hist_a.features(engine.params)

    bank.zero_grad()
    a = closed_form(engine, bank, hist_a, loss_fn, seed, eps, lr)
    grads_a = {k: v.grad.clone() for k, v in bank.named_parameters()}
    for p, t in zip(engine.params, theta0):  # θ is back (up to the rounding of θ − a u + a u)
        torch.testing.assert_close(p.detach(), t, rtol=0, atol=1e-12)

    bank.zero_grad()
    b = unrolled(engine, bank, hist_b, loss_fn, [seed], eps, lr)
    grads_b = {k: v.grad.clone() for k, v in bank.named_parameters()}
    # the same estimate (θ came back up to rounding, so the losses agree to ~1e-15)
    assert a.g == pytest.approx(b.g, rel=1e-9) and a.loss_plus == pytest.approx(b.loss_plus, rel=1e-12)
    assert a.meta_loss == pytest.approx(b.meta_loss, rel=1e-12)
    for k in grads_a:
        assert grads_a[k].abs().max() > 0, k
        torch.testing.assert_close(grads_a[k], grads_b[k], rtol=1e-6, atol=1e-12)
    assert hist_a.losses == pytest.approx(hist_b.losses, rel=1e-12)

    if not fd:
        return
    # finite difference in b2 (the output bias of each block's MLP) and one W1 entry, g held at a.g
    def meta_loss() -> float:
        sigma = bank(feats).detach()
        with torch.no_grad():
            for i, (p, t) in enumerate(zip(engine.params, theta0)):
                p.copy_(t - lr * a.g * float(sigma[i]) * engine.unit_noise(seed, i))
            value = float(loss_fn(model))
            for p, t in zip(engine.params, theta0):
                p.copy_(t)
        return value

    for name, idx in [("b2", (0, 0)), ("b2", (3, 0)), ("b2", (len(engine.params) - 1, 0)), ("W1", (2, 1, 3))]:
        diff = central_difference(meta_loss, getattr(bank, name), idx)
        assert diff == pytest.approx(float(grads_a[name][idx]), rel=1e-4, abs=1e-9), (name, idx)


def test_closed_form_leaves_gradient_at_the_virtual_point():
    """The model's .grad after a closed-form step is ∇L(θ') (reused by the first-order trajectory)."""
    model, scorer, engine, bank = _setup()
    loss_fn = _loss_fn(scorer)
    hist = StepHistory(len(engine.params))
    step = closed_form(engine, bank, hist, loss_fn, 7, 1e-3, 0.5)
    got = [p.grad.clone() for p in engine.params]
    ref = copy.deepcopy(model)
    ref_engine = ZOEngine(ref, noise="table")
    ref_engine.update_(Direction(7, step.sigma.double()), -0.5 * step.g)
    ref.zero_grad()
    loss_fn(ref).backward()
    for g, p in zip(got, ref_engine.params):
        torch.testing.assert_close(g, p.grad, rtol=1e-9, atol=1e-12)
    assert hist.losses == (step.loss_plus, step.loss_minus)


def test_unrolled_two_steps_differs_from_one_and_reaches_the_bank():
    model, scorer, engine, bank = _setup(dtype=torch.float32)
    loss_fn = _loss_fn(scorer)
    before = engine.forwards
    bank.zero_grad()
    unrolled(engine, bank, StepHistory(len(engine.params)), loss_fn, [1, 2], 1e-3, 0.5)
    assert engine.forwards - before == 2 + 2 + 1
    g2 = bank.b2.grad.clone()
    bank.zero_grad()
    unrolled(engine, bank, StepHistory(len(engine.params)), loss_fn, [1], 1e-3, 0.5)
    assert torch.isfinite(g2).all() and g2.abs().max() > 0
    assert not torch.allclose(g2, bank.b2.grad)


# ----------------------------------------------------------------------------------------- the loop

import json  # noqa: E402

import cli  # noqa: E402
from checkpoints import Tuner  # noqa: E402
from meta.train import MetaConfig, MetaTrainer, snapshot_path, log_path, meta_train  # noqa: E402


def _cfg(tasks, **kw):
    base = dict(model="tiny-llama", tasks=tasks, steps=6, batch_size=4, restart_every=4, virtual_lr=1e-2,
                meta_lr=1e-2, fo_lr=1e-2, hidden=8, max_length=32)
    base.update(kw)
    return MetaConfig(**base)


def _same_tuner(a: Tuner, b: Tuner) -> None:
    for k in ("W1", "b1", "W2", "b2"):
        assert torch.equal(getattr(a.bank, k), getattr(b.bank, k)), k
        if a.policy is not None or b.policy is not None:
            assert torch.equal(getattr(a.policy, k), getattr(b.policy, k)), k
    pa, pb = dict(a.provenance), dict(b.provenance)
    pa.pop("date"), pb.pop("date")
    assert pa == pb


@pytest.mark.parametrize("policy", [False, True])
def test_meta_training_learns_and_resume_reaches_the_same_artifact(tmp_path, tasks, monkeypatch, policy):
    """Also with a direction policy: its online means are part of the snapshot, so the resumed run ends
    with the same bank and the same policy."""
    kw = dict(direction_policy=True, policy_hidden=4) if policy else {}
    full = meta_train(_cfg(tasks, **kw), tmp_path / "full.safetensors", progress=False)
    assert full.provenance["steps"] == 6 and full.provenance["meta_tasks"] == tasks
    assert float(full.bank.W2.detach().abs().max()) > 0  # the bank moved away from its MeZO init
    log = json.loads(log_path(tmp_path / "full.safetensors").read_text())
    assert [r["step"] for r in log] == list(range(1, 7))

    out = tmp_path / "killed.safetensors"
    advance = kill_meta_at(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        meta_train(_cfg(tasks, **kw), out, snapshot_every=2, progress=False)
    assert snapshot_path(out).exists() and not out.exists()
    monkeypatch.setattr(MetaTrainer, "advance", advance)
    with pytest.raises(Exception, match="add --resume"):
        meta_train(_cfg(tasks, **kw), out, snapshot_every=2, progress=False)
    with pytest.raises(Exception, match="cannot resume: the interrupted run used seed=0"):
        meta_train(_cfg(tasks, seed=1, **kw), out, resume=True, snapshot_every=2, progress=False)
    resumed = meta_train(_cfg(tasks, **kw), out, resume=True, snapshot_every=2, progress=False)
    assert not snapshot_path(out).exists()
    _same_tuner(full, resumed)
    _same_tuner(full, Tuner.from_pretrained(out))


def test_restarts_reset_the_base_model_to_its_pretrained_weights(tasks):
    trainer = MetaTrainer(_cfg(tasks, restart_every=3))
    start = [p.detach().clone() for p in trainer.engine.params]
    for _ in range(3):
        trainer.advance()
    assert not all(torch.equal(a, p) for a, p in zip(start, trainer.engine.params))
    trainer._restart_if_due(4)
    assert all(torch.equal(a, p) for a, p in zip(start, trainer.engine.params))


def test_unroll_two_runs_through_the_loop(tmp_path, tasks):
    tuner = meta_train(_cfg(tasks, unroll=2, steps=2), tmp_path / "k2.safetensors", progress=False)
    assert tuner.provenance["config"]["unroll"] == 2


def test_cli_meta_train_then_finetune_and_inspect(tmp_path, tasks, capsys):
    out = tmp_path / "tuner.safetensors"
    assert cli.main(["meta-train", "--model", "tiny-llama", "--tasks", ",".join(tasks), "--steps", "3",
                     "--batch-size", "4", "--hidden", "8", "--out", str(out)]) == 0
    assert out.exists()
    # the artifact's base model is the default; a derivative is given with --model
    run = tmp_path / "ft"
    assert cli.main(["finetune", "--tuner", str(out), "--task", tasks[0], "--steps", "3", "--batch-size", "4",
                     "--lr", "1e-3", "--n-test", "8", "--no-save-model", "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "tuner" and metrics["model"] == "tiny-llama" and metrics["forwards"] == 6
    assert metrics["config"]["lr"] == 1e-3
    run2 = tmp_path / "ft-default-lr"  # without --lr: the lr the tuner was meta-trained for (--virtual-lr)
    assert cli.main(["finetune", "--tuner", str(out), "--task", tasks[0], "--steps", "1", "--n-test", "4",
                     "--no-save-model", "--out", str(run2)]) == 0
    assert json.loads((run2 / "metrics.json").read_text())["config"]["lr"] == MetaConfig().virtual_lr
    assert cli.main(["finetune", "--tuner", str(out), "--model", "tiny-qwen2", "--task", tasks[0], "--steps", "1",
                     "--n-test", "4", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "does not fit this model" in err and err.count("\n") == 1 and not (tmp_path / "bad").exists()
    assert cli.main(["tuners", "inspect", str(out)]) == 0
    assert "base model tiny-llama" in capsys.readouterr().out
    assert cli.main(["meta-train", "--model", "tiny-llama", "--tasks", tasks[0], "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["meta-train", "--model", "tiny-llama", "--tasks", "nope:task", "--out",
                     str(tmp_path / "x.safetensors")]) == 2
    assert "unknown task" in capsys.readouterr().err
