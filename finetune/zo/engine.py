"""The ZO engine: seeded, exactly reversible perturbation of a model's parameter blocks, and the update.

A *block* is one trainable parameter tensor (:func:`pertnn.blocks.trainable_tensors`). A step moves along a
:class:`Direction`, given to every call as an argument: block b moves along
``v_b = s_b * sum_j c_j z_b(seed_j) + k_b * offset_b``, with z_b(seed) the seeded noise (:mod:`finetune.zo.noise`,
regenerated whenever needed, never stored), s_b a per-block noise scale (1 is MeZO; a tuner sets it) and an
optional stored per-block ``offset`` tensor with scales k_b (LDSD's policy mean, a tuner's online mean).
A direction may also bring its own noise kind (low-rank or Rademacher noise, :mod:`finetune.zo.noise`) and an
elementwise multiplier per block (:class:`Multiplier`: a magnitude mask, a Hessian scaling), used by the
baselines in :mod:`finetune.zo.baselines`; without them the engine runs exactly MeZO's operations.

Perturbation works one unit (a transformer layer, typically) at a time, with forward hooks: the perturbed
values of a unit's parameters are written into scratch buffers that are swapped in just before it runs and
swapped out just after, so memory stays at inference level and the parameters come back bit for bit.
Embedding lookups need no copy (their outputs get the noise rows), nor do large output heads (their
perturbed weight is written and used a few rows at a time). The update is in place. docs/engine.md
explains the design.
"""
from __future__ import annotations

import abc
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from finetune.zo import kernels
from finetune.zo.kernels import fusable
from finetune.zo.noise import GaussianNoise, NoiseTable, make_noise
from pertnn.blocks import trainable_tensors

Seeds = Union[int, Sequence[tuple[int, float]]]  # one seed, or a combination of (seed, coefficient) pairs


def as_terms(seed: Seeds) -> list[tuple[int, float]]:
    """A direction's ``(seed, coefficient)`` pairs: an integer seed is ``[(seed, 1.0)]``."""
    if not isinstance(seed, (list, tuple)):
        return [(int(seed), 1.0)]
    terms = [(int(s), float(c)) for s, c in seed]
    if not terms:
        raise ValueError("a combination of seeded noises needs at least one (seed, coefficient) pair")
    return terms


def _per_block(values, n: int, what: str) -> list[float]:
    """``values`` as n floats: None is ones, a number is the same for every block."""
    if values is None:
        return [1.0] * n
    if isinstance(values, (int, float)):
        return [float(values)] * n
    out = values.tolist() if isinstance(values, torch.Tensor) else [float(v) for v in values]
    if len(out) != n:
        raise ValueError(f"{what} has {len(out)} entries for {n} blocks")
    return out


