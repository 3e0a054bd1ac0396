"""Direction-choosing ZO methods (MeZO-GV, MeZO-Greedy, LDSD) against independent references: explicit
steps with materialised noise through ``torch.func.functional_call``, exact quadratics fed to torch's own
SGD/Adam, and LDSD's policy-mean update with the right and with wrong noise/loss pairings."""
import copy
import json
import math
import random

import pytest
import torch
from torch import nn
from torch.func import functional_call

import cli
from finetune.zo.directions import LDSD, ZOGV, ZOGreedy, make_direction_optimizer
from finetune.data.models import TINY, load_model
from finetune.data.scoring import TaskScorer
from finetune.data.tasks import Task
from finetune.trainer import BASELINE_METHODS, FinetuneConfig, train
from finetune.zo.engine import Direction, ZOEngine
from reference import Quadratic, Reference, axpy, combine, ids, seed_stream, synthetic_examples

METHODS = ("gv", "greedy", "ldsd")


# --- the engine: perturbing and updating along combinations -------------------------------------------


@pytest.mark.parametrize("noise", ["table", "gaussian"])
@pytest.mark.parametrize("name", TINY)
def test_perturbing_along_a_combination_equals_the_explicit_model(noise, name):
    """theta + alpha * s_b * (0.7 z(s1) - 1.3 z(s2) + mean_b) through the hooks (embedding lookups, tied
    weights, large heads from the table) equals functional_call at those parameters; parameters come
    back bit for bit."""
    model, _ = load_model(name)
    engine = ZOEngine(model, noise=noise)
    scales = torch.linspace(0.5, 1.5, len(engine.blocks), dtype=torch.float64)
    x = ids()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(3)
    mean = [torch.randn(p.shape, generator=gen) for _, p in engine.blocks]
    alpha = 1e-2
    with torch.inference_mode(), engine.perturbed(Direction([(11, 0.7), (12, -1.3)], scales, mean, scales), alpha):
        got = model(input_ids=x).logits
    params = {}
    for i, (n, p) in enumerate(engine.blocks):
        direction = 0.7 * engine.unit_noise(11, i) - 1.3 * engine.unit_noise(12, i) + mean[i]
        params[n] = p.detach() + alpha * float(scales[i]) * direction
    with torch.no_grad():
        want = functional_call(model, params, (), {"input_ids": x}).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("noise", ["table", "gaussian"])
def test_a_single_seed_is_the_combination_of_one_and_updates_combine(noise):
    model, _ = load_model("tiny-llama")
    engine = ZOEngine(model, noise=noise)
    x = ids()
    with torch.inference_mode():
        with engine.perturbed(5, 1e-2):
            a = model(input_ids=x).logits
        with engine.perturbed([(5, 1.0)], 1e-2):
            b = model(input_ids=x).logits
    assert torch.equal(a, b)
    theta = {n: p.detach().clone() for n, p in engine.blocks}
    mean = [torch.full_like(p, 0.25) for _, p in engine.blocks]
    engine.update_(Direction([(5, 2.0), (6, -0.5)], offset=mean), -1e-3)
    for i, (n, p) in enumerate(engine.blocks):
        want = theta[n] - 1e-3 * (2.0 * engine.unit_noise(5, i) - 0.5 * engine.unit_noise(6, i) + 0.25)
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-6)


# --- MeZO-GV and MeZO-Greedy against explicit steps ----------------------------------------------------


