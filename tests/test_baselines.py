"""The baselines (Sparse-MeZO, LOZO, block-coordinate ZO, FZOO, HiZOO) and the engine's noise kinds and
multipliers they use, against independent references: materialised noise, explicit masks, low-rank
products, active sets and Hessian scalings, losses through ``torch.func.functional_call``, explicit updates."""
import copy
import json
import math
import re
import statistics

import pytest
import torch

import cli
from finetune.data.models import TINY, load_model
from finetune.trainer import BASELINE_METHODS, FinetuneConfig, make_run_optimizer
from finetune.zo.baselines import FZOO, LOZO, BlockCoordinateZO, HiZOO, SparseMeZO, make_baseline
from finetune.zo.engine import BelowMagnitude, Direction, Elementwise, ZOEngine
from finetune.zo.noise import (GaussianNoise, LowRankNoise, NoiseTable, RademacherNoise, RademacherTable,
                               rademacher_like)
from finetune.zo.optim import ZOSGD
from reference import Reference, axpy, ids, seed_stream

LR, EPS = 1e-3, 1e-2


def materialise(noise, engine, seed, i):
    """Block i's noise of kind ``noise`` at ``seed``, written by ``noise.add`` onto zeros."""
    p = engine.blocks[i][1]
    out = torch.zeros_like(p)
    noise.add(out, seed, i, 1.0, out=out)
    return out


def low_rank(noise, engine, seed, i):
    """Block i of low-rank noise built explicitly: U V^T from the factors (vectors: the base noise)."""
    p = engine.blocks[i][1]
    if p.ndim < 2:
        return engine.unit_noise(seed, i)
    u, v = noise.factors(seed, i, p.device, p.dtype)
    assert u.shape == (p.shape[0], noise.rank) and v.shape == (p[0].numel(), noise.rank)
    return (u @ v.T).view(p.shape)


# --- noise kinds -----------------------------------------------------------------------------------------


def kinds():
    shapes = [(40, 25), (1000,), (3, 4, 5)]
    return {"rademacher-table": RademacherTable(size=1 << 12, chunk=1 << 8), "rademacher": RademacherNoise(),
            "lowrank": LowRankNoise(NoiseTable(size=1 << 12, chunk=1 << 8), shapes, rank=3, window_seed=17)}


