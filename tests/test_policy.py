"""The direction policy: gates at zero are the PertNN-only tuner exactly, a gated step against an explicit
reference, its meta-gradient against finite differences, the artifact slot, and meta-training it."""
import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import cli
from checkpoints import Tuner
from finetune.common.errors import ZotuneError
from finetune.data.models import load_model
from finetune.zo.online import OnlineMean
from finetune.zo.optim import TunedZO
from finetune.data.scoring import TaskScorer
from finetune.data.tasks import Example
from finetune.zo.engine import ZOEngine
from meta.metagrad import closed_form
from meta.train import MetaConfig, meta_train
from pertnn import PertNNConfig, StepHistory
from pertnn.policy import DirectionPolicy, PolicyConfig, policy_features
from reference import Reference, assert_resumes_identically, central_difference, ids, seed_stream

BATCHES = [[Example(prompt=f"item {i + 4 * k} is", options=(" odd", " even"), label=(i + k) % 2) for i in range(4)]
           for k in range(4)]


def _tuner(model, name, seed=3, gate="random", policy_cfg=None) -> Tuner:
    """A tuner with a heterogeneous bank and a direction policy: fresh (``gate=None``: every gate 0), random
    (``"random"``: gates differ across blocks and depend on the features) or constant (a float)."""
    tuner = Tuner.for_model(model, name, PertNNConfig(hidden=8), seed=seed,
                            policy_config=policy_cfg or PolicyConfig(hidden=4, decay=0.7))
    gen = torch.Generator().manual_seed(seed)
    tuner.bank.randomize_output_(gen)
    if gate == "random":
        with torch.no_grad():
            tuner.policy.W2.uniform_(-1.5, 1.5, generator=gen)
            tuner.policy.b2.uniform_(-1.0, 1.0, generator=gen)
    elif gate is not None:
        tuner.policy.set_constant_(gate)
    tuner.provenance = {"meta_tasks": ["x.jsonl"], "steps": 3, "seed": seed}
    return tuner


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama")


# --- gates at zero ------------------------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("gate", [None, 0.0])
def test_gates_at_zero_fine_tune_exactly_like_the_pertnn_only_tuner(llama, gate, momentum):
    """A fresh policy (zero last layer) or one set to the constant gate 0 gives the PertNN-only tuner's
    steps bit for bit over several steps, while its online mean is being updated (and is non-zero)."""
    model, tok = llama
    scorer = TaskScorer(tok, max_length=32)
    tuner = _tuner(model, "tiny-llama", gate=gate)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    plain = TunedZO(a, tuner.without_policy(), lr=1e-2, eps=1e-3, seed=5, momentum=momentum)
    gated = TunedZO(b, tuner, lr=1e-2, eps=1e-3, seed=5, momentum=momentum)
    assert plain.policy is None and gated.policy is not None
    for batch in BATCHES:
        la = plain.step(lambda: scorer.loss(a, batch))
        lb = gated.step(lambda: scorer.loss(b, batch))
        assert la == lb
        assert torch.equal(gated.last["gates"], torch.zeros_like(gated.last["gates"]))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert gated.engine.forwards == plain.engine.forwards == 2 * len(BATCHES)
    assert all(float(m.abs().max()) > 0 for m in gated.online.means)


def test_a_nonzero_gate_changes_the_step(llama):
    model, tok = llama
    scorer = TaskScorer(tok, max_length=32)
    tuner = _tuner(model, "tiny-llama", gate=0.5)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    plain = TunedZO(a, tuner.without_policy(), lr=1e-2, eps=1e-3, seed=5)
    gated = TunedZO(b, tuner, lr=1e-2, eps=1e-3, seed=5)
    for batch in BATCHES[:2]:  # the first step has no mean yet: identical; the second differs
        plain.step(lambda: scorer.loss(a, batch))
        gated.step(lambda: scorer.loss(b, batch))
    assert torch.allclose(gated.last["gates"], torch.full_like(gated.last["gates"], 0.5))
    assert not all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))


# --- a gated step against an explicit reference -------------------------------------------------------