@pytest.mark.parametrize("noise", ["table", "gaussian"])
@pytest.mark.parametrize("name,m", [("tiny-llama", 4), ("tiny-gpt2", 5), ("tiny-opt", 2)])
def test_gv_step_matches_explicit_reference(noise, name, m):
    """Rank M one-sided candidate losses, v = mean(best floor(M/2)) - mean(rest), two-point SPSA along v,
    theta -= lr g v: all with materialised noise; M + 2 forward passes."""
    model, _ = load_model(name)
    opt = ZOGV(model, lr=1e-3, eps=1e-2, candidates=m, noise=noise, seed=7)
    ref = Reference(model, opt.engine, ids())
    stream = seed_stream(7)
    seeds = [next(stream) for _ in range(m)]
    theta, zs = ref.theta(), [ref.z(s) for s in seeds]
    cand = [ref.loss(axpy(1e-2, z, theta)) for z in zs]
    order = sorted(range(m), key=lambda i: cand[i])
    top = m // 2
    v = combine([(1 / top if r < top else -1 / (m - top), zs[i]) for r, i in enumerate(order)])
    g = (ref.loss(axpy(1e-2, v, theta)) - ref.loss(axpy(-1e-2, v, theta))) / 2e-2

    opt.step(ref.closure())
    assert opt.engine.forwards == m + 2
    for got, want in zip(opt.last["candidate_losses"], cand):
        assert math.isclose(got, want, rel_tol=1e-5)
    assert math.isclose(opt.last["projected_grad"], g, rel_tol=1e-3, abs_tol=1e-4)
    g_used = opt.last["projected_grad"]
    for n, p in opt.engine.blocks:
        torch.testing.assert_close(p.detach(), theta[n] - 1e-3 * g_used * v[n], rtol=0, atol=1e-6)


@pytest.mark.parametrize("noise", ["table", "gaussian"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_greedy_step_matches_explicit_reference(noise, name):
    """z* = argmin of M one-sided losses; g = (L(theta + eps z*) - L(theta - eps z*)) / (2 eps), with the
    plus side the candidate's own loss; theta -= lr g z*; M + 1 forward passes."""
    m = 4
    model, _ = load_model(name)
    opt = ZOGreedy(model, lr=1e-3, eps=1e-2, candidates=m, noise=noise, seed=3)
    ref = Reference(model, opt.engine, ids(2))
    stream = seed_stream(3)
    seeds = [next(stream) for _ in range(m)]
    theta, zs = ref.theta(), [ref.z(s) for s in seeds]
    cand = [ref.loss(axpy(1e-2, z, theta)) for z in zs]
    best = min(range(m), key=lambda i: cand[i])
    g = (cand[best] - ref.loss(axpy(-1e-2, zs[best], theta))) / 2e-2

    opt.step(ref.closure())
    assert opt.engine.forwards == m + 1
    assert opt.last["best"] == best
    assert opt.last["loss_plus"] == opt.last["candidate_losses"][best]
    assert math.isclose(opt.last["projected_grad"], g, rel_tol=1e-3, abs_tol=1e-4)
    g_used = opt.last["projected_grad"]
    for n, p in opt.engine.blocks:
        torch.testing.assert_close(p.detach(), theta[n] - 1e-3 * g_used * zs[best][n], rtol=0, atol=1e-6)


# --- every method with momentum and Adam, on an exact quadratic --------------------------------------


def flat_noise(engine, seed):
    return torch.cat([engine.unit_noise(seed, i).flatten() for i in range(len(engine.blocks))])


def expected_estimate(method, opt, model, seeds, eps, mu=None, sigma=1.0):
    """The method's gradient estimate, from the quadratic's exact losses at materialised points."""
    w, zs = model.flat(), [flat_noise(opt.engine, s) for s in seeds]
    if method == "ldsd":
        zs = [mu + sigma * z for z in zs]
    cand = [model.value(w + eps * z) for z in zs]
    order = sorted(range(len(zs)), key=lambda i: cand[i])
    if method == "gv":
        top = len(zs) // 2
        v = sum((1 / top if r < top else -1 / (len(zs) - top)) * zs[i] for r, i in enumerate(order))
    else:
        v = zs[order[0]]
    return torch.dot(model.grad(), v) * v  # central differences are exact on a quadratic


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rule", ["momentum", "adam"])
def test_update_rules_match_torch_fed_the_same_estimate(method, rule):
    model, ref = Quadratic(), Quadratic()
    opt = make_direction_optimizer(method, rule, model, lr=0.05, eps=1e-3, seed=5, momentum=0.9, candidates=4,
                                   ldsd_k=3, ldsd_lr=0.5, ldsd_decay=0.8)
    torch_opt = (torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9) if rule == "momentum"
                 else torch.optim.Adam(ref.parameters(), lr=0.05))
    stream = seed_stream(5)
    for step in range(3):
        k = 3 if method == "ldsd" else 4
        seeds = [next(stream) for _ in range(k)]
        mu = torch.cat([m.flatten() for m in opt.means()]).clone() if method == "ldsd" else None
        if method == "ldsd" and step > 0:
            assert mu.abs().max() > 0  # the later steps do sample around a non-zero mean
        est = expected_estimate(method, opt, model, seeds, 1e-3, mu)
        ref.w.grad, ref.b.grad = est[:30].view(6, 5).clone(), est[30:].clone()
        opt.step(model)
        torch_opt.step()
        for p, rp in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p.detach(), rp.detach(), rtol=1e-6, atol=1e-9)