@pytest.mark.parametrize("kind", ["rademacher-table", "rademacher", "lowrank"])
def test_new_noise_kinds_segments_rows_and_dots_agree_with_the_full_noise(kind):
    """``add`` on a segment (inside a row, across rows and table chunks) is the slice of the full noise; rows
    are its rows; ``dot`` is the inner product; the noise is a pure function of (seed, block)."""
    noise = kinds()[kind]
    for index, shape in enumerate([(40, 25), (1000,), (3, 4, 5)]):
        numel = math.prod(shape)
        full = torch.zeros(shape, dtype=torch.float64)
        noise.add(full, seed=4, index=index, alpha=1.0, out=full)
        again = torch.zeros(shape, dtype=torch.float64)
        noise.add(again, seed=4, index=index, alpha=1.0, out=again)
        assert torch.equal(full, again) and full.abs().sum() > 0
        flat = full.reshape(-1)
        base = torch.randn(numel, dtype=torch.float64)
        for at, end in [(0, numel), (3, 20), (26, 49), (numel // 4, numel // 2), (numel - 7, numel), (250, 260),
                        (100, 900)]:
            if end > numel:
                continue
            out = torch.empty(end - at, dtype=torch.float64)
            noise.add(base[at:end], seed=4, index=index, alpha=-0.5, out=out, at=at, numel=numel)
            torch.testing.assert_close(out, base[at:end] - 0.5 * flat[at:end], rtol=0, atol=1e-12)
        t = torch.randn(shape, dtype=torch.float64)
        torch.testing.assert_close(noise.dot(t, 4, index), (t * full).sum(), rtol=1e-10, atol=1e-10)
        if len(shape) == 2:
            row_ids = torch.tensor([[0, 39, 5], [7, 7, 1]])
            torch.testing.assert_close(noise.rows(full, 4, index, row_ids), full[row_ids], rtol=1e-12, atol=1e-12)
        other = torch.zeros(shape, dtype=torch.float64)
        noise.add(other, seed=5, index=index, alpha=1.0, out=other)
        assert not torch.equal(full, other)


@pytest.mark.parametrize("noise", [RademacherTable(), RademacherNoise()])
def test_rademacher_noise_is_plus_minus_one_and_uncorrelated(noise):
    t, other = torch.zeros(300_000), torch.zeros(300_000)
    noise.add(t, seed=3, index=5, alpha=1.0, out=t)
    noise.add(other, seed=4, index=5, alpha=1.0, out=other)
    assert set(t.unique().tolist()) == {-1.0, 1.0}
    assert abs(t.mean().item()) < 0.01
    assert abs(torch.dot(t, other).item() / t.numel()) < 0.01
    assert abs(torch.dot(t[1:], t[:-1]).item() / t.numel()) < 0.01
    assert isinstance(rademacher_like(NoiseTable()), RademacherTable)
    assert isinstance(rademacher_like(GaussianNoise()), RademacherNoise)


def test_low_rank_noise_has_the_rank_and_keeps_v_for_its_window():
    """U V^T has rank r; within one window (one object) V is the same at every seed and U changes; another
    window seed gives another V; vectors get the base noise at the step's seed."""
    base = NoiseTable(size=1 << 12, chunk=1 << 8)
    a, b = (LowRankNoise(base, [(30, 20), (20,)], rank=2, window_seed=w) for w in (1, 2))
    z = torch.zeros(30, 20)
    a.add(z, 7, 0, 1.0, out=z)
    assert torch.linalg.matrix_rank(z) == 2
    u1, v1 = (t.clone() for t in a.factors(7, 0))
    u2, v2 = a.factors(8, 0)
    assert torch.equal(v1, v2) and not torch.equal(u1, u2)
    u3, v3 = b.factors(7, 0)
    assert torch.equal(u1, u3) and not torch.equal(v1, v3)
    vec, want = torch.zeros(20), torch.zeros(20)
    a.add(vec, 7, 1, 1.0, out=vec)
    base.add(want, 7, 1, 1.0, out=want)
    assert torch.equal(vec, want)
    # E[(U V^T)_ij^2] = rank: the public code's scale
    big = LowRankNoise(base, [(400, 300)], rank=3, window_seed=0)
    z = torch.zeros(400, 300)
    big.add(z, 1, 0, 1.0, out=z)
    assert abs(z.square().mean().item() - 3) < 0.5


@pytest.mark.parametrize("rank", [1, 3])
def test_low_rank_noise_writes_segments_and_strided_blocks_as_the_explicit_product(rank):
    """``add`` on flat segments of a block (from mid-row, across rows, to the end; with a chunk small enough that
    the eager product goes a few rows at a time), on a whole block and into a transposed (strided) output equals
    ``theta + alpha * U V^T`` built with a matrix product (to rounding); the fused loop and the eager ops give the
    same numbers bit for bit."""
    from finetune.zo import kernels

    base = NoiseTable(size=1 << 12, chunk=1 << 6)
    theta = torch.randn(37, 29) * 0.02
    for loops in (None, kernels.load()):
        noise = LowRankNoise(base, [(37, 29)], rank=rank, window_seed=5, loops=loops)
        u, v = noise.factors(9, 0)
        want = (theta + 0.3 * (u.double() @ v.double().T).float()).reshape(-1)
        whole = torch.empty_like(theta)
        noise.add(theta, 9, 0, 0.3, out=whole)
        torch.testing.assert_close(whole.reshape(-1), want, rtol=0, atol=1e-6)
        for at, count in ((0, 10), (13, 100), (29, 29), (1000, 73)):
            seg = theta.reshape(-1)[at: at + count].clone()
            noise.add(seg, 9, 0, 0.3, out=seg, at=at, numel=theta.numel())
            assert torch.equal(seg, whole.reshape(-1)[at: at + count])
        strided = torch.empty(29, 37).T
        noise.add(theta, 9, 0, 0.3, out=strided)
        assert torch.equal(strided, whole)
        if loops is None:
            eager = whole
    assert torch.equal(whole, eager)


# --- the engine: directions with their own noise and multipliers ------------------------------------------


def direction_kinds(engine, gen):
    """Directions of each new kind on ``engine``'s blocks, with their explicit per-block tensors."""
    params = engine.params
    shapes = [p.shape for p in params]
    low = LowRankNoise(engine.noise, shapes, rank=2, window_seed=3)
    rad = rademacher_like(engine.noise)
    h = [torch.rand(p.shape, generator=gen) + 0.25 for p in params]
    thresholds = [float(p.detach().abs().median()) if p.ndim >= 2 else None for p in params]
    scale = torch.rand(params[0].shape, generator=gen)
    n = len(params)
    out = {
        "mask": (Direction(11, multipliers=[None if t is None else BelowMagnitude(t) for t in thresholds]),
                 [engine.unit_noise(11, i) * ((p.detach().abs() <= t).float() if t is not None else 1.0)
                  for i, (p, t) in enumerate(zip(params, thresholds))]),
        "lowrank": (Direction([(11, 0.7), (12, -1.3)], noise=low),
                    [0.7 * low_rank(low, engine, 11, i) - 1.3 * low_rank(low, engine, 12, i) for i in range(n)]),
        "rademacher": (Direction([(11, 0.7), (12, -1.3)], noise=rad),
                       [0.7 * materialise(rad, engine, 11, i) - 1.3 * materialise(rad, engine, 12, i)
                        for i in range(n)]),
        "inverse-sqrt": (Direction([(11, 0.7), (12, -1.3)], multipliers=[Elementwise(x.rsqrt()) for x in h]),
                         [x.rsqrt() * (0.7 * engine.unit_noise(11, i) - 1.3 * engine.unit_noise(12, i))
                          for i, x in enumerate(h)]),
        "elementwise": (Direction(11, multipliers=[Elementwise(scale)] + [None] * (n - 1)),
                        [engine.unit_noise(11, i) * (scale if i == 0 else 1.0) for i in range(n)]),
    }
    return out


@pytest.mark.parametrize("noise", ["table", "gaussian"])
@pytest.mark.parametrize("name", TINY)
def test_directions_with_noise_kinds_and_multipliers_equal_the_explicit_model(noise, name):
    """theta + alpha * v through the hooks (embedding lookups, tied weights, large heads written a few rows at
    a time) equals functional_call at explicitly built parameters, for low-rank and Rademacher noise,
    magnitude masks, H^{-1/2} and stored multipliers; parameters come back bit for bit; ``update_`` moves them
    by exactly alpha * v."""
    model, _ = load_model(name)
    engine = ZOEngine(model, noise=noise)
    if noise == "table":  # small chunks: a head is written in many few-row pieces
        engine.noise = NoiseTable(size=1 << 14, chunk=1 << 9)
    x = ids()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = [n for n, _ in engine.blocks]
    alpha = 1e-2
    for kind, (direction, explicit) in direction_kinds(engine, torch.Generator().manual_seed(0)).items():
        with torch.inference_mode(), engine.perturbed(direction, alpha):
            got = model(input_ids=x).logits
        params = {n: p.detach() + alpha * v for (n, p), v in zip(engine.blocks, explicit)}
        with torch.no_grad():
            want = torch.func.functional_call(model, params, (), {"input_ids": x}).logits
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=kind)
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), (kind, k)
    # the mask first: its explicit form is of the initial weights (the others do not depend on them)
    for kind, (direction, explicit) in direction_kinds(engine, torch.Generator().manual_seed(0)).items():
        theta = {n: p.detach().clone() for n, p in engine.blocks}
        engine.update_(direction, -0.5)
        for n, v, (_, p) in zip(names, explicit, engine.blocks):
            torch.testing.assert_close(p.detach(), theta[n] - 0.5 * v, rtol=0, atol=1e-6, msg=f"{kind} {n}")
            if kind == "mask":
                assert torch.equal(p.detach()[v == 0], theta[n][v == 0])  # masked entries: not touched at all


