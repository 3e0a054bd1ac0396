"""The ZO engine and optimizers against independent references: analytic gradients, an explicit
MeZO step computed with materialised noise, and torch's own SGD/Adam fed the same estimate."""
import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call
from transformers import LlamaConfig, LlamaForCausalLM

from finetune.data.models import TINY, load_model
from finetune.zo.optim import ZOAdam, ZOSGD, make_optimizer, make_schedule
from finetune.zo.engine import Direction, ZOEngine
from finetune.zo.noise import GaussianNoise, NoiseTable
from reference import Quadratic, Reference, axpy, deep_tiny, ids, seed_stream


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def lm_closure(model, seed=1):
    x = torch.randint(0, 97, (4, 12), generator=torch.Generator().manual_seed(seed))
    return lambda: model(input_ids=x, labels=x).loss


def flat_estimate(engine, seed, g, scales=None):
    return torch.cat([engine.noise_like(seed, i, 1.0 if scales is None else scales[i]).flatten() * g
                      for i in range(len(engine.blocks))])


@pytest.mark.parametrize("noise", ["table", "gaussian"])
@pytest.mark.parametrize("scales", [None, (0.5, 2.0)])
def test_mean_of_estimates_approaches_true_gradient(noise, scales):
    model = Quadratic()
    engine = ZOEngine(model, noise=noise)
    n = 6000
    mean = sum(flat_estimate(engine, s, engine.spsa(model, Direction(s, scales), 1e-3)[0], scales) for s in range(n)) / n
    # With scales s_b the estimate's mean is s_b^2 * gradient (perturbation and update both scaled).
    s2 = torch.ones(37, dtype=torch.float64) if scales is None else torch.cat(
        [torch.full((30,), scales[0] ** 2), torch.full((7,), scales[1] ** 2)]).double()
    truth = s2 * model.grad()
    rel = (mean - truth).norm() / truth.norm()
    # The estimate's relative standard error is about sqrt((d + 2) / n) = 0.08 for d = 37.
    assert rel < 0.2, rel
    cos = torch.dot(mean, truth) / (mean.norm() * truth.norm())
    assert cos > 0.97


@pytest.mark.parametrize("noise_cls", [NoiseTable, GaussianNoise])
def test_noise_is_standard_normal_and_reproducible(noise_cls):
    noise = noise_cls()
    t = torch.zeros(300_000)
    noise.add(t, seed=3, index=5, alpha=1.0, out=t)
    again = torch.zeros(300_000)
    noise.add(again, seed=3, index=5, alpha=1.0, out=again)
    other = torch.zeros(300_000)
    noise.add(other, seed=4, index=5, alpha=1.0, out=other)
    assert torch.equal(t, again)
    assert not torch.equal(t, other)
    assert abs(t.mean().item()) < 0.01 and abs(t.std().item() - 1) < 0.01
    # Entries are uncorrelated with a different seed's and with their neighbours' (no chunk repeats).
    assert abs(torch.dot(t, other).item() / t.numel()) < 0.01
    assert abs(torch.dot(t[1:], t[:-1]).item() / t.numel()) < 0.01


def test_table_chunks_of_one_block_are_distinct_slices():
    table = NoiseTable(size=1 << 12, chunk=1 << 8)
    t = torch.zeros(1 << 11)
    table.add(t, seed=0, index=0, alpha=1.0, out=t)
    chunks = t.view(-1, 1 << 8)
    for i in range(len(chunks)):
        for j in range(i):
            assert not torch.equal(chunks[i].abs(), chunks[j].abs())


def test_step_with_zero_lr_leaves_every_parameter_bit_identical():
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for opt in (ZOSGD(model, lr=0.0, eps=1e-2), ZOSGD(model, lr=0.0, momentum=0.9, weight_decay=0.1),
                ZOAdam(model, lr=0.0), ZOSGD(model, lr=0.0, q=3)):
        for _ in range(2):
            opt.step(lm_closure(model))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_parameters_restored_when_the_forward_pass_raises():
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine = ZOEngine(model)

    def boom(module, args, output):
        raise RuntimeError("boom")

    handle = model.model.layers[1].register_forward_hook(boom)
    with pytest.raises(RuntimeError):
        engine.loss(lambda: engine_loss_inside(engine, model))
    handle.remove()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def engine_loss_inside(engine, model):
    with engine.perturbed(1, alpha=1e-2):
        return lm_closure(model)()