@pytest.mark.parametrize("noise", ["table", "gaussian"])
def test_gated_steps_match_explicit_reference(noise):
    """Three steps on tiny-gpt2 (float64, tied embeddings) against materialised noise and functional_call:
    z_b = σ_b (√(1 − w_b²) ξ_b + w_b m_b / RMS(m_b)), losses at θ ± ε z, θ ← θ − lr g z, and the online mean
    m_b ← β m_b + (1 − β) (g / RMS_running(g)) ξ_b with ξ regenerated from the step's own seed."""
    model, _ = load_model("tiny-gpt2")
    model = model.double()
    tuner = _tuner(model, "tiny-gpt2")
    lr, eps, beta = 1e-3, 1e-3, tuner.policy.cfg.decay
    opt = TunedZO(model, tuner, lr=lr, eps=eps, seed=4, noise=noise)
    ref = Reference(model, opt.engine, ids(5))
    names = ref.names
    stream = seed_stream(4)
    theta = ref.theta()
    m = {n: torch.zeros_like(t) for n, t in theta.items()}
    numel = torch.tensor([theta[n].numel() for n in names], dtype=torch.float64)
    hist = StepHistory(len(names), tuner.feature_config)
    c_rms, c_sq, prev_gate = None, 0.0, torch.zeros(len(names), dtype=torch.float64)
    for step in range(3):
        feats = hist.features([theta[n] for n in names])
        sigma = tuner.bank.scales(feats)
        sq = torch.stack([(m[n] * m[n]).sum() for n in names])
        kappa = sq / (numel * c_sq * (1 - beta) / (1 + beta)) if c_sq > 0 else torch.zeros(len(names), dtype=torch.float64)
        with torch.no_grad():
            w = tuner.policy(policy_features(kappa, sigma, feats, prev_gate)).double()
        rms = torch.sqrt(sq / numel)
        seed = next(stream)
        xi = ref.z(seed)
        z = {n: sigma[i] * (torch.sqrt(1 - w[i] ** 2) * xi[n] + (w[i] * m[n] / rms[i] if rms[i] > 0 else 0.0))
             for i, n in enumerate(names)}
        lp = ref.loss({n: theta[n] + eps * z[n] for n in names})
        lm = ref.loss({n: theta[n] - eps * z[n] for n in names})
        g = (lp - lm) / (2 * eps)

        opt.step(ref.closure())
        assert opt.last["loss_plus"] == pytest.approx(lp, rel=1e-11)
        assert opt.last["loss_minus"] == pytest.approx(lm, rel=1e-11)
        torch.testing.assert_close(opt.last["gates"], w, rtol=1e-6, atol=1e-9)
        theta = {n: theta[n] - lr * g * z[n] for n in names}
        for n, p in opt.engine.blocks:
            torch.testing.assert_close(p.detach(), theta[n], rtol=1e-10, atol=1e-12)
        c_rms = abs(g) if c_rms is None else math.sqrt(0.9 * c_rms**2 + 0.1 * g * g)
        c = g / c_rms
        m = {n: beta * m[n] + (1 - beta) * c * xi[n] for n in names}
        c_sq = beta * c_sq + (1 - beta) * c * c
        prev_gate = w
        for i, n in enumerate(names):
            torch.testing.assert_close(opt.online.means[i], m[n], rtol=1e-9, atol=1e-12)
        hist.update(lp, lm, sigma)
    assert float(w.abs().median()) > 0.2 and float(w.abs().std()) > 0.05  # the gates really were on, and differed


def test_gated_optimizer_state_round_trip_continues_identically(llama):
    """Two steps first, so the saved online mean is non-zero."""
    model, tok = llama
    assert_resumes_identically(model, _tuner(model, "tiny-llama"), TaskScorer(tok, max_length=32), BATCHES[:3])


# --- the meta-gradient ----------------------------------------------------------------------------------