# --- Sparse-MeZO ----------------------------------------------------------------------------------------


def thresholds_by_sorting(theta, sparsity):
    """Per matrix, the largest |theta| among the ceil((1 - sparsity) n) smallest ones."""
    out = {}
    for n, t in theta.items():
        if t.ndim >= 2:
            k = math.ceil((1 - sparsity) * t.numel() - 1e-9)
            out[n] = t.abs().flatten().sort().values[k - 1]
    return out


@pytest.mark.parametrize("name", TINY)
def test_sparse_mezo_steps_match_explicit_masks(name):
    """Thresholds from the initial |theta| (sorting); each step's mask from the current unperturbed weights;
    g from L(theta +- eps m z) via functional_call; theta -= lr g m z; untrained entries bit-identical;
    vectors dense; 2 forward passes per step."""
    model, _ = load_model(name)
    sparsity = 0.6
    opt = SparseMeZO(model, lr=LR, eps=EPS, sparsity=sparsity, seed=3, noise="table")
    ref = Reference(model, opt.engine, ids())
    h = thresholds_by_sorting(ref.theta(), sparsity)
    assert [opt.thresholds[i] for i, (n, _) in enumerate(opt.engine.blocks) if n in h] == [float(v) for v in h.values()]
    stream = seed_stream(3)
    for step in range(2):
        theta, z = ref.theta(), ref.z(next(stream))
        m = {n: (theta[n].abs() <= h[n]).to(theta[n].dtype) if n in h else torch.ones_like(theta[n]) for n in theta}
        for n in h:  # at the start, the 40% smallest (ties included); later the weights cross the thresholds
            assert step > 0 or 0.4 <= m[n].mean().item() <= 0.4 + 2 / m[n].numel() + 0.02
        mz = {n: m[n] * z[n] for n in theta}
        g = (ref.loss(axpy(EPS, mz, theta)) - ref.loss(axpy(-EPS, mz, theta))) / (2 * EPS)
        opt.step(ref.closure())
        assert opt.engine.forwards == 2 * (step + 1)
        assert math.isclose(opt.last["projected_grad"], g, rel_tol=1e-3, abs_tol=1e-4)
        g_used = opt.last["projected_grad"]
        for n, p in opt.engine.blocks:
            torch.testing.assert_close(p.detach(), theta[n] - LR * g_used * mz[n], rtol=0, atol=1e-6)
            assert torch.equal(p.detach()[m[n] == 0], theta[n][m[n] == 0])
        for mask, (n, _) in zip(opt.masks(), opt.engine.blocks):
            assert (mask is None) == (n not in h)


def test_sparse_mezo_without_sparsity_is_mezo():
    """Sparsity 0: every entry is trained (threshold +inf), and the masked write keeps MeZO's arithmetic, so the
    run is MeZO's bit for bit (over steps that move the largest weights past their initial magnitude)."""
    a, _ = load_model("tiny-llama")
    b = copy.deepcopy(a)
    x = ids()
    sparse, mezo = SparseMeZO(a, lr=LR, eps=EPS, sparsity=0.0, seed=1), ZOSGD(b, lr=LR, eps=EPS, seed=1)
    for _ in range(3):
        sparse.step(lambda: a(input_ids=x, labels=x).loss)
        mezo.step(lambda: b(input_ids=x, labels=x).loss)
        assert sparse.last["projected_grad"] == mezo.last["projected_grad"]
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_sparse_mezo_weight_decay_touches_only_trained_entries():
    model, _ = load_model("tiny-llama")
    opt = SparseMeZO(model, lr=0.0, eps=EPS, sparsity=0.5, weight_decay=0.1, seed=0)
    opt.param_groups[0]["lr"] = 0.5  # lr * wd = 0.05; the noise term is checked elsewhere
    x = ids()
    theta = {n: p.detach().clone() for n, p in opt.engine.blocks}
    masks = opt.masks()
    g_seed = next(seed_stream(0))
    opt.step(lambda: model(input_ids=x, labels=x).loss)
    g = opt.last["projected_grad"]
    for i, ((n, p), m) in enumerate(zip(opt.engine.blocks, masks)):
        moved = theta[n] - 0.5 * g * (opt.engine.unit_noise(g_seed, i) * (1.0 if m is None else m))
        if m is not None:
            moved = moved * (1 - 0.05 * m)
            assert torch.equal(p.detach()[~m], theta[n][~m])
        torch.testing.assert_close(p.detach(), moved, rtol=0, atol=1e-6)