# --- LDSD: the policy mean --------------------------------------------------------------------------


def rloo(losses):
    k, total = len(losses), sum(losses)
    return [(k * f - total) / (k - 1) for f in losses]


def test_ldsd_mean_follows_the_paper_rule_with_the_right_pairing():
    """With normalise off, no decay and no cap, mu <- mu - (eta/(k sigma^2)) sum_i A_i (u_i - mu), each
    advantage A_i with the direction u_i = mu + sigma z(seed_i) that produced f_i = L(theta + eps u_i).
    Checked over three steps on a quadratic (so mu != 0 when candidates are drawn), with every u_i
    materialised. Pairing an advantage with another candidate's noise (what regenerating from the
    wrong stream does, as the released code does) or regenerating every score from the best seed
    gives a different mu: the check has the power to catch that bug."""
    model = Quadratic()
    eta, sigma, eps, k = 0.3, 0.7, 1e-2, 4
    opt = LDSD(model, lr=0.02, eps=eps, k=k, mean_lr=eta, sigma=sigma, normalise=False, decay=1.0, cap=math.inf,
               seed=9, noise="gaussian")
    stream = seed_stream(9)
    mu = torch.zeros(37, dtype=torch.float64)
    for _ in range(3):
        seeds = [next(stream) for _ in range(k)]
        w = model.flat()
        xi = [flat_noise(opt.engine, s) for s in seeds]
        u = [mu + sigma * x for x in xi]
        f = [model.value(w + eps * ui) for ui in u]
        a = rloo(f)
        best = min(range(k), key=lambda i: f[i])
        g = (f[best] - model.value(w - eps * u[best])) / (2 * eps)
        w_next = w - 0.02 * g * u[best]
        right = mu - eta / (k * sigma**2) * sum(a[i] * (u[i] - mu) for i in range(k))
        rolled = mu - eta / (k * sigma**2) * sum(a[i] * (u[(i + 1) % k] - mu) for i in range(k))
        from_best = mu - eta / (k * sigma**2) * sum(a[i] * (u[best] - mu) for i in range(k))

        opt.step(model)
        got = torch.cat([m.flatten() for m in opt.means()])
        assert opt.last["candidate_losses"] == pytest.approx(f, rel=1e-12)
        torch.testing.assert_close(model.flat(), w_next, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(got, right, rtol=1e-9, atol=1e-12)
        for wrong in (rolled, from_best):
            assert (got - wrong).norm() > 1e3 * (got - right).norm() + 1e-6 * right.norm()
        mu = right


def test_ldsd_released_rule_reproduces_the_mis_pairing_for_ablations():
    """rule="released" (an ablation, never the default) pairs advantage A_0 with the best candidate's noise
    and the others with noise that produced no loss; the model step is the corrected rule's."""
    from finetune.zo.directions import released_score_seed

    eta, sigma, eps, k = 0.3, 0.7, 1e-2, 4
    models = {rule: Quadratic() for rule in ("corrected", "released")}
    opts = {rule: LDSD(m, lr=0.02, eps=eps, k=k, mean_lr=eta, sigma=sigma, normalise=False, decay=1.0, cap=math.inf,
                       seed=9, noise="gaussian", rule=rule) for rule, m in models.items()}
    stream = seed_stream(9)
    seeds = [next(stream) for _ in range(k)]
    model = models["released"]
    xi = [flat_noise(opts["released"].engine, s) for s in seeds]
    f = [model.value(model.flat() + eps * sigma * x) for x in xi]
    best = min(range(k), key=lambda i: f[i])
    a = rloo(f)
    scores = [flat_noise(opts["released"].engine, released_score_seed(seeds[best], i)) for i in range(k)]
    want = -eta / (k * sigma) * sum(a[i] * scores[i] for i in range(k))
    for rule, opt in opts.items():
        opt.step(models[rule])
    got = torch.cat([m.flatten() for m in opts["released"].means()])
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert torch.equal(models["released"].flat(), models["corrected"].flat())
    right = torch.cat([m.flatten() for m in opts["corrected"].means()])
    assert (got - right).norm() > 0.1 * right.norm()
    with pytest.raises(ValueError, match="unknown LDSD rule"):
        LDSD(Quadratic(), lr=0.1, rule="other")


@pytest.mark.parametrize("noise", ["table", "gaussian"])
@pytest.mark.parametrize("cap", [math.inf, 0.43])
def test_ldsd_step_with_decay_normalisation_and_cap_matches_explicit_reference(noise, cap):
    """Two LDSD steps on tiny-llama against materialised noise and functional_call: candidates at
    theta + eps (mu + z_i) (mu != 0 in the second step), the update along u* (mu included), and
    mu <- clip(decay mu - eta/k sum_i (A_i / s) z_i), s the running std of the candidate losses."""
    model, _ = load_model("tiny-llama")
    eta, decay, eps, k, lr = 0.5, 0.5, 1e-2, 3, 1e-3
    opt = LDSD(model, lr=lr, eps=eps, k=k, mean_lr=eta, decay=decay, cap=cap, noise=noise, seed=4)
    ref = Reference(model, opt.engine, ids(5))
    stream = seed_stream(4)
    mu = {n: torch.zeros_like(p) for n, p in opt.engine.blocks}
    scale, capped = None, []
    for _ in range(2):
        seeds = [next(stream) for _ in range(k)]
        theta, xi = ref.theta(), [ref.z(s) for s in seeds]
        u = [axpy(1.0, mu, x) for x in xi]
        cand = [ref.loss(axpy(eps, ui, theta)) for ui in u]
        best = min(range(k), key=lambda i: cand[i])
        g = (cand[best] - ref.loss(axpy(-eps, u[best], theta))) / (2 * eps)

        opt.step(ref.closure())
        f = opt.last["candidate_losses"]
        assert f == pytest.approx(cand, rel=1e-5) and opt.last["best"] == best
        assert math.isclose(opt.last["projected_grad"], g, rel_tol=1e-3, abs_tol=1e-4)
        g_used = opt.last["projected_grad"]
        for n, p in opt.engine.blocks:
            torch.testing.assert_close(p.detach(), theta[n] - lr * g_used * u[best][n], rtol=0, atol=1e-6)
        spread = torch.tensor(f, dtype=torch.float64).std(unbiased=False).item()
        scale = spread if scale is None else 0.9 * scale + 0.1 * spread
        adv = [a / scale for a in rloo(f)]
        for (n, _), got in zip(opt.engine.blocks, opt.means()):
            m = decay * mu[n] - eta / k * sum(adv[i] * xi[i][n] for i in range(k))
            rms = m.double().norm().item() / math.sqrt(m.numel())
            capped.append(rms > cap)
            if rms > cap:
                m = m * (cap / rms)
            torch.testing.assert_close(got, m, rtol=1e-5, atol=1e-6)
            mu[n] = got.clone()
    if math.isfinite(cap):
        assert any(capped) and not all(capped)  # both branches of the cap were exercised


def mean_rms(opt):
    return [m.double().norm().item() / math.sqrt(m.numel()) for m in opt.means()]


class Linear(nn.Module):
    """An adversarial loss: -scale * <w, d>, which pushes mu along d at every step, forever."""

    def __init__(self, scale=1e6):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(40, 10))
        self.b = nn.Parameter(torch.zeros(25))
        g = torch.Generator().manual_seed(1)
        self.d, self.e, self.scale = torch.randn(40, 10, generator=g), torch.randn(25, generator=g), scale

    def forward(self):
        return -self.scale * ((self.w * self.d).sum() + (self.b * self.e).sum())