@pytest.mark.parametrize("noise", ["table", "gaussian"])
@pytest.mark.parametrize("name", TINY)
def test_mezo_step_matches_explicit_reference(noise, name):
    """One ZOSGD step equals theta - lr * (L(theta+eps z) - L(theta-eps z)) / (2 eps) * z computed
    with materialised z and torch.func.functional_call, on every tiny architecture (tied embeddings,
    embedding lookups, OPT's learned positions, GPT-2's position table)."""
    model, _ = load_model(name)
    closure_x = torch.randint(0, 250, (4, 12), generator=torch.Generator().manual_seed(1))
    opt = ZOSGD(model, lr=1e-3, eps=1e-2, noise=noise, seed=11)
    engine = opt.engine
    seed = next(seed_stream(11))
    names = [n for n, _ in engine.blocks]
    theta = {n: p.detach().clone() for n, p in engine.blocks}
    z = {n: engine.noise_like(seed, i) for i, n in enumerate(names)}

    def ref_loss(delta):
        params = {n: theta[n] + delta * z[n] for n in names}
        return functional_call(model, params, (), {"input_ids": closure_x, "labels": closure_x}).loss.item()

    g = (ref_loss(1e-2) - ref_loss(-1e-2)) / 2e-2
    opt.step(lambda: model(input_ids=closure_x, labels=closure_x).loss)
    assert math.isclose(opt.last["projected_grad"], g, rel_tol=1e-3, abs_tol=1e-4)
    g_used = opt.last["projected_grad"]
    for n, p in engine.blocks:
        torch.testing.assert_close(p.detach(), theta[n] - 1e-3 * g_used * z[n], rtol=0, atol=1e-6)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_block_scales_enter_perturbation_and_update():
    model = Quadratic()
    opt = ZOSGD(model, lr=0.1, eps=1e-3, noise="gaussian")
    w0, b0 = model.w.detach().clone(), model.b.detach().clone()
    opt.zo_step(model, scales=torch.tensor([0.0, 3.0], dtype=torch.float64))
    assert torch.equal(model.w.detach(), w0)  # scale 0: neither perturbed nor moved
    assert not torch.equal(model.b.detach(), b0)





@pytest.mark.parametrize("kind", ["momentum", "adam"])
def test_stateful_optimizers_match_torch_fed_the_same_estimate(kind):
    model, ref = Quadratic(), Quadratic()
    opt = make_optimizer(kind, model, lr=0.05, eps=1e-3, seed=5, momentum=0.9)
    torch_opt = (torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9) if kind == "momentum"
                 else torch.optim.Adam(ref.parameters(), lr=0.05))
    seeds = seed_stream(5)
    for _ in range(3):
        seed = next(seeds)
        g = torch.dot(flat_estimate(opt.engine, seed, 1.0), model.grad()).item()  # exact on a quadratic
        for i, rp in enumerate(ref.parameters()):
            rp.grad = opt.engine.noise_like(seed, i) * g
        opt.step(model)
        torch_opt.step()
        for p, rp in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p.detach(), rp.detach(), rtol=1e-7, atol=1e-10)


def test_nspsa_counts_forwards_and_averages_directions():
    model = Quadratic()
    opt = ZOSGD(model, lr=0.1, eps=1e-3, q=4, seed=2)
    w0 = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    stream = seed_stream(2)
    seeds = [next(stream) for _ in range(4)]
    truth = model.grad()
    expected = w0 - 0.1 * sum(flat_estimate(opt.engine, s, torch.dot(flat_estimate(opt.engine, s, 1.0), truth))
                              for s in seeds) / 4
    opt.step(model)
    assert opt.engine.forwards == 8
    got = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