# --- LOZO ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt", "tiny-gpt2"])
def test_lozo_steps_match_explicit_low_rank_products(name):
    """Five steps with interval 2 (windows 0, 0, 1, 1, 2): every matrix is perturbed by U_t V_w^T (rank 2),
    vectors by plain noise; the update moves along the very Z of the two passes, also on the steps that
    start a window (the public code's replay bug would move along another U there); V is the same within
    a window and changes across windows."""
    model, _ = load_model(name)
    opt = LOZO(model, lr=LR, eps=EPS, rank=2, interval=2, seed=6)
    ref = Reference(model, opt.engine, ids())
    shapes = [p.shape for p in opt.engine.params]
    stream = seed_stream(6)
    vs = {}
    for t in range(5):
        window = t // 2
        noise = LowRankNoise(opt.engine.noise, shapes, 2, opt.window_seed(window))  # a fresh object: no cache
        seed = next(stream)
        theta = ref.theta()
        z = {n: low_rank(noise, opt.engine, seed, i) for i, n in enumerate(ref.names)}
        matrix = next(i for i, s in enumerate(shapes) if len(s) >= 2)
        assert torch.linalg.matrix_rank(z[ref.names[matrix]]) == 2
        vs.setdefault(window, noise.factors(seed, matrix)[1].clone())
        g = (ref.loss(axpy(EPS, z, theta)) - ref.loss(axpy(-EPS, z, theta))) / (2 * EPS)
        opt.step(ref.closure())
        assert opt.last["window"] == window and opt.engine.forwards == 2 * (t + 1)
        assert math.isclose(opt.last["projected_grad"], g, rel_tol=1e-3, abs_tol=1e-4)
        g_used = opt.last["projected_grad"]
        for n, p in opt.engine.blocks:
            torch.testing.assert_close(p.detach(), theta[n] - LR * g_used * z[n], rtol=0, atol=1e-6)
    assert not torch.equal(vs[0], vs[1]) and not torch.equal(vs[1], vs[2])


# --- block-coordinate ZO ----------------------------------------------------------------------------------


def layer_of(name):
    """The layer number in a parameter name (model.layers.3.mlp..., transformer.h.0...), None outside layers."""
    found = re.search(r"\.(\d+)\.", name)
    return None if found is None else int(found.group(1))


@pytest.mark.parametrize("name", TINY)
def test_bcd_groups_are_the_layers_and_the_rest(name):
    model, _ = load_model(name)
    opt = BlockCoordinateZO(model, lr=LR, eps=EPS, layers=1)
    names = [n for n, _ in opt.engine.blocks]
    layers = sorted({layer_of(n) for n in names if layer_of(n) is not None})
    want = [[i for i, n in enumerate(names) if layer_of(n) == k] for k in layers]
    want.append([i for i, n in enumerate(names) if layer_of(n) is None])
    assert opt.groups == want and len(layers) >= 2


@pytest.mark.parametrize("name,layers", [("tiny-llama", 1), ("tiny-qwen2", 2), ("tiny-gpt2", 0.5), ("tiny-opt", 1)])
def test_bcd_steps_move_only_the_active_layers(name, layers):
    """MeZO restricted to the step's active groups: g from functional_call with z on the active blocks only,
    active blocks move by -lr g z, every other block is bit-identical; the active set is the seed's."""
    model, _ = load_model(name)
    opt = BlockCoordinateZO(model, lr=LR, eps=EPS, layers=layers, seed=2)
    k = {1: 1, 2: 2, 0.5: 2}[layers]  # 0.5 of tiny-gpt2's 3 groups rounds to 2
    assert opt.k == k
    ref = Reference(model, opt.engine, ids())
    stream = seed_stream(2)
    for step in range(3):
        seed = next(stream)
        active = opt.active_groups(seed)
        assert len(set(active)) == k
        on = {ref.names[i] for a in active for i in opt.groups[a]}
        theta, z = ref.theta(), ref.z(seed)
        zs = {n: z[n] if n in on else torch.zeros_like(z[n]) for n in z}
        g = (ref.loss(axpy(EPS, zs, theta)) - ref.loss(axpy(-EPS, zs, theta))) / (2 * EPS)
        opt.step(ref.closure())
        assert opt.last["active"] == active and opt.engine.forwards == 2 * (step + 1)
        assert math.isclose(opt.last["projected_grad"], g, rel_tol=1e-3, abs_tol=1e-4)
        for n, p in opt.engine.blocks:
            if n in on:
                torch.testing.assert_close(p.detach(), theta[n] - LR * opt.last["projected_grad"] * z[n],
                                           rtol=0, atol=1e-6)
            else:
                assert torch.equal(p.detach(), theta[n]), n


def test_bcd_active_sets_are_uniform_over_the_groups():
    model, _ = load_model("tiny-llama")
    opt = BlockCoordinateZO(model, lr=LR, eps=EPS, layers=1)
    counts = [0] * len(opt.groups)
    for seed in range(600):
        counts[opt.active_groups(seed)[0]] += 1
    assert all(150 <= c <= 250 for c in counts), counts  # 200 expected each (3 groups)
    assert opt.active_groups(5) == opt.active_groups(5)