def test_ldsd_mean_stays_bounded_under_adversarial_losses():
    """lr = 0, so the loss keeps rewarding the same direction: the paper's rule (no decay, no cap, raw
    advantages) lets mu grow without bound; decay alone makes it level off; the cap bounds
    every block's RMS by cap * sigma at every step, even with a huge mean_lr and no decay, and also under
    huge random losses."""
    runs = {"paper": dict(normalise=False, decay=1.0, cap=math.inf), "decay": dict(decay=0.9, cap=math.inf),
            "capped": dict(mean_lr=10.0, decay=1.0, cap=1.0), "default": dict()}
    rms = {}
    for name, kw in runs.items():
        model = Linear()
        opt = LDSD(model, lr=0.0, eps=1e-3, k=4, seed=0, noise="gaussian", **{"mean_lr": 0.1, **kw})
        trace = []
        for _ in range(200):
            opt.step(model)
            trace.append(max(mean_rms(opt)))
            if name in ("capped", "default"):
                assert trace[-1] <= 1.0 + 1e-6
        rms[name] = trace
    # unbounded growth: a drift along d plus a random walk (sqrt(2) = 1.41 for a pure walk, 2 for pure drift)
    assert rms["paper"][-1] > 1.3 * rms["paper"][99] and rms["paper"][-1] > 1e3
    early, late = sum(rms["decay"][50:100]) / 50, sum(rms["decay"][150:]) / 50
    assert late < 1.2 * early  # levels off
    assert rms["capped"][-1] > 0.99  # pushed to the cap, and held there

    model = Linear()
    opt = LDSD(model, lr=0.0, eps=1e-3, k=4, mean_lr=10.0, seed=1, cap=0.5, decay=1.0)
    noise = random.Random(0)
    for _ in range(100):
        opt.step(lambda: torch.tensor(noise.choice([-1.0, 1.0]) * 10 ** noise.uniform(0, 30)))
        assert all(math.isfinite(r) and r <= 0.5 + 1e-6 for r in mean_rms(opt))


