"""Independent references shared by the tests: a model's loss at explicit parameters, materialised noise,
and the step seeds an optimizer draws."""
import random

import torch
from torch import nn
from torch.func import functional_call

from finetune.data.tasks import Example

WORDS = ["apple", "stone", "river", "cloud", "green", "seven", "table", "light"]


def synthetic_examples(n=64, seed=0):
    """Multiple choice where 80% of the labels are 'yes': a tiny random model can learn the bias."""
    rng = random.Random(seed)
    return [Example(" ".join(rng.choice(WORDS) for _ in range(4)) + ". Answer:", (" yes", " no"),
                    int(rng.random() < 0.2)) for _ in range(n)]


class Quadratic(nn.Module):
    """L(w) = 1/2 sum_i a_i (w_i - c_i)^2 over a matrix and a vector block (float64); gradient a * (w - c)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(6, 5, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(7, generator=g, dtype=torch.float64))
        self.register_buffer("a", torch.rand(6 * 5 + 7, generator=g, dtype=torch.float64) + 0.5)
        self.register_buffer("c", torch.randn(6 * 5 + 7, generator=g, dtype=torch.float64))

    def flat(self):
        return torch.cat([self.w.detach().flatten(), self.b.detach()])

    def value(self, w):
        return 0.5 * (self.a * (w - self.c) ** 2).sum().item()

    def forward(self):
        return 0.5 * (self.a * (torch.cat([self.w.flatten(), self.b]) - self.c) ** 2).sum()

    def grad(self):
        return self.a * (self.flat() - self.c)


def seed_stream(seed):
    """The step seeds a ZO optimizer built with ``seed`` draws, generated independently."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield int(torch.randint(0, 2**62, (1,), generator=gen))


def deep_tiny(name, layers=24, seed=0):
    """A tiny model of family ``name`` with ``layers`` layers, so that each layer is a small part of the model
    (the engine then perturbs whole layers at a time)."""
    from finetune.data.models import load_model

    small = load_model(name)[0]
    settings = small.config.to_dict()
    settings["n_layer" if name == "tiny-gpt2" else "num_hidden_layers"] = layers
    settings.pop("layer_types", None)  # per-layer lists are rebuilt for the new depth
    config = type(small.config)(**settings)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return type(small)(config).eval()
    finally:
        torch.random.set_rng_state(state)


def ids(seed=1, vocab=250):
    return torch.randint(0, vocab, (4, 12), generator=torch.Generator().manual_seed(seed))


class Reference:
    """A model's loss at explicitly given parameters (``functional_call``), and its noise materialised."""

    def __init__(self, model, engine, x):
        self.model, self.engine, self.x = model, engine, x
        self.names = [n for n, _ in engine.blocks]

    def theta(self):
        return {n: p.detach().clone() for n, p in self.engine.blocks}

    def z(self, seed):
        return {n: self.engine.unit_noise(seed, i) for i, n in enumerate(self.names)}

    def loss(self, params):
        with torch.no_grad():
            return functional_call(self.model, params, (), {"input_ids": self.x, "labels": self.x}).loss.item()

    def closure(self):
        return lambda: self.model(input_ids=self.x, labels=self.x).loss


def axpy(a, x, y):
    """y + a * x over dicts of tensors."""
    return {n: y[n] + a * x[n] for n in y}


def combine(terms):
    """sum_j c_j * d_j over (coefficient, dict) pairs."""
    out = None
    for c, d in terms:
        out = {n: c * t for n, t in d.items()} if out is None else axpy(c, d, out)
    return out


def central_difference(f, param, idx, h=1e-6) -> float:
    """(f() at param[idx] + h − f() at param[idx] − h) / 2h, leaving ``param`` as it was."""
    with torch.no_grad():
        param[idx] += h
    up = f()
    with torch.no_grad():
        param[idx] -= 2 * h
    down = f()
    with torch.no_grad():
        param[idx] += h
    return (up - down) / (2 * h)


def assert_resumes_identically(model, tuner, scorer, batches):
    """A ``TunedZO`` run stepped over ``batches[:-1]``, saved, and reloaded into a fresh optimizer (another
    seed, so the state must carry the seed stream) takes the same last step on ``batches[-1]`` as the
    uninterrupted run, bit for bit."""
    import copy

    from finetune.zo.optim import TunedZO

    a = copy.deepcopy(model)
    opt = TunedZO(a, tuner, lr=1e-2, eps=1e-3, seed=2)
    for batch in batches[:-1]:
        opt.step(lambda: scorer.loss(a, batch))
    state = copy.deepcopy(opt.state_dict())
    b = copy.deepcopy(a)
    opt.step(lambda: scorer.loss(a, batches[-1]))
    opt2 = TunedZO(b, tuner, lr=1e-2, eps=1e-3, seed=123)
    opt2.load_state_dict(state)
    opt2.step(lambda: scorer.loss(b, batches[-1]))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def kill_at_call(monkeypatch, n):
    """Make the n-th training loss evaluation raise KeyboardInterrupt (a kill); return the real loss."""
    from finetune.data.scoring import TaskScorer

    real_loss, calls = TaskScorer.loss, {"n": 0}

    def dying_loss(self, model, examples):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real_loss(self, model, examples)

    monkeypatch.setattr(TaskScorer, "loss", dying_loss)
    return real_loss


def scale_loss(monkeypatch, factor_from):
    """Make the n-th training loss evaluation (from 1, counted afresh at each call of this function) return the real
    loss times ``factor_from(n)``: a loss that runs away, or climbs back late, with the weights untouched."""
    from finetune.data.scoring import TaskScorer

    real_loss = getattr(TaskScorer.loss, "real_loss", TaskScorer.loss)  # the unpatched one, when patched before
    calls = {"n": 0}

    def loss(self, model, examples):
        calls["n"] += 1
        return real_loss(self, model, examples) * factor_from(calls["n"])

    loss.real_loss = real_loss
    monkeypatch.setattr(TaskScorer, "loss", loss)


def kill_meta_at(monkeypatch, step):
    """Make meta-training raise KeyboardInterrupt when it would take meta step ``step + 1``; return the real
    ``MetaTrainer.advance``."""
    from meta.train import MetaTrainer

    advance = MetaTrainer.advance

    def killed(self):
        if self.step == step:
            raise KeyboardInterrupt
        return advance(self)

    monkeypatch.setattr(MetaTrainer, "advance", killed)
    return advance


def bad(capsys, argv):
    """Run the CLI on a user mistake: exit code 2 and a one-line error; the error text."""
    import cli

    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


class FakeGroup:
    """What :func:`finetune.trainer.check_parallel` reads of a data-parallel context, without a process group: its
    mode and, in batch mode, the shards of a batch (``DataParallel.bounds``' contiguous split)."""

    def __init__(self, mode: str = "batch", world: int = 2):
        self.mode, self.world = mode, world

    def bounds(self, n: int) -> list[tuple[int, int]]:
        cuts = [n * r // self.world for r in range(self.world + 1)]
        return list(zip(cuts, cuts[1:]))