# --- FZOO ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise", ["table", "gaussian"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_fzoo_step_matches_explicit_reference(noise, name):
    """l_0 = L(theta), l_i = L(theta + eps u_i) for N Rademacher u_i (materialised: +-1 entries), sigma the
    population std of l_1..l_N, theta -= lr sum_i (l_i - l_0) / (N sigma) u_i; N + 1 forward passes."""
    n, lr = 4, 1e-3
    model, _ = load_model(name)
    opt = FZOO(model, lr=lr, eps=EPS, n=n, seed=2, noise=noise)
    ref = Reference(model, opt.engine, ids(4))
    stream = seed_stream(2)
    seeds = [next(stream) for _ in range(n)]
    theta = ref.theta()
    us = [{name_: materialise(opt.rademacher, opt.engine, s, i) for i, name_ in enumerate(ref.names)} for s in seeds]
    assert all(set(t.unique().tolist()) == {-1.0, 1.0} for u in us for t in u.values() if t.numel() > 1)
    l0 = ref.loss(theta)
    losses = [ref.loss(axpy(EPS, u, theta)) for u in us]
    opt.step(ref.closure())
    assert opt.engine.forwards == n + 1
    assert opt.last["loss"] == pytest.approx(l0, rel=1e-6)
    assert opt.last["losses"] == pytest.approx(losses, rel=1e-5)
    got_l0, got = opt.last["loss"], opt.last["losses"]  # the coefficients amplify rounding: use the step's losses
    sigma = statistics.pstdev(got)
    assert sigma > 0 and not opt.last["skipped"]
    for name_, p in opt.engine.blocks:
        want = theta[name_] - lr * sum((x - got_l0) / (n * sigma) * u[name_] for x, u in zip(got, us))
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-6)