def test_ldsd_state_dict_round_trip_continues_identically():
    a, _ = load_model("tiny-llama")
    b, _ = load_model("tiny-llama")
    x = ids(3)
    opt_a = LDSD(a, lr=1e-3, eps=1e-2, momentum=0.9, seed=4)
    for _ in range(2):
        opt_a.step(lambda: a(input_ids=x, labels=x).loss)
    state = copy.deepcopy(opt_a.state_dict())
    assert all("ldsd_mean" in s for s in state["state"].values()) and state["zo"]["ldsd_adv_scale"] > 0
    b.load_state_dict(a.state_dict())
    opt_b = LDSD(b, lr=1e-3, eps=1e-2, momentum=0.9, seed=99)
    opt_b.load_state_dict(state)
    opt_a.step(lambda: a(input_ids=x, labels=x).loss)
    opt_b.step(lambda: b(input_ids=x, labels=x).loss)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
    for ma, mb in zip(opt_a.means(), opt_b.means()):
        assert torch.equal(ma, mb)
    assert opt_a.engine.forwards == opt_b.engine.forwards == 15


# --- all methods -------------------------------------------------------------------------------------


def test_zero_lr_leaves_every_parameter_bit_identical():
    model, _ = load_model("tiny-llama")
    x = ids()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in METHODS:
        for rule in ("sgd", "momentum", "adam"):
            opt = make_direction_optimizer(method, rule, model, lr=0.0, eps=1e-2, weight_decay=0.1)
            for _ in range(2):
                opt.step(lambda: model(input_ids=x, labels=x).loss)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("method,flags,per_step", [("gv", {}, 6), ("gv", {"candidates": 3}, 5),
                                                    ("greedy", {}, 5), ("ldsd", {}, 5), ("ldsd", {"ldsd_k": 2}, 3),
                                                    ("mezo", {}, 2), ("nspsa", {}, 8), ("zo-adam", {}, 2),
                                                    ("sparse-mezo", {}, 2), ("lozo", {}, 2), ("bcd", {}, 2),
                                                    ("fzoo", {}, 9), ("fzoo", {"fzoo_n": 3}, 4), ("hizoo", {}, 3),
                                                    ("exact", {"top_lr": 1e-3}, 1)])