def test_closed_form_policy_gradient_matches_finite_differences():
    """With g held fixed, ∂L(θ − η g σ(√(1 − w²) ξ + w m̂))/∂(policy, bank parameters) from the closed form
    matches central finite differences (tiny-gpt2 in float64, after one step has made the mean non-zero)."""
    model, tok = load_model("tiny-gpt2")
    model = model.double()
    scorer = TaskScorer(tok, max_length=32)
    loss_fn = lambda m: scorer.loss(m, BATCHES[0])  # noqa: E731
    tuner = _tuner(model, "tiny-gpt2", seed=5)
    bank, policy = tuner.bank.double(), tuner.policy.double()
    engine = ZOEngine(model, noise="table")
    hist = StepHistory(len(engine.params))
    online = OnlineMean(engine, policy.cfg)
    closed_form(engine, bank, hist, loss_fn, 11, 1e-3, 0.5, policy, online)  # makes the mean non-zero
    theta0 = [p.detach().clone() for p in engine.params]
    feats = copy.deepcopy(hist).features(engine.params)
    kappa, prev, rms = online.kappa(), online.prev_gate.clone(), online.rms()
    means = [m.clone() for m in online.means]
    seed, lr = 77, 0.5
    sigma0 = bank(feats).detach()  # the policy's log-σ feature is an input, not a path for gradients

    bank.zero_grad(), policy.zero_grad()
    step = closed_form(engine, bank, hist, loss_fn, seed, 1e-3, lr, policy, online)
    got = {("policy", k): v.grad.clone() for k, v in policy.named_parameters()}
    got |= {("bank", k): v.grad.clone() for k, v in bank.named_parameters()}

    def meta_loss() -> float:
        with torch.no_grad():
            sigma = bank(feats)
            w = policy(policy_features(kappa, sigma0, feats, prev))
            for i, (p, t) in enumerate(zip(engine.params, theta0)):
                z = sigma[i] * (torch.sqrt(1 - w[i] ** 2) * engine.unit_noise(seed, i) + w[i] * means[i] / rms[i])
                p.copy_(t - lr * step.g * z)
            value = float(loss_fn(model))
            for p, t in zip(engine.params, theta0):
                p.copy_(t)
        return value

    last = len(engine.params) - 1
    for owner, name, idx in [("policy", "b2", (0, 0)), ("policy", "b2", (last, 0)), ("policy", "W2", (2, 0, 1)),
                             ("policy", "W1", (1, 1, 0)), ("bank", "b2", (3, 0)), ("bank", "W2", (last, 0, 2))]:
        want = central_difference(meta_loss, getattr(policy if owner == "policy" else bank, name), idx)
        assert abs(want) > 1e-9, (owner, name, idx)
        assert want == pytest.approx(float(got[(owner, name)][idx]), rel=1e-4, abs=1e-10), (owner, name, idx)


# --- the artifact -----------------------------------------------------------------------------------------


def test_artifact_round_trip_with_policy_and_no_online_state(tmp_path, llama):
    model, _ = llama
    tuner = _tuner(model, "tiny-llama")
    path = tuner.save_pretrained(tmp_path / "t.safetensors")
    back = Tuner.from_pretrained(path)
    for k in ("W1", "b1", "W2", "b2"):
        assert torch.equal(getattr(back.policy, k), getattr(tuner.policy, k)), k
    assert back.policy.cfg == tuner.policy.cfg
    assert set(load_file(str(path))) == {f"{p}.{k}" for p in ("pertnn", "policy") for k in ("W1", "b1", "W2", "b2")} | {
        "base.block_stats"}  # nothing task-specific: no mean directions, no history
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    assert header["format_version"] == "2"
    doc = json.loads(header["zotune"])["direction_policy"]
    assert doc["config"] == {"hidden": 4, "max_gate": 0.8, "decay": 0.7} and doc["features"][0] == "log_coherence"
    plain = tuner.without_policy().save_pretrained(tmp_path / "plain.safetensors")
    with safe_open(str(plain), framework="pt") as f:
        assert f.metadata()["format_version"] == "1"
    assert Tuner.from_pretrained(plain).policy is None


def test_bad_policy_parts_give_one_line_errors(tmp_path, llama):
    model, _ = llama
    path = _tuner(model, "tiny-llama").save_pretrained(tmp_path / "t.safetensors")
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = dict(f.metadata())

    def write(tensors, header, name):
        out = tmp_path / name
        save_file(tensors, str(out), metadata=header)
        return out

    cases = []
    cases.append((write({k: v for k, v in tensors.items() if k != "policy.W2"}, header, "a.safetensors"),
                  "tensor 'policy.W2' is missing"))
    cases.append((write(tensors | {"policy.b1": torch.zeros(3, 3)}, header, "b.safetensors"), "'policy.b1' has shape"))
    nan = tensors["policy.W1"].clone()
    nan[0, 0, 0] = float("nan")
    cases.append((write(tensors | {"policy.W1": nan}, header, "c.safetensors"), "'policy.W1' holds non-finite"))
    doc = json.loads(header["zotune"])
    doc["direction_policy"]["config"]["max_gate"] = 1.5
    cases.append((write(tensors, header | {"zotune": json.dumps(doc)}, "d.safetensors"), "malformed direction_policy"))
    doc = json.loads(header["zotune"])
    doc["direction_policy"]["features"] = ["something_else"]
    cases.append((write(tensors, header | {"zotune": json.dumps(doc)}, "e.safetensors"), "upgrade zotune"))
    for bad, message in cases:
        with pytest.raises(ZotuneError, match=message) as e:
            Tuner.from_pretrained(bad)
        assert "\n" not in str(e.value)