def test_fzoo_takes_no_step_when_the_losses_have_no_spread():
    model, _ = load_model("tiny-llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = FZOO(model, lr=1.0, eps=EPS, n=3)
    opt.step(lambda: torch.tensor(2.5))  # a loss that does not depend on the weights: sigma = 0
    assert opt.last["skipped"] and opt.last["spread"] == 0.0 and opt.last["loss"] == 2.5
    assert opt.engine.forwards == 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    opt.step(lambda: torch.tensor(float("nan")))  # not finite: no step either, and the loss says so
    assert math.isnan(opt.last["loss"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_fzoo_sums_its_terms_in_fp32_for_half_precision_weights():
    """In bf16 each term lr * c_i alone is below half an ulp of the weights; summed in fp32 and rounded once
    they move the weights as an fp32 reference rounded once."""
    model, _ = load_model("tiny-llama")
    model = model.to(torch.bfloat16)
    opt = FZOO(model, lr=2e-3, eps=EPS, n=4, seed=1)
    x = ids()
    theta = {n: p.detach().clone() for n, p in opt.engine.blocks}
    opt.step(lambda: model(input_ids=x, labels=x).loss.float())
    coeffs, seeds = opt.last["coefficients"], opt.last["seeds"]
    moved = 0
    for i, (n, p) in enumerate(opt.engine.blocks):
        step = sum(c * materialise(opt.rademacher, opt.engine, s, i).float() for c, s in zip(coeffs, seeds))
        want = (theta[n].float() - 2e-3 * step).to(torch.bfloat16).float()
        diff = (p.detach().float() - want).abs()
        assert (diff <= want.abs() * 2**-7).all(), n  # at most one ulp apart (fp32 sums in another order)
        assert (diff > 0).float().mean() < 0.01, n
        moved += (p.detach() != theta[n]).sum().item()
    assert moved > 0.1 * sum(p.numel() for p in opt.engine.params)


# --- HiZOO --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,chunk", [("tiny-llama", None), ("tiny-llama", 1 << 9), ("tiny-qwen2", None),
                                        ("tiny-opt", None)])
def test_hizoo_steps_match_explicit_reference(name, chunk):
    """l_0, l+- = L(theta +- eps H^{-1/2} z); theta -= lr g H^{-1/2} z with the H of the passes; then
    H <- H ((1 - a) + a |l+ + l- - 2 l_0| |z^2 - 1| / (2 eps^2)); two steps, so the second perturbs with
    H != 1; 3 forward passes per step; also with small table chunks (the update goes chunk by chunk)."""
    alpha = 0.05
    model, _ = load_model(name)
    opt = HiZOO(model, lr=LR, eps=EPS, alpha=alpha, seed=8)
    if chunk is not None:  # the update then goes over each block in many table chunks
        opt.engine.noise = NoiseTable(size=1 << 14, chunk=chunk)
    ref = Reference(model, opt.engine, ids(6))
    stream = seed_stream(8)
    H = {n: torch.ones_like(p, dtype=torch.float32) for n, p in opt.engine.blocks}
    for step in range(2):
        seed = next(stream)
        theta, z = ref.theta(), ref.z(seed)
        u = {n: z[n] * H[n].rsqrt() for n in z}
        l0, plus, minus = ref.loss(theta), ref.loss(axpy(EPS, u, theta)), ref.loss(axpy(-EPS, u, theta))
        opt.step(ref.closure())
        assert opt.engine.forwards == 3 * (step + 1)
        assert opt.last["loss"] == pytest.approx(l0, rel=1e-6)
        assert math.isclose(opt.last["projected_grad"], (plus - minus) / (2 * EPS), rel_tol=1e-3, abs_tol=1e-4)
        assert math.isclose(opt.last["hessian_delta"], plus + minus - 2 * l0, rel_tol=0.05, abs_tol=2e-6)
        g, delta = opt.last["projected_grad"], opt.last["hessian_delta"]
        for (n, p), h in zip(opt.engine.blocks, opt.hessians()):
            torch.testing.assert_close(p.detach(), theta[n] - LR * g * u[n], rtol=0, atol=1e-6)
            H[n] = H[n] * ((1 - alpha) + alpha * abs(delta) * (z[n].square() - 1).abs() / (2 * EPS**2))
            torch.testing.assert_close(h, H[n], rtol=1e-5, atol=0)
        if step == 1:
            assert max((h - 1).abs().max().item() for h in opt.hessians()) > 0.01  # H really moved


# --- every baseline ----------------------------------------------------------------------------------


def flags(method):
    return {"lozo": {"lozo_interval": 2}, "fzoo": {"fzoo_n": 3}, "bcd": {"bcd_layers": 2},
            "hizoo": {"hizoo_alpha": 0.05}, "sparse-mezo": {"sparsity": 0.5}}[method]


@pytest.mark.parametrize("method", BASELINE_METHODS)
def test_state_dict_round_trip_continues_identically(method):
    """Two steps, save, load into an optimizer built with another seed on the moved weights (so thresholds,
    window seeds, step counter, Hessian and seed stream must all come from the state), two more steps:
    bit-identical to the uninterrupted run."""
    a, _ = load_model("tiny-llama")
    x = ids(3)
    cfg = FinetuneConfig(model="tiny-llama", method=method, lr=1e-3, eps=EPS, seed=4, **flags(method))
    opt_a = make_run_optimizer(cfg, a)
    for _ in range(3 if method == "lozo" else 2):  # LOZO: resume in the middle of a window
        opt_a.step(lambda: a(input_ids=x, labels=x).loss)
    state = copy.deepcopy(opt_a.state_dict())
    b = copy.deepcopy(a)
    opt_b = make_run_optimizer(FinetuneConfig(**{**cfg.__dict__, "seed": 99}), b)
    opt_b.load_state_dict(state)
    for _ in range(2):
        opt_a.step(lambda: a(input_ids=x, labels=x).loss)
        opt_b.step(lambda: b(input_ids=x, labels=x).loss)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
    assert opt_a.engine.forwards == opt_b.engine.forwards == (5 if method == "lozo" else 4) * cfg.forwards_per_step
    if method == "hizoo":
        assert all(torch.equal(h, k) for h, k in zip(opt_a.scalings(), opt_b.scalings()))


def test_hizoo_state_saved_with_h_loads_as_its_inverse_square_root():
    """HiZOO's state is s = H^{-1/2} since 2026-12-07; a state saved before, with H under "hizoo_h", loads as
    s = H^{-1/2} (within an ulp of the saved run's s) and the run goes on along the same steps."""
    a, _ = load_model("tiny-llama")
    x = ids(3)
    cfg = FinetuneConfig(model="tiny-llama", method="hizoo", lr=1e-3, eps=EPS, seed=4, hizoo_alpha=0.05)
    opt_a = make_run_optimizer(cfg, a)
    for _ in range(2):
        opt_a.step(lambda: a(input_ids=x, labels=x).loss)
    state = copy.deepcopy(opt_a.state_dict())
    for entry in state["state"].values():
        entry["hizoo_h"] = entry.pop("hizoo_s").double().pow(-2).float()  # as the old code stored it
    b = copy.deepcopy(a)
    opt_b = make_run_optimizer(cfg, b)
    opt_b.load_state_dict(state)
    for s_a, s_b in zip(opt_a.scalings(), opt_b.scalings()):
        torch.testing.assert_close(s_b, s_a, rtol=3e-7, atol=0)
        assert not torch.equal(s_a, torch.ones_like(s_a))
    opt_a.step(lambda: a(input_ids=x, labels=x).loss)
    opt_b.step(lambda: b(input_ids=x, labels=x).loss)
    assert opt_b.last["projected_grad"] == pytest.approx(opt_a.last["projected_grad"], rel=1e-4)
    for v, w in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(w, v, rtol=0, atol=1e-6)


def test_zero_lr_leaves_every_parameter_bit_identical():
    """Also with eps large enough that the perturbation moves entries across a Sparse-MeZO threshold: the
    mask comes from the unperturbed weights, so nothing drifts."""
    model, _ = load_model("tiny-llama")
    x = ids()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in BASELINE_METHODS:
        opt = make_baseline(method, model, lr=0.0, eps=0.5, weight_decay=0.1, lozo_interval=1)
        for _ in range(2):
            opt.step(lambda: model(input_ids=x, labels=x).loss)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# --- the command line --------------------------------------------------------------------------------


def test_bench_runs_the_baselines_at_the_same_forward_budget(tmp_path, jsonl):
    out = tmp_path / "bench"
    assert cli.main(["bench", "--model", "tiny-gpt2", "--task", str(jsonl), "--methods",
                     "mezo,sparse-mezo,lozo,bcd,fzoo,hizoo", "--fzoo-n", "3", "--seeds", "0", "--forwards", "12",
                     "--q", "2", "--lr", "1e-3", "--batch-size", "4", "--n-test", "4", "--out", str(out)]) == 0
    runs = {r["method"]: r for r in json.loads((out / "bench.json").read_text())["runs"]}
    # steps = 12 // forwards per step: mezo (q 2) 4 -> 3, the 2-pass baselines 6, fzoo (N 3) 4 -> 3, hizoo 3 -> 4
    assert {m: (r["steps"], r["forwards"]) for m, r in runs.items()} == {
        "mezo": (3, 12), "sparse-mezo": (6, 12), "lozo": (6, 12), "bcd": (6, 12), "fzoo": (3, 12), "hizoo": (4, 12)}


@pytest.mark.parametrize("method,lr,extra", [("sparse-mezo", 3e-3, {"sparsity": 0.5}), ("lozo", 1e-3, {}),
                                             ("bcd", 3e-3, {}), ("fzoo", 1e-2, {}), ("hizoo", 1e-3, {})])
def test_each_baseline_lowers_the_training_loss_of_a_tiny_model(method, lr, extra):
    """MeZO's setting in test_directions (tiny-llama, eps 1e-3, 200 forward passes, the synthetic 80%-yes task),
    with each method's own lr (sparse-mezo and bcd move fewer coordinates; fzoo's step is normalised).
    Sparse-MeZO at 0.5: the tiny model's weights (std 0.02) put the 20% threshold at ~0.005, which ZO steps of
    this size cross within tens of steps, and the dynamic mask then empties (docs/methods.md)."""
    from finetune.data.scoring import TaskScorer
    from finetune.data.tasks import Task
    from finetune.trainer import train
    from test_directions import synthetic_examples

    examples = synthetic_examples()
    task = Task("synthetic", "mc", examples, examples[:8], examples)
    model, tok = load_model("tiny-llama")
    scorer = TaskScorer(tok)
    with torch.no_grad():
        before = scorer.loss(model, examples).item()
    cfg = FinetuneConfig(model="tiny-llama", method=method, lr=lr, eps=1e-3, **extra)
    cfg.steps = 200 // cfg.forwards_per_step
    result = train(cfg, model, scorer, task, progress=False)
    with torch.no_grad():
        after = scorer.loss(model, examples).item()
    assert after < before - 0.05, (before, after)
    assert result.forwards == cfg.steps * cfg.forwards_per_step and len(result.train_loss) == cfg.steps


def test_direction_times_keeps_the_noise_kind_and_multipliers():
    """``g * v`` of a baseline's direction is along the same low-rank noise and masks, with coefficients times g."""
    low = LowRankNoise(NoiseTable(size=1 << 12, chunk=1 << 8), [(4, 3)], rank=1, window_seed=0)
    mult = [BelowMagnitude(0.5)]
    d = Direction([(3, 0.5), (4, -1.0)], noise=low, multipliers=mult).times(2.0)
    assert d.noise is low and d.multipliers is mult and d.seeds == [(3, 1.0), (4, -2.0)]


# --- the chunked writes of masks and scalings ---------------------------------------------------------------


class _Counted:
    """The fused kernels' module with a count of each function's calls."""

    def __init__(self, module):
        self.module, self.calls = module, {}

    def __getattr__(self, name):
        def call(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            return getattr(self.module, name)(*args)
        return call


@pytest.mark.parametrize("method", ["sparse-mezo", "sparse-mezo-wd", "hizoo"])
@pytest.mark.parametrize("chunk", [None, 1 << 9, 1000])
def test_chunked_and_fused_writes_equal_the_general_path_bit_for_bit(method, chunk, monkeypatch):
    """With table noise, Sparse-MeZO's mask and HiZOO's H^{-1/2} are written one table chunk at a time, by the
    fused CPU loops (finetune/zo/kernels.cpp: the masked add in one pass, HiZOO's update and its scaling's step in
    one) or by eager ops (the mask as 1/0 floats times z, the scaling's factor from a per-step table): every
    loss, weight and scaling of three steps, and the perturbed logits of a two-seed direction, equal bit for bit
    those of the general path (a bool mask and ``torch.where``, z materialised per block). Chunks of 1000 cut
    head segments and rows mid-way. The fused loops really run (their calls are counted)."""
    from finetune.zo import kernels
    from finetune.zo.engine import ZOEngine as Engine

    assert kernels.load() is not None, kernels.why_not()  # a C++ compiler is part of our machines
    counted = _Counted(kernels.load())

    def run(mode):
        model, _ = load_model("tiny-llama")
        x = ids()
        if method.startswith("sparse"):
            opt = SparseMeZO(model, lr=3e-2, eps=1e-2, sparsity=0.5, seed=3,
                             weight_decay=0.1 if method.endswith("wd") else 0.0)
        else:
            opt = HiZOO(model, lr=1e-2, eps=1e-2, alpha=0.05, seed=3)
        if chunk is not None:
            opt.engine.noise = NoiseTable(size=1 << 14, chunk=chunk)
        opt.engine.fused = mode == "fused"
        records, logits = [], []
        with monkeypatch.context() as m:
            m.setattr(kernels, "load", lambda: counted)
            if mode == "general":
                m.setattr(Engine, "_write_sliced", lambda *a, **k: False)
                m.setattr(HiZOO, "_apply_sliced", staticmethod(lambda *a, **k: False))
            for _ in range(3):
                opt.step(lambda: model(input_ids=x, labels=x).loss)
                records.append(dict(opt.last))
                with torch.inference_mode(), opt.engine.perturbed(Direction([(5, 0.7), (6, -1.3)],
                                                                            multipliers=opt.multipliers), 0.3):
                    logits.append(model(input_ids=x).logits.clone())
        extra = [s.clone() for s in opt.scalings()] if method == "hizoo" else opt.masks()
        return records, logits, [p.detach().clone() for p in model.parameters()], extra

    general = run("general")
    assert not counted.calls
    for mode in ("chunked", "fused"):
        fast = run(mode)
        assert bool(counted.calls) == (mode == "fused")
        assert fast[0] == general[0]
        for a, b in zip(fast[1] + fast[2], general[1] + general[2]):
            assert torch.equal(a.view(torch.int32), b.view(torch.int32))  # also the sign of zeros
        for a, b in zip(fast[3], general[3]):
            assert (a is None and b is None) or torch.equal(a.view(torch.int32), b.view(torch.int32))
    assert set(counted.calls) == {"scaled_update" if method == "hizoo" else "below_magnitude_add"}
    moved = sum((p != q).sum().item() for p, q in zip(fast[2], load_model("tiny-llama")[0].parameters()))
    assert moved > 0


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
def test_lozo_fused_low_rank_writes_equal_the_eager_ones_bit_for_bit(name, monkeypatch):
    """LOZO's writes of U V^T (perturbed copies, a large head a few rows at a time, embedding rows, the update)
    in the fused loop and in eager ops (the product a few rows at a time, summed in the same fixed order) give
    the same losses, weights and perturbed logits of a two-seed direction, bit for bit, over three steps that
    cross a V window; the fused loop really runs (its calls are counted)."""
    from finetune.zo import kernels

    counted = _Counted(kernels.load())

    def run(fused):
        model, _ = load_model(name)
        x = ids()
        with monkeypatch.context() as m:
            m.setattr(kernels, "load", lambda: counted)
            opt = LOZO(model, lr=3e-2, eps=1e-2, rank=2, interval=2, seed=3)
            opt.engine.fused = fused
            records, logits = [], []
            for _ in range(3):
                opt.step(lambda: model(input_ids=x, labels=x).loss)
                records.append(dict(opt.last))
                with torch.inference_mode(), opt.engine.perturbed(Direction([(5, 0.7), (6, -1.3)],
                                                                            noise=opt.noise()), 0.3):
                    logits.append(model(input_ids=x).logits.clone())
        return records, logits + [p.detach().clone() for p in model.parameters()]

    eager = run(False)
    assert not counted.calls
    fused = run(True)
    assert set(counted.calls) == {"low_rank_add"}
    assert fused[0] == eager[0]
    for a, b in zip(fused[1], eager[1]):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))