def test_forwards_per_step_is_what_a_step_spends(method, flags, per_step):
    cfg = FinetuneConfig(model="tiny-llama", method=method, **flags)
    cfg.validate()
    assert cfg.forwards_per_step == per_step
    if method in (*METHODS, *BASELINE_METHODS, "exact"):
        from finetune.trainer import make_run_optimizer

        model, _ = load_model("tiny-llama")
        opt = make_run_optimizer(cfg, model)
        x = ids()
        for _ in range(3):
            opt.step(lambda: model(input_ids=x, labels=x).loss)
        assert opt.engine.forwards == 3 * per_step


@pytest.mark.parametrize("method", ["mezo", *METHODS])
def test_each_method_lowers_the_training_loss_of_a_tiny_model(method):
    """Every method, MeZO included, lowers the loss of tiny-llama (lr 1e-3, eps 1e-3) in 200 forward passes."""
    examples = synthetic_examples()
    task = Task("synthetic", "mc", examples, examples[:8], examples)
    model, tok = load_model("tiny-llama")
    scorer = TaskScorer(tok)
    with torch.no_grad():
        before = scorer.loss(model, examples).item()
    cfg = FinetuneConfig(model="tiny-llama", method=method, lr=1e-3, eps=1e-3)
    cfg.steps = 200 // cfg.forwards_per_step
    result = train(cfg, model, scorer, task, progress=False)
    with torch.no_grad():
        after = scorer.loss(model, examples).item()
    assert after < before - 0.05, (before, after)
    assert result.forwards == cfg.steps * cfg.forwards_per_step and len(result.train_loss) == cfg.steps


# --- the command line --------------------------------------------------------------------------------



@pytest.mark.parametrize("method,extra,per_step", [("gv", [], 6), ("greedy", ["--candidates", "3"], 4),
                                                   ("ldsd", ["--ldsd-k", "3", "--ldsd-lr", "0.5"], 4),
                                                   ("gv", ["--optimizer", "adam"], 6),
                                                   ("sparse-mezo", ["--sparsity", "0.5"], 2),
                                                   ("lozo", ["--lozo-rank", "1", "--lozo-interval", "1"], 2),
                                                   ("bcd", ["--bcd-layers", "0.5"], 2), ("fzoo", ["--fzoo-n", "3"], 4),
                                                   ("hizoo", ["--hizoo-alpha", "1e-4"], 3)])