def test_schedules():
    opt = ZOSGD(Quadratic(), lr=1.0)
    lin = make_schedule(opt, "linear", total_steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(opt.engine.model)
        lin.step()
    assert lrs == [1.0, 0.75, 0.5, 0.25]
    opt = ZOSGD(Quadratic(), lr=2.0)
    cos = make_schedule(opt, "cosine", total_steps=2)
    opt.step(opt.engine.model)
    cos.step()
    assert math.isclose(opt.param_groups[0]["lr"], 1.0)
    with pytest.raises(ValueError):
        make_schedule(opt, "exponential", 3)


@pytest.mark.parametrize("steps", [1, 4, 20, 25])
def test_linear_warmup_rises_over_a_tenth_of_the_steps_then_falls_to_zero(steps):
    """linear-warmup, written out by hand: W = max(1, round(T/10)) steps at lr·k/W (step k from 1), then
    lr·(1 - j/(T-W)) at the (j + 1)-th step after them, driven through make_schedule as a run does."""
    warm = max(1, round(steps / 10))
    want = [k / warm for k in range(1, warm + 1)] + [1 - j / (steps - warm) for j in range(steps - warm)]
    opt = ZOSGD(Quadratic(), lr=2.0)
    sched, lrs = make_schedule(opt, "linear-warmup", total_steps=steps), []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"] / 2.0)
        opt.step(opt.engine.model)
        sched.step()
    assert len(want) == steps and lrs == pytest.approx(want, rel=1e-12)
    assert max(lrs) == pytest.approx(1.0) and min(lrs) > 0


def test_state_dict_round_trip_continues_identically():
    a, b = tiny_llama(), tiny_llama()
    opt_a = ZOSGD(a, lr=1e-3, eps=1e-2, momentum=0.9, seed=4)
    opt_a.step(lm_closure(a))
    state = copy.deepcopy(opt_a.state_dict())  # as if saved to disk: torch's state_dict shares buffers
    b.load_state_dict(a.state_dict())
    opt_b = ZOSGD(b, lr=1e-3, eps=1e-2, momentum=0.9, seed=99)
    opt_b.load_state_dict(state)
    opt_a.step(lm_closure(a))
    opt_b.step(lm_closure(b))
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k
    assert opt_b.engine.forwards == opt_a.engine.forwards == 4


@pytest.mark.parametrize("noise_cls", [NoiseTable, GaussianNoise])
def test_noise_rows_are_rows_of_the_full_noise(noise_cls):
    noise = noise_cls() if noise_cls is GaussianNoise else NoiseTable(size=1 << 12, chunk=1 << 8)
    like = torch.empty(300, 7)
    full = torch.zeros_like(like)
    noise.add(full, seed=9, index=2, alpha=1.0, out=full)
    ids = torch.tensor([[0, 299, 5], [36, 37, 5]])
    torch.testing.assert_close(noise.rows(like, seed=9, index=2, ids=ids), full[ids], rtol=0, atol=0)


@pytest.mark.parametrize("noise_cls", [NoiseTable, GaussianNoise])
def test_noise_segments_are_slices_of_the_full_noise(noise_cls):
    """``add(..., at, numel)`` on a segment equals the same slice of the block's full noise, for segments
    inside one table chunk, across chunk boundaries, and the whole block."""
    noise = noise_cls() if noise_cls is GaussianNoise else NoiseTable(size=1 << 12, chunk=1 << 8)
    numel = 1000
    full = torch.zeros(numel, dtype=torch.float64)
    noise.add(full, seed=4, index=1, alpha=1.0, out=full)
    base = torch.randn(numel, dtype=torch.float64)
    for at, end in [(0, 1000), (3, 200), (250, 260), (100, 900), (999, 1000)]:
        out = torch.empty(end - at, dtype=torch.float64)
        noise.add(base[at:end], seed=4, index=1, alpha=-0.5, out=out, at=at, numel=numel)
        torch.testing.assert_close(out, base[at:end] - 0.5 * full[at:end], rtol=0, atol=0)


class Head(nn.Module):
    """A small body and an output head much larger than the rest (so the engine treats it as a head)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.body = nn.Linear(7, 7).double()
        self.head = nn.Linear(7, 300).double()
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g, dtype=torch.float64)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


def test_large_output_heads_are_perturbed_without_a_copy():
    model, _ = load_model("tiny-llama")
    engine = ZOEngine(model, noise="table")
    head = engine._pool_limit // 4  # float32 elements
    assert {id(m) for m, _ in engine._heads} == {
        id(m) for m in model.modules() if type(m) is torch.nn.Linear and m.weight.numel() > head}
    assert model.lm_head in [m for m, _ in engine._heads]
    assert all(model.lm_head is not m for m, _ in engine._owners)
    assert [m for m, _ in engine._lookups] == [model.model.embed_tokens]


def test_head_output_equals_the_perturbed_linear():
    """The head's perturbed forward, written a few rows at a time (here 36-row pieces with table chunks
    starting mid-row), equals F.linear at the explicitly perturbed weight and bias, for a combination of
    seeds plus a mean; outside the context the module's own forward is back."""
    model = Head()
    engine = ZOEngine(model, noise="table")
    engine.noise = NoiseTable(size=1 << 12, chunk=1 << 8)
    assert [m for m, _ in engine._heads] == [model.head]
    scales = torch.tensor([0.5, 1.5, 2.0, 0.7], dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    mean = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in engine.params]
    x = torch.randn(5, 3, 7, generator=gen, dtype=torch.float64)
    alpha, terms = 1e-2, [(11, 0.7), (12, -1.3)]
    with engine.perturbed(Direction(terms, scales, mean, scales), alpha):
        with torch.inference_mode():
            got = model(x)  # a ZO forward pass: the head is written a few rows at a time
        graph = model(x)  # with autograd: the head is perturbed through a full copy
    params = {}
    for i, (n, p) in enumerate(engine.blocks):
        direction = sum(c * engine.unit_noise(s, i) for s, c in terms) + mean[i]
        params[n] = p.detach() + alpha * float(scales[i]) * direction
    want = functional_call(model, params, (x,))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(graph, want, rtol=1e-12, atol=1e-12)
    assert graph.requires_grad
    assert "forward" not in model.head.__dict__
    torch.testing.assert_close(model(x), functional_call(model, dict(model.named_parameters()), (x,)))