class Multiplier(abc.ABC):
    """An elementwise multiplier ``m_b`` of one block's noise term (see :class:`Direction`), evaluated on
    whatever part of the block is being written: the whole block, a flat segment of an output head, or the
    looked-up rows of an embedding. ``of(theta, take)`` gets the block's *unperturbed* values on that part
    (``theta``) and ``take``, which cuts the same part out of any block-shaped tensor. A ``mask`` multiplier's
    ``of`` returns booleans: the engine then writes the plain perturbation and keeps the unmasked entries'
    original values (``torch.where``), so masked entries are exactly MeZO's and the others are untouched."""

    mask = False
    sliced = True  # whether the engine may write it one table chunk at a time through :meth:`write`

    @abc.abstractmethod
    def of(self, theta: torch.Tensor, take: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The multiplier on the part of the block that ``take`` cuts out (``theta``: its unperturbed values)."""

    def write(self, theta: torch.Tensor, take: Callable[[torch.Tensor], torch.Tensor], out: torch.Tensor) -> None:
        """``out = of(theta, take)`` as values of ``out``'s dtype (a mask: 1 and 0)."""
        out.copy_(self.of(theta, take))

    def values(self, theta: torch.Tensor, take: Callable[[torch.Tensor], torch.Tensor],
               out: torch.Tensor) -> torch.Tensor:
        """The multiplier's values as :meth:`write` gives them: written into ``out``, or a stored tensor's view
        of the same numbers (no copy)."""
        self.write(theta, take, out)
        return out

    def fused_add(self, loops, theta: torch.Tensor, take: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor,
                  alpha: float, src: torch.Tensor, out: torch.Tensor) -> bool:
        """``out = src + alpha * of(theta, take) * z`` in one pass of a fused loop (``loops``: the module that
        :func:`finetune.zo.kernels.load` returns), the numbers of the chunked write bit for bit; False, with nothing
        written, where there is none."""
        return False


@dataclass(frozen=True, eq=False)
class Elementwise(Multiplier):
    """A stored block-shaped multiplier."""

    tensor: torch.Tensor

    def of(self, theta, take):
        return take(self.tensor).to(theta.dtype)

    def values(self, theta, take, out):
        part = take(self.tensor)
        return part if part.dtype == out.dtype and part.is_contiguous() else super().values(theta, take, out)


@dataclass(frozen=True)
class BelowMagnitude(Multiplier):
    """The mask ``1[|theta_b| <= threshold]`` of the block's unperturbed values (Sparse-MeZO): nothing is
    stored, and the mask is the same in the +eps and -eps passes and in the update of one step."""

    threshold: float
    mask = True

    @property
    def sliced(self) -> bool:  # an entry outside the mask is then never 0, so adding 0 * z to it is exact
        return self.threshold >= 0

    def of(self, theta, take):
        return theta.abs() <= self.threshold

    def write(self, theta, take, out):
        torch.le(torch.abs(theta, out=out), self.threshold, out=out)  # no bool tensor: bool kernels are slow

    def fused_add(self, loops, theta, take, z, alpha, src, out):
        if src.data_ptr() != theta.data_ptr() or not fusable(theta, z, out):
            return False
        loops.below_magnitude_add(theta, z, out, alpha, self.threshold)
        return True


@dataclass(frozen=True)
class Direction:
    """``v_b = scales_b * m_b * sum_j c_j z_b(seed_j) + offset_scales_b * offset_b`` for every block b.

    ``seeds`` is one seed or ``(seed, coefficient)`` pairs; ``scales`` (one per block, or None for ones) is
    the noise scale; ``offset`` (one tensor per block) is an optional stored term with ``offset_scales`` (one per
    block, one number for all, or None for ones). ``noise`` (None: the engine's) is the noise z, e.g. a
    :class:`~finetune.zo.noise.LowRankNoise`; ``multipliers`` (None, or one :class:`Multiplier` or None per
    block) multiplies the noise term elementwise (``m_b = 1`` where None)."""

    seeds: Seeds
    scales: Sequence[float] | torch.Tensor | None = None
    offset: Sequence[torch.Tensor] | None = None
    offset_scales: Sequence[float] | torch.Tensor | float | None = None
    noise: object | None = None
    multipliers: Sequence[Multiplier | None] | None = None

    def times(self, g: float) -> "Direction":
        """``g * v``: the same direction with every seed coefficient and offset scale multiplied by ``g``."""
        offset_scales = self.offset_scales
        if self.offset is not None:
            offset_scales = [g * k for k in _per_block(offset_scales, len(self.offset), "offset_scales")]
        return Direction([(s, g * c) for s, c in as_terms(self.seeds)], self.scales, self.offset, offset_scales,
                         self.noise, self.multipliers)


class _Resolved(NamedTuple):
    terms: list[tuple[int, float]]
    scales: list[float]
    offset: Sequence[torch.Tensor] | None
    offset_scales: list[float]
    noise: object = None
    multipliers: Sequence[Multiplier | None] | None = None

    def multiplier(self, index: int) -> Multiplier | None:
        return None if self.multipliers is None else self.multipliers[index]


class SPSA(NamedTuple):
    """A two-point estimate: ``g = (plus - minus) / (2 eps)`` and the two losses."""

    g: float
    plus: float
    minus: float


class ZOEngine:
    """Seeded perturbations and updates along :class:`Direction` s over the parameter blocks of one model.

    ``forwards`` counts the loss evaluations made through :meth:`loss`, so that methods can be compared
    at an equal number of forward passes. ``fused`` lets the baselines' writes (a multiplied direction's table
    noise, LOZO's low-rank noise) use the fused CPU loops of :mod:`finetune.zo.kernels` where they load (the same
    numbers; False keeps the eager ops).
    """

    def __init__(self, model: nn.Module, noise: str = "auto", fused: bool = True):
        self.model = model
        self.fused = fused
        self.blocks = trainable_tensors(model)
        if not self.blocks:
            raise ValueError("the model has no trainable parameters")
        device = self.blocks[0][1].device
        self.noise = make_noise(noise, device)
        self.forwards = 0
        index = {id(p): i for i, (_, p) in enumerate(self.blocks)}
        # Scratch buffers for perturbed weights are pooled and reused across forward passes, up to 1/16
        # of the model's size each; larger blocks (embeddings, output heads) are handled below.
        total = sum(p.numel() * p.element_size() for _, p in self.blocks)
        self._pool_limit = total // 16
        self._pool: dict[tuple, list[torch.Tensor]] = {}
        # How parameters are perturbed: a plain embedding lookup through the rows it returns; a linear layer
        # too large for the pool (an output head), with table noise, by a forward that perturbs a few rows at
        # a time (_head); everything else by swapping in perturbed copies, one unit at a time (_units).
        self._lookups: list[tuple[nn.Embedding, int]] = []
        self._heads: list[tuple[nn.Linear, int]] = []
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if id(weight) not in index:
                continue
            if type(module) is nn.Embedding and module.max_norm is None:
                self._lookups.append((module, index[id(weight)]))
            elif (type(module) is nn.Linear and isinstance(self.noise, NoiseTable) and "forward" not in module.__dict__
                    and weight.numel() * weight.element_size() > self._pool_limit):
                self._heads.append((module, index[id(weight)]))
        self._owners, self._inner = self._units(model, index)
        self._watch_inner = True  # hook the modules inside units until a pass shows the units' hooks suffice

    def _units(self, model: nn.Module, index: dict[int, int]) -> tuple[list, list]:
        """The modules whose forward hooks swap in perturbed copies, each with the blocks it swaps: the units,
        and the modules inside units with their own parameters.

        A unit is the outermost module (a transformer layer, typically) that runs a forward of its own, whose
        parameters are all copied blocks used by no other module, and whose blocks fit in the buffer pool's
        limit: its copies are written back to back just before it runs, which is measurably faster than one
        module at a time. Any other module swaps its own direct parameters. The modules inside a unit get the
        same hooks during the first perturbed forward pass, where they find their blocks already swapped when
        their unit runs; if one of them runs without its unit (a model calling it directly), they are kept
        for good, otherwise dropped (they cost ~3% of a small forward pass). A tied weight (several owners)
        is swapped by whichever owner runs first (see :meth:`perturbed`)."""
        refs: dict[int, int] = {}
        for _, p in model.named_parameters(remove_duplicate=False):
            refs[id(p)] = refs.get(id(p), 0) + 1
        handled = {id(m): i for m, i in self._lookups + self._heads}  # block perturbed through the output
        units: list[tuple[nn.Module, list[int]]] = []
        inner: list[tuple[nn.Module, list[int]]] = []

        def own(module: nn.Module) -> list[int]:
            return [index[id(p)] for p in module.parameters(recurse=False)
                    if id(p) in index and index[id(p)] != handled.get(id(module))]

        def visit(module: nn.Module, root: bool) -> None:
            params = list(module.parameters())
            blocks = [index[id(p)] for p in params if id(p) in index]
            if (not root and blocks and type(module).forward is not nn.Module.forward
                    and all(refs[id(p)] == 1 for p in params) and not any(id(m) in handled for m in module.modules())
                    and sum(self.blocks[i][1].numel() * self.blocks[i][1].element_size() for i in blocks)
                    <= self._pool_limit):
                units.append((module, blocks))
                for m in list(module.modules())[1:]:  # the unit itself comes first
                    direct = own(m)
                    if direct:
                        inner.append((m, direct))
                return
            direct = own(module)
            if direct:
                units.append((module, direct))
            for child in module.children():
                visit(child, False)

        visit(model, True)
        return units, inner

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for _, p in self.blocks]

    def resolve(self, direction: Direction | Seeds) -> _Resolved:
        """A direction (or a bare seed / combination, meaning unit scales) as per-block lists."""
        d = direction if isinstance(direction, Direction) else Direction(direction)
        n = len(self.blocks)
        if d.multipliers is not None and len(d.multipliers) != n:
            raise ValueError(f"multipliers has {len(d.multipliers)} entries for {n} blocks")
        return _Resolved(as_terms(d.seeds), _per_block(d.scales, n, "scales"), d.offset,
                         _per_block(d.offset_scales, n, "offset_scales"),
                         self.noise if d.noise is None else d.noise, d.multipliers)

    def add_noise_(self, tensor: torch.Tensor, seed: int, index: int, alpha: float, scale: float = 1.0) -> None:
        """``tensor += alpha * scale * z_index(seed)`` (the tensor has block ``index``'s shape)."""
        if scale != 0.0 and alpha != 0.0:
            self.noise.add(tensor, seed, index, alpha * scale, out=tensor)

    def noise_like(self, seed: int, index: int, scale: float = 1.0) -> torch.Tensor:
        """Materialise ``scale * z_index(seed)`` (for tests and references)."""
        p = self.blocks[index][1]
        out = torch.zeros_like(p, memory_format=torch.contiguous_format)
        self.add_noise_(out, seed, index, 1.0, scale)
        return out

    @torch.no_grad()
    def unit_noise(self, seed: int, index: int, like: torch.Tensor | None = None) -> torch.Tensor:
        """Materialise the unscaled noise ``z_index(seed)`` (shaped and typed like ``like`` or the block)."""
        out = torch.zeros_like(self.blocks[index][1] if like is None else like, memory_format=torch.contiguous_format)
        self.noise.add(out, seed, index, 1.0, out=out)
        return out

    @torch.no_grad()
    def noise_dots(self, tensors: list[torch.Tensor], seed: int) -> torch.Tensor:
        """``[<tensors[b], z_b(seed)>]`` for every block b, unscaled, as a float64 CPU tensor [B]
        (``tensors`` in block order, e.g. the gradients; used by the meta-gradient)."""
        return torch.stack([self.noise.dot(t, seed, i).double().cpu() for i, t in enumerate(tensors)])

    @torch.no_grad()
    def add_direction_(self, tensor: torch.Tensor, direction: Direction | Seeds | _Resolved, index: int,
                       alpha: float) -> None:
        """``tensor += alpha * v_index`` for block ``index`` of ``direction`` (a momentum buffer, an estimate)."""
        d = direction if isinstance(direction, _Resolved) else self.resolve(direction)
        scale, k = d.scales[index], d.offset_scales[index]
        mult = d.multiplier(index)
        if mult is None:
            for s, c in d.terms:
                if scale != 0.0 and alpha * c != 0.0:
                    d.noise.add(tensor, s, index, alpha * c * scale, out=tensor)
        elif alpha * scale != 0.0:
            self._add_multiplied_(tensor, d, index, alpha * scale, mult)
        if d.offset is not None and alpha * k != 0.0:
            tensor.add_(d.offset[index], alpha=alpha * k)

    def _add_multiplied_(self, tensor: torch.Tensor, d: _Resolved, index: int, a: float, mult: Multiplier) -> None:
        """``tensor += a * m_index * sum_j c_j z_index(seed_j)``, the multiplier evaluated on the block's current
        (unperturbed) values before each part is written. Table noise is written one table chunk at a time, so
        the temporaries stay small (no block-sized copy of an embedding) and in cache."""
        theta = self.blocks[index][1].detach()
        if self._write_sliced(tensor, theta, d, index, a, mult, tensor):
            return
        numel = tensor.numel()
        whole = isinstance(d.noise, GaussianNoise) or not tensor.is_contiguous() or not theta.is_contiguous()
        step = numel if whole else getattr(self.noise, "chunk", numel)
        flat, flat_theta = tensor.view(-1) if not whole else tensor, theta.reshape(-1) if not whole else theta
        for at in range(0, numel, step):
            seg = flat if whole else flat[at: at + step]
            part = flat_theta if whole else flat_theta[at: at + step]
            m = mult.of(part, (lambda t: t) if whole else (lambda t, at=at, n=seg.numel(): t.reshape(-1)[at: at + n]))
            if mult.mask:
                moved = torch.empty_like(seg)
                for j, (s, c) in enumerate(d.terms):
                    d.noise.add(moved if j else seg, s, index, a * c, out=moved, at=at, numel=numel)
                torch.where(m, moved, seg, out=seg)
            else:
                seg.addcmul_(self._noise_sum(d, index, seg, at), m, value=a)

    @torch.no_grad()
    def direction_like(self, direction: Direction | Seeds | _Resolved, index: int) -> torch.Tensor:
        """Materialise block ``index`` of ``direction`` (for optimizers that keep moments)."""
        out = torch.zeros_like(self.blocks[index][1])
        self.add_direction_(out, direction, index, 1.0)
        return out

    @torch.no_grad()
    def update_(self, direction: Direction | Seeds, alpha: float) -> None:
        """Move every block along ``direction``, in place: ``theta_b += alpha * v_b`` (one noise pass per
        seed of the combination, nothing materialised)."""
        d = self.resolve(direction)
        for i, (_, p) in enumerate(self.blocks):
            self.add_direction_(p.data, d, i, alpha)

    def _scratch(self, like: torch.Tensor) -> torch.Tensor:
        free = self._pool.get((like.shape, like.dtype, like.device))
        return free.pop() if free else torch.empty_like(like, memory_format=torch.contiguous_format)

    def _recycle(self, buf: torch.Tensor) -> None:
        if buf.numel() * buf.element_size() <= self._pool_limit:
            self._pool.setdefault((buf.shape, buf.dtype, buf.device), []).append(buf)

    def _write(self, src: torch.Tensor, d: _Resolved, index: int, alpha: float, out: torch.Tensor,
               at: int = 0) -> None:
        """``out = src + alpha * v_index`` for the resolved direction ``d``, adding one term at a time. With
        ``at``, ``src`` and ``out`` are flat segments of block ``index`` starting at element ``at``."""
        numel = self.blocks[index][1].numel()
        a, k = alpha * d.scales[index], alpha * d.offset_scales[index]
        mult = d.multiplier(index)
        if a != 0.0 and mult is not None and self._write_sliced(src, src, d, index, a, mult, out, at):
            src = out
        elif a != 0.0 and (mult is None or mult.mask):
            original = src
            keep = None if mult is None else mult.of(src, None)  # of the unperturbed values, before any write
            for s, c in d.terms:
                d.noise.add(src, s, index, a * c, out=out, at=at, numel=numel)
                src = out
            if keep is not None:
                torch.where(keep, out, original, out=out)
        elif a != 0.0:  # src holds the unperturbed values here: the multiplier is evaluated on them
            n = src.numel()
            m = mult.of(src, lambda t: t.reshape(-1)[at: at + n].view(src.shape))
            torch.addcmul(src, self._noise_sum(d, index, src, at), m, value=a, out=out)
            src = out
        if d.offset is not None and k != 0.0:
            m = d.offset[index].reshape(-1)[at: at + src.numel()].view(src.shape)
            torch.add(src, m, alpha=k, out=out)
            src = out
        if src is not out:
            out.copy_(src)

    def fused_kernels(self):
        """The fused CPU loops (:func:`finetune.zo.kernels.load`) if :attr:`fused` and they load, else None."""
        return kernels.load() if self.fused else None

    def prepare_fused_kernels(self, table: bool = True) -> None:
        """Load the fused loops now (compiling them the first time, ~30 s) if this engine's writes can use them:
        a float32 CPU block, and table noise if ``table``. Optimizers that use them call this when built, so the
        compile happens before a run starts, not inside its first forward pass."""
        if self.fused and (hasattr(self.noise, "slices") or not table) and any(fusable(p) for _, p in self.blocks):
            self.fused_kernels()

    def _write_sliced(self, src: torch.Tensor, theta: torch.Tensor, d: _Resolved, index: int, a: float,
                      mult: Multiplier, out: torch.Tensor, at: int = 0) -> bool:
        """``out = src + a * m_index * sum_j c_j z_index(seed_j)`` with table noise, one table chunk at a time,
        so the multiplier and the masked noise are temporaries of one chunk, in cache. ``src`` and ``theta``
        (the block's unperturbed values, on which the multiplier is evaluated) are the block's flat segment
        from element ``at`` on; ``out`` may be ``src``. The same numbers as the general path, bit for bit: a
        mask ``m`` (1 or 0) enters as the noise ``m * z`` added with the plain perturbation's ``add``, only
        when ``src`` is ``theta`` (``x + 0`` is ``x`` for the entries outside a magnitude mask, which are never
        0); any other multiplier only for one seed with coefficient 1, as ``addcmul(src, z, m)``, the general
        path's ``addcmul`` of the materialised ``z``. Returns False, with nothing written, where it does not
        apply (another noise kind, a multiplier not :attr:`~Multiplier.sliced`, non-contiguous tensors)."""
        slices = getattr(d.noise, "slices", None)
        if (slices is None or not mult.sliced
                or not (src.is_contiguous() and out.is_contiguous() and theta.is_contiguous())
                or not (src.data_ptr() == theta.data_ptr() if mult.mask
                        else len(d.terms) == 1 and d.terms[0][1] == 1.0)):
            return False
        numel = self.blocks[index][1].numel()
        flat_src, flat_out, flat_theta = src.view(-1), out.view(-1), theta.view(-1)
        n = flat_src.numel()
        table = d.noise.table(src.device, src.dtype)
        pieces = [slices(s, index, n, at, numel) for s, _ in d.terms]  # the same (lo, hi) for every seed
        longest = min(n, d.noise.chunk)
        m_buf = torch.empty(longest, dtype=src.dtype, device=src.device)
        z_buf = torch.empty_like(m_buf) if mult.mask else None
        fused = self.fused_kernels() if len(d.terms) == 1 else None
        for k, (lo, hi, _, _) in enumerate(pieces[0]):
            part, dst, m = flat_src[lo:hi], flat_out[lo:hi], m_buf[: hi - lo]
            take = (lambda t, lo=at + lo, hi=at + hi: t.reshape(-1)[lo:hi])
            if fused is not None:  # one pass instead of the multiplier's write, the multiply and the add
                _, _, sign, off = pieces[0][k]
                z = table[off: off + hi - lo]
                if mult.fused_add(fused, flat_theta[lo:hi], take, z, sign * (a * d.terms[0][1]), part, dst):
                    continue
            m = mult.values(flat_theta[lo:hi], take, m)  # before this piece is written
            if mult.mask:
                for (_, c), p in zip(d.terms, pieces):
                    _, _, sign, off = p[k]
                    z = torch.mul(table[off: off + hi - lo], m, out=z_buf[: hi - lo])
                    torch.add(part, z, alpha=sign * (a * c), out=dst)
                    part = dst
            else:
                _, _, sign, off = pieces[0][k]
                torch.addcmul(part, table[off: off + hi - lo], m, value=sign * a, out=dst)
        return True

    def _noise_sum(self, d: _Resolved, index: int, like: torch.Tensor, at: int = 0) -> torch.Tensor:
        """``sum_j c_j z_index(seed_j)`` materialised on ``like``'s part of block ``index`` (from ``at``)."""
        acc = torch.zeros_like(like, memory_format=torch.contiguous_format)
        numel = self.blocks[index][1].numel()
        for s, c in d.terms:
            d.noise.add(acc, s, index, c, out=acc, at=at, numel=numel)
        return acc

    def _moves(self, d: _Resolved, index: int, alpha: float) -> bool:
        """Whether block ``index`` moves at all along ``alpha * d``."""
        return alpha * d.scales[index] != 0.0 or (d.offset is not None and alpha * d.offset_scales[index] != 0.0)

    def _head(self, x: torch.Tensor, module: nn.Linear, index: int, d: _Resolved, alpha: float) -> torch.Tensor:
        """``module``'s output at the perturbed weight, without a weight-sized copy: the perturbed weight is
        written a few rows at a time (about one table chunk, so the rows stay in cache) into a small buffer
        and multiplied at once. This costs about what the unperturbed layer costs."""
        weight = module.weight.detach()
        out_features, width = weight.shape
        if torch.is_grad_enabled():  # autograd through a perturbed forward (ZO never does this): a full copy
            with torch.no_grad():
                perturbed = torch.empty_like(weight)
                self._write(weight, d, index, alpha, perturbed)
            return F.linear(x, perturbed, module.bias)
        rows = max(1, self.noise.chunk // width)
        flat_x = x.reshape(-1, width)
        kind = x.device.type  # under torch.autocast, multiply in its dtype as F.linear would (it leaves fp64 alone)
        cast_by_autocast = torch.is_autocast_enabled(kind) and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
        low = torch.get_autocast_dtype(kind) if cast_by_autocast else None
        if low is not None:
            flat_x = flat_x.to(low)
        y = flat_x.new_empty(flat_x.shape[0], out_features)
        buf = weight.new_empty(rows * width)
        cast = flat_x.new_empty(rows * width) if low is not None else None
        flat_w = weight.reshape(-1)
        for r0 in range(0, out_features, rows):
            r1 = min(r0 + rows, out_features)
            seg = buf[: (r1 - r0) * width]
            self._write(flat_w[r0 * width: r1 * width], d, index, alpha, seg, at=r0 * width)
            if cast is None:
                torch.matmul(flat_x, seg.view(r1 - r0, width).T, out=y[:, r0:r1])
            else:  # F.linear adds a bias before rounding to the low dtype: so does this
                seg = cast[: (r1 - r0) * width].copy_(seg).view(r1 - r0, width)
                y[:, r0:r1] = F.linear(flat_x, seg, None if module.bias is None else module.bias[r0:r1].to(low))
        if module.bias is not None and cast is None:
            y += module.bias
        return y.view(*x.shape[:-1], out_features)

    @contextmanager
    def perturbed(self, direction: Direction | Seeds, alpha: float) -> Iterator[None]:
        """Inside the context, each module computes with ``theta_b + alpha * v_b`` (``v`` = ``direction``).

        Just before a unit (see :meth:`_units`) runs, the perturbed values of its parameters are written
        into scratch buffers that are swapped in as the parameters' data; just after, the original tensors
        are swapped back. The parameters' storage is never written, so they come back bit for bit (also
        when the forward pass raises), and the extra memory is one unit's parameters. A plain
        ``nn.Embedding`` lookup instead adds the noise rows of the looked-up tokens to its output, and a
        linear layer too large for the buffer pool (an output head), with table noise, computes its output
        from its perturbed weight written a few rows at a time (:meth:`_head`; its ``forward`` is shadowed
        inside the context). Both equal the module's output at the perturbed weight.
        """
        swapped: dict[int, tuple[torch.Tensor, int]] = {}  # block -> (original data, nesting depth)
        d = self.resolve(direction)

        watch = self._inner if self._watch_inner else []
        seen = {"ran": False, "bypass": False}  # a unit or module ran; a module ran outside its unit

        def pre(blocks: list[int], inner: bool = False) -> Callable:
            def hook(module, args):
                seen["ran"] = True
                with torch.inference_mode(False), torch.no_grad():
                    for i in blocks:
                        if i in swapped:  # swapped by an enclosing unit, or a tied weight by another owner
                            swapped[i] = (swapped[i][0], swapped[i][1] + 1)
                            continue
                        if not self._moves(d, i, alpha):
                            continue
                        seen["bypass"] |= inner
                        p = self.blocks[i][1]
                        original = p.data
                        buf = self._scratch(original)
                        self._write(original, d, i, alpha, buf)
                        swapped[i] = (original, 1)
                        p.data = buf
            return hook

        def restore(i: int) -> None:
            p = self.blocks[i][1]
            buf, p.data = p.data, swapped.pop(i)[0]
            self._recycle(buf)

        def post(blocks: list[int]) -> Callable:
            def hook(module, args, output):
                for i in blocks:
                    if i not in swapped:  # not moving: never swapped
                        continue
                    original, depth = swapped[i]
                    if depth > 1:
                        swapped[i] = (original, depth - 1)
                    else:
                        restore(i)
            return hook

        def lookup(i: int) -> Callable:
            def hook(module, args, kwargs, output):
                if i in swapped or not self._moves(d, i, alpha):  # perturbed by an enclosing module, or not at all
                    return output
                ids = args[0] if args else kwargs["input"]
                a, k = alpha * d.scales[i], alpha * d.offset_scales[i]
                mult = d.multiplier(i)
                if a != 0.0 and mult is None:
                    for s, c in d.terms:
                        output = output.add(d.noise.rows(module.weight, s, i, ids), alpha=a * c)
                elif a != 0.0:
                    rows = sum(c * d.noise.rows(module.weight, s, i, ids) for s, c in d.terms)
                    m = mult.of(F.embedding(ids, module.weight), lambda t: F.embedding(ids, t))
                    output = output.addcmul(rows, m.to(rows.dtype), value=a)
                if d.offset is not None and k != 0.0:
                    output = output.add(F.embedding(ids, d.offset[i]), alpha=k)
                return output
            return hook

        def head(module: nn.Linear, i: int) -> Callable:
            def forward(x: torch.Tensor) -> torch.Tensor:
                if i in swapped or not self._moves(d, i, alpha):  # perturbed by an enclosing module, or not at all
                    return F.linear(x, module.weight, module.bias)
                return self._head(x, module, i, d, alpha)
            return forward

        handles = []
        try:
            for module, blocks in self._owners:
                handles.append(module.register_forward_pre_hook(pre(blocks)))
                handles.append(module.register_forward_hook(post(blocks)))
            for module, blocks in watch:
                handles.append(module.register_forward_pre_hook(pre(blocks, inner=True)))
                handles.append(module.register_forward_hook(post(blocks)))
            for module, i in self._lookups:
                handles.append(module.register_forward_hook(lookup(i), with_kwargs=True))
            for module, i in self._heads:
                module.forward = head(module, i)  # an instance attribute shadows nn.Linear.forward
            yield
            if watch and seen["ran"] and not seen["bypass"]:
                self._watch_inner = False  # every module ran inside its unit: the units' hooks suffice
        finally:
            for h in handles:
                h.remove()
            for module, _ in self._heads:
                module.__dict__.pop("forward", None)
            for i in list(swapped):
                restore(i)

    def loss(self, closure: Callable[[], torch.Tensor]) -> float:
        """One counted forward pass: evaluate ``closure()`` without autograd and return a float."""
        with torch.inference_mode():
            value = float(closure())
        self.forwards += 1
        return value

    def spsa(self, closure: Callable[[], torch.Tensor], direction: Direction | Seeds, eps: float) -> SPSA:
        """Two-point SPSA along ``direction`` v: ``g = (L(theta + eps v) - L(theta - eps v)) / (2 eps)``
        (MeZO's projected gradient), with both losses."""
        with self.perturbed(direction, eps):
            plus = self.loss(closure)
        with self.perturbed(direction, -eps):
            minus = self.loss(closure)
        return SPSA((plus - minus) / (2 * eps), plus, minus)