def test_the_kernels_probe_refuses_a_loop_one_bit_off_and_the_engine_keeps_the_eager_path(monkeypatch, capsys):
    """A loop that differs from the eager ops by one ulp anywhere fails the probe run at load time; load() then
    returns None, says why once on stderr (one line), is not tried again, and Sparse-MeZO's steps take the eager
    path with the same numbers. A failed build (no compiler) does the same, and ZOTUNE_FUSED_KERNELS=0 skips the
    build without a word."""
    from finetune.zo import kernels

    real, build = kernels.load(), kernels._build
    assert real is not None and kernels._probe(real) == ""

    class OneUlpOff:
        def below_magnitude_add(self, theta, z, out, alpha, threshold):
            real.below_magnitude_add(theta, z, out, alpha, threshold)
            out.view(torch.int32)[-1] += 1

        def scaled_update(self, *args):
            real.scaled_update(*args)

    assert "masked add" in kernels._probe(OneUlpOff())
    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "_build", lambda: (False, kernels._probe(OneUlpOff()) + " on this CPU"))
    assert kernels.load() is None
    monkeypatch.setattr(kernels, "_build", lambda: pytest.fail("tried twice"))
    assert kernels.load() is None  # once per process
    err = capsys.readouterr().err.strip()
    assert err.startswith("zotune: fused CPU kernels unavailable (its masked add differs") and "\n" not in err

    def steps(fused):
        model, _ = load_model("tiny-llama")
        opt, x = SparseMeZO(model, lr=3e-2, eps=1e-2, sparsity=0.5, seed=3), ids()
        opt.engine.fused = fused
        for _ in range(2):
            opt.step(lambda: model(input_ids=x, labels=x).loss)
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(steps(True), steps(False)):
        assert torch.equal(a, b)

    def no_compiler(*a, **k):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr("torch.utils.cpp_extension.load", no_compiler)
    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "_build", build)
    assert kernels.load() is None and "Ninja is required" in kernels.why_not()
    assert "fused CPU kernels unavailable (the build failed: RuntimeError: Ninja" in capsys.readouterr().err
    monkeypatch.setenv("ZOTUNE_FUSED_KERNELS", "0")
    monkeypatch.setattr(kernels, "_module", None)
    assert kernels.load() is None and kernels.why_not() == ""
    assert "fused" not in capsys.readouterr().err


def test_a_mask_that_keeps_no_entry_is_written_the_general_way():
    """A negative threshold keeps nothing, so entries outside the mask may be 0: the chunked write (which adds
    0 * z to them) is not used, and a -0.0 weight keeps its sign through an update."""
    model, _ = load_model("tiny-llama")
    engine = ZOEngine(model, noise="table")
    name, p = next((n, p) for n, p in engine.blocks if p.ndim >= 2)
    with torch.no_grad():
        p.view(-1)[::2] = -0.0
    before = p.detach().clone()
    mult = [BelowMagnitude(-1.0) if q is p else None for _, q in engine.blocks]
    assert not mult[[q is p for _, q in engine.blocks].index(True)].sliced and BelowMagnitude(0.0).sliced
    engine.update_(Direction([(3, 1.0), (4, -2.0)], multipliers=mult), 0.5)
    engine.update_(Direction(5, multipliers=mult), -0.5)
    assert torch.equal(p.detach().view(torch.int32), before.view(torch.int32)), name