@pytest.mark.parametrize("bias, dtype", [(False, torch.float32), (True, torch.float32), (True, torch.float64)])
def test_head_output_under_autocast_equals_the_perturbed_linear_under_autocast(bias, dtype):
    """Under torch.autocast (bf16) the head, written a few rows at a time, multiplies in bf16 as F.linear would
    there, bias included, bit for bit (it used to multiply in fp32 whatever the autocast); fp64, which autocast
    leaves alone, stays fp64."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 7), nn.Tanh(), nn.Linear(7, 300, bias=bias)).to(dtype)
    engine = ZOEngine(model, noise="table")
    engine.noise = NoiseTable(size=1 << 12, chunk=1 << 8)
    assert [m for m, _ in engine._heads] == [model[2]]
    x = torch.randn(5, 3, 7, dtype=dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with engine.perturbed(11, 1e-2), torch.inference_mode():
            got = model(x)
        params = {n: p.detach() + 1e-2 * engine.unit_noise(11, i) for i, (n, p) in enumerate(engine.blocks)}
        want = functional_call(model, params, (x,))
    assert got.dtype == want.dtype == (torch.bfloat16 if dtype == torch.float32 else dtype)
    if dtype == torch.float32:
        assert torch.equal(got, want)
    else:  # the plain path: the bias added after the product, as in the fp64 test above
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", TINY)
def test_whole_layers_are_perturbed_at_once_when_they_fit(name):
    """With many layers, each transformer layer is one unit; every block is swapped by at most one unit and
    perturbed by a unit, a lookup or a head; and the perturbed loss matches the explicit reference."""
    model = deep_tiny(name)
    engine = ZOEngine(model, noise="table")
    layers = [m for m in model.modules() if type(m).__name__.endswith(("DecoderLayer", "Block"))]
    assert len(layers) == 24
    units = [m for m, _ in engine._owners]
    assert all(layer in units for layer in layers)
    owned = [i for _, blocks in engine._owners for i in blocks]
    special = [i for _, i in engine._lookups + engine._heads]
    assert sorted(owned) == sorted(set(owned))
    assert set(owned) | set(special) == set(range(len(engine.blocks)))
    x = ids()
    ref = Reference(model, engine, x)
    theta, z = ref.theta(), ref.z(3)
    want = ref.loss(axpy(1e-2, z, theta))
    for watching in (True, False):  # modules inside units are hooked in the first pass only
        assert engine._watch_inner is watching
        with engine.perturbed(3, 1e-2):
            got = engine.loss(ref.closure())
        assert math.isclose(got, want, rel_tol=1e-5)


class Bypass(nn.Module):
    """Twenty small layers; the forward calls the last layer's first linear directly, never that layer."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6)) for _ in range(20))
        self.double()

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = layer(x)
        return self.layers[-1][0](x).square().sum()


def test_a_module_called_without_its_unit_is_still_perturbed():
    torch.manual_seed(0)
    model = Bypass()
    engine = ZOEngine(model, noise="table")
    assert [m for m, _ in engine._owners] == list(model.layers)  # each layer is a unit
    x = torch.randn(3, 6, dtype=torch.float64)
    theta = {n: p.detach().clone() for n, p in engine.blocks}
    z = {n: engine.unit_noise(5, i) for i, (n, _) in enumerate(engine.blocks)}
    want = functional_call(model, axpy(1e-2, z, theta), (x,)).item()
    for _ in range(2):  # the first pass finds the bypass; the inner modules stay hooked
        with engine.perturbed(5, 1e-2):
            got = engine.loss(lambda: model(x))
        assert math.isclose(got, want, rel_tol=1e-12)
    assert engine._watch_inner