def test_cli_finetune_runs_each_method(tmp_path, jsonl, method, extra, per_step):
    out = tmp_path / "run"
    assert cli.main(["finetune", "--model", "tiny-gpt2", "--task", str(jsonl), "--method", method, "--steps", "2",
                     "--lr", "1e-3", "--batch-size", "4", "--n-test", "4", "--out", str(out), "--no-save-model",
                     *extra]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["forwards"] == 2 * per_step and len(metrics["train_loss"]) == 2


@pytest.mark.parametrize("argv,message", [
    (["--method", "gv", "--candidates", "1"], "--candidates must be at least 2"),
    (["--method", "ldsd", "--ldsd-k", "1"], "--ldsd-k must be at least 2"),
    (["--method", "ldsd", "--ldsd-decay", "1.5"], "--ldsd-decay must be in [0, 1]"),
    (["--method", "ldsd", "--ldsd-cap", "0"], "--ldsd-cap must be > 0"),
    (["--method", "ldsd", "--ldsd-lr", "-1"], "--ldsd-lr must be >= 0"),
    (["--method", "gv", "--q", "2"], "--q does not apply to --method gv"),
    (["--method", "mezo", "--candidates", "3"], "--candidates applies to --method gv or greedy"),
    (["--method", "greedy", "--ldsd-k", "3"], "--ldsd-k applies to --method ldsd"),
    (["--method", "sparse-mezo", "--sparsity", "1"], "--sparsity must be in [0, 1)"),
    (["--method", "lozo", "--lozo-rank", "0"], "--lozo-rank must be at least 1"),
    (["--method", "lozo", "--lozo-interval", "0"], "--lozo-interval must be at least 1"),
    (["--method", "bcd", "--bcd-layers", "1.5"], "--bcd-layers must be a count >= 1 or a fraction in (0, 1)"),
    (["--method", "bcd", "--bcd-layers", "9"], "--bcd-layers 9 is more than the model's 3 layer groups"),
    (["--method", "fzoo", "--fzoo-n", "1"], "--fzoo-n must be at least 2"),
    (["--method", "hizoo", "--hizoo-alpha", "0"], "--hizoo-alpha must be in (0, 1)"),
    (["--method", "lozo", "--q", "2"], "--q does not apply to --method lozo"),
    (["--method", "fzoo", "--optimizer", "adam"], "--method fzoo uses its own SGD update"),
    (["--method", "mezo", "--sparsity", "0.5"], "--sparsity applies to --method sparse-mezo"),
    (["--method", "sparse-mezo", "--peft", "lora"], "--method sparse-mezo cannot train --peft lora"),
    (["--method", "lozo", "--fzoo-n", "4"], "--fzoo-n applies to --method fzoo"),
])
def test_cli_bad_values_give_one_line_errors(tmp_path, capsys, jsonl, argv, message):
    out = tmp_path / "run"
    code = cli.main(["finetune", "--model", "tiny-gpt2", "--task", str(jsonl), "--steps", "1", "--out", str(out),
                     "--n-test", "4", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and message in err, err
    assert not out.exists() and not list(tmp_path.glob(".run.partial*"))


def test_bench_gives_direction_methods_the_same_forward_budget(tmp_path, jsonl):
    out = tmp_path / "bench"
    assert cli.main(["bench", "--model", "tiny-gpt2", "--task", str(jsonl), "--methods", "mezo,gv,greedy,ldsd",
                     "--seeds", "0", "--forwards", "12", "--q", "2", "--lr", "1e-3", "--batch-size", "4",
                     "--n-test", "4", "--out", str(out)]) == 0
    runs = {r["method"]: r for r in json.loads((out / "bench.json").read_text())["runs"]}
    # steps = 12 // forwards per step: mezo (q 2) 4 -> 3 steps, gv 6 -> 2, greedy 5 -> 2, ldsd 5 -> 2
    assert {m: (r["steps"], r["forwards"]) for m, r in runs.items()} == {
        "mezo": (3, 12), "gv": (2, 12), "greedy": (2, 10), "ldsd": (2, 10)}