def test_policy_of_another_architecture_is_refused(llama):
    model, _ = llama
    tuner = _tuner(model, "tiny-llama")
    other, _ = load_model("tiny-qwen2")
    with pytest.raises(ZotuneError, match="does not fit this model"):
        TunedZO(other, tuner, lr=1e-3)


def test_policy_config_and_constant_gate_checks():
    with pytest.raises(ValueError):
        PolicyConfig(max_gate=1.0)
    with pytest.raises(ValueError):
        PolicyConfig(decay=1.0)
    policy = DirectionPolicy(3, PolicyConfig(max_gate=0.5))
    with pytest.raises(ValueError):
        policy.set_constant_(0.6)
    gates = policy.set_constant_(0.3)(torch.randn(3, 5))
    torch.testing.assert_close(gates, torch.full((3,), 0.3, dtype=torch.float64))


# --- meta-training ---------------------------------------------------------------------------------------


def _cfg(tasks, **kw):
    base = dict(model="tiny-llama", tasks=tasks, steps=6, batch_size=4, restart_every=4, virtual_lr=1e-2,
                meta_lr=1e-2, fo_lr=1e-2, hidden=8, max_length=32, direction_policy=True, policy_hidden=4)
    base.update(kw)
    return MetaConfig(**base)


def test_meta_training_trains_the_policy_jointly(tmp_path, tasks):
    """(Resuming a run with a policy is tested with the plain one in test_meta.py.)"""
    full = meta_train(_cfg(tasks), tmp_path / "full.safetensors", progress=False)
    assert full.policy is not None and float(full.policy.W2.detach().abs().max()) > 0  # the gates moved
    assert float(full.bank.W2.detach().abs().max()) > 0
    loaded = Tuner.from_pretrained(tmp_path / "full.safetensors")
    assert loaded.policy.cfg == PolicyConfig(hidden=4)
    log = json.loads((tmp_path / "full.metalog.json").read_text())
    assert all("gate_mean" in row for row in log)


def test_cli_meta_train_with_policy_then_finetune_and_inspect(tmp_path, tasks, capsys):
    out = tmp_path / "tuner.safetensors"
    assert cli.main(["meta-train", "--model", "tiny-llama", "--tasks", ",".join(tasks), "--steps", "3",
                     "--batch-size", "4", "--hidden", "8", "--direction-policy", "--out", str(out)]) == 0
    run = tmp_path / "ft"
    assert cli.main(["finetune", "--tuner", str(out), "--task", tasks[0], "--steps", "3", "--batch-size", "4",
                     "--lr", "1e-3", "--n-test", "8", "--no-save-model", "--out", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text())["forwards"] == 6  # still two passes per step
    capsys.readouterr()
    assert cli.main(["tuners", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "direction  policy" in text and "gate" in text
    assert cli.main(["meta-train", "--model", "tiny-llama", "--tasks", tasks[0], "--direction-policy", "--unroll", "2",
                     "--out", str(tmp_path / "k2.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "--unroll 1" in err and err.count("\n") == 1


def test_direction_ablation_benchmark_gives_every_arm_the_same_forward_budget(tmp_path, tasks, llama):
    """benchmarks/direction_eval.py on a tiny model: every arm runs, on exactly the same number of forward
    passes, and a rerun skips the runs already recorded."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import direction_eval

    model, _ = llama
    tuner = _tuner(model, "tiny-llama").save_pretrained(tmp_path / "t.safetensors")
    args = ["--tuner", str(tuner), "--task", tasks[0], "--out", str(tmp_path / "out"), "--forwards", "20",
            "--seeds", "0", "--n-test", "4", "--batch-size", "4", "--lr", "1e-3"]
    direction_eval.main(args)
    runs = json.loads((tmp_path / "out" / "runs.json").read_text())
    assert sorted(r["arm"] for r in runs) == sorted(direction_eval.ARMS)
    assert {r["forwards"] for r in runs} == {20}
    by_arm = {r["arm"]: r for r in runs}
    assert by_arm["greedy"]["steps"] == 4 and by_arm["gv2"]["steps"] == 5 and by_arm["mezo"]["steps"] == 10
    assert by_arm["mezo-2x"]["lr"] == 2e-3 and by_arm["mezo-2x"]["eps"] == pytest.approx(math.sqrt(2) * 1e-3)
    direction_eval.main(args)  # nothing left to run
    assert len(json.loads((tmp_path / "out" / "runs.json").read_text())) == len(runs)
    assert "| pertnn+policy |" in (tmp_path / "out" / "summary.md").read_text()
