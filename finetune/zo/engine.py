"""The ZO engine: seeded, exactly reversible perturbation of a model's parameter blocks, and the update.

A *block* is one trainable parameter tensor (tied weights count once). A step's perturbation direction
z = (z_1, ..., z_B) is never stored: block b's noise z_b is a pure function of ``(seed, b)`` and is
regenerated whenever it is needed. Each block carries a scale s_b (all ones by default, which is MeZO);
the perturbation and the update both use s_b * z_b, which is where a learned tuner plugs in.

A direction may also be a *combination* of seeded noises, ``v_b = sum_j c_j z_b(seed_j)``, given as a
list of ``(seed, coefficient)`` pairs, plus optionally a stored per-block tensor ``mean_b`` (LDSD's
policy mean): :meth:`ZOEngine.perturbed`, :meth:`ZOEngine.spsa` and :meth:`ZOEngine.update_` accept
both. The combination is never materialised: each block's noises are added one after the other into
the scratch buffer (or the parameter, for the update). A plain integer seed is the combination
``[(seed, 1.0)]`` and runs exactly the operations it always did.

Perturbation works one unit (a transformer layer, typically) at a time, with forward hooks: just before
a unit runs, the perturbed values of its parameters are written into scratch buffers that are swapped
in; just after, the original tensors are swapped back. Only one unit's worth of perturbed weights exists
at a time, so memory stays at inference level, and the parameters come back bit for bit (MeZO's in-place
``theta + eps*z - 2*eps*z + eps*z`` does not, in floating point). Embedding lookups need no copy (their
outputs are corrected by the noise rows), nor do large output heads (their perturbed weight is written
and used a few rows at a time). The update is in place.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, block) pairs over generator seeds


Seeds = Union[int, Sequence[tuple[int, float]]]  # one seed, or a combination of (seed, coefficient) pairs


def as_terms(seed: Seeds) -> list[tuple[int, float]]:
    """A direction's ``(seed, coefficient)`` pairs: an integer seed is ``[(seed, 1.0)]``."""
    if not isinstance(seed, (list, tuple)):
        return [(int(seed), 1.0)]
    terms = [(int(s), float(c)) for s, c in seed]
    if not terms:
        raise ValueError("a combination of seeded noises needs at least one (seed, coefficient) pair")
    return terms


def _mean_coeffs(coeffs, n: int) -> list[float]:
    """The per-block multipliers of a stored mean term: ``coeffs`` as floats, or ones."""
    if coeffs is None:
        return [1.0] * n
    out = [float(c) for c in coeffs]
    if len(out) != n:
        raise ValueError(f"mean_coeffs has {len(out)} entries for {n} blocks")
    return out


def param_blocks(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The trainable parameter tensors of ``model`` in a fixed order, tied weights once."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def _block_seed(seed: int, index: int) -> int:
    return (seed * SEED_MIX + index * 0x632BE59BD9B4E019 + 1) % (2**63 - 1)


class GaussianNoise:
    """Exact i.i.d. N(0, 1) noise per block from a per-(seed, block) torch generator (MeZO's noise).

    Fast on GPUs; on CPUs drawing normals costs about as much as a forward pass of the model,
    which is why :class:`NoiseTable` exists.
    """

    name = "gaussian"

    def add(self, tensor: torch.Tensor, seed: int, index: int, alpha: float, out: torch.Tensor,
            at: int = 0, numel: int | None = None) -> None:
        """``out = tensor + alpha * z_index(seed)`` (``out`` may be ``tensor`` itself). With ``numel``, z is the
        flat noise of a block of ``numel`` elements and ``tensor`` its segment starting at ``at``."""
        gen = torch.Generator(device=tensor.device).manual_seed(_block_seed(seed, index))
        if numel is None or (at == 0 and numel == tensor.numel()):
            z = torch.randn(tensor.shape, generator=gen, device=tensor.device, dtype=tensor.dtype)
        else:  # a segment: draw the whole block's noise (this class is for accelerators) and slice it
            z = torch.randn(numel, generator=gen, device=tensor.device, dtype=tensor.dtype)
            z = z[at: at + tensor.numel()].view(tensor.shape)
        torch.add(tensor, z, alpha=alpha, out=out)

    def dot(self, tensor: torch.Tensor, seed: int, index: int) -> torch.Tensor:
        """``<tensor, z_index(seed)>`` as a 0-d tensor (the noise is drawn in full)."""
        z = torch.zeros_like(tensor)
        self.add(z, seed, index, 1.0, out=z)
        return torch.dot(tensor.reshape(-1), z.reshape(-1))

    def rows(self, like: torch.Tensor, seed: int, index: int, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of the 2-D noise ``z_index(seed)`` shaped like ``like`` (drawn in full)."""
        z = torch.zeros_like(like)
        self.add(z, seed, index, 1.0, out=z)
        return z[ids]


class NoiseTable:
    """Gaussian noise read from one shared table (the "shared noise table" of Salimans et al., 2017).

    A table T of ``size`` standard normals is drawn once. Block b's noise at a seed is its flattened
    tensor cut into chunks of ``chunk`` elements, chunk k being ``sign_k * T[offset_k : offset_k + len_k]``
    with offsets and signs drawn from ``(seed, b)``. Inside a chunk the entries are distinct table
    entries; across chunks and blocks the random signs make every cross term vanish in expectation,
    so E[z z^T] = I as for fresh Gaussians. Adding noise is a plain add of a table slice, about ten
    times cheaper than drawing normals on a CPU. The table costs ``4 * size`` bytes (16 MiB by default).
    """

    name = "table"

    def __init__(self, size: int = 1 << 22, chunk: int = 1 << 18, table_seed: int = 20240917):
        if chunk > size:
            raise ValueError("chunk must not exceed the table size")
        self.size, self.chunk, self.table_seed = size, chunk, table_seed
        self._tables: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def table(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (torch.device(device), dtype)
        if key not in self._tables:
            gen = torch.Generator().manual_seed(self.table_seed)
            base = torch.randn(self.size, generator=gen, dtype=torch.float32)
            self._tables[key] = base.to(device=device, dtype=dtype)
        return self._tables[key]

    @functools.lru_cache(maxsize=1 << 13)  # a step replays each seed 3 times: draw its layout once
    def layout(self, numel: int, seed: int, index: int) -> tuple[list[int], list[int], list[float]]:
        """Starts within the tensor, table offsets and signs of the chunks of block ``index``."""
        starts = list(range(0, numel, self.chunk))
        longest = min(self.chunk, numel)
        gen = torch.Generator().manual_seed(_block_seed(seed, index))
        offsets = torch.randint(0, self.size - longest + 1, (len(starts),), generator=gen)
        signs = torch.randint(0, 2, (len(starts),), generator=gen) * 2 - 1
        return starts, offsets.tolist(), signs.tolist()

    def add(self, tensor: torch.Tensor, seed: int, index: int, alpha: float, out: torch.Tensor,
            at: int = 0, numel: int | None = None) -> None:
        """``out = tensor + alpha * z_index(seed)`` (``out`` may be ``tensor`` itself). With ``numel``, z is the
        flat noise of a block of ``numel`` elements and ``tensor`` its segment starting at ``at``."""
        table = self.table(tensor.device, tensor.dtype)
        src, dst = tensor.view(-1), out.view(-1)
        n = src.numel()
        starts, offsets, signs = self.layout(n if numel is None else numel, seed, index)
        for k in range(at // self.chunk, (at + n - 1) // self.chunk + 1):  # the chunks the segment touches
            lo, hi = max(at, starts[k]), min(at + n, starts[k] + self.chunk)
            off = offsets[k] + lo - starts[k]
            torch.add(src[lo - at:hi - at], table[off:off + hi - lo], alpha=signs[k] * alpha, out=dst[lo - at:hi - at])

    def dot(self, tensor: torch.Tensor, seed: int, index: int) -> torch.Tensor:
        """``<tensor, z_index(seed)>`` as a 0-d tensor, from table views (no noise-sized buffer)."""
        table = self.table(tensor.device, tensor.dtype)
        flat = tensor.reshape(-1)
        n = flat.numel()
        total = torch.zeros((), dtype=tensor.dtype, device=tensor.device)
        for start, off, sign in zip(*self.layout(n, seed, index)):
            end = min(start + self.chunk, n)
            total += sign * torch.dot(flat[start:end], table[off:off + end - start])
        return total

    def rows(self, like: torch.Tensor, seed: int, index: int, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of the 2-D noise ``z_index(seed)`` shaped like ``like``, read straight from the
        table: only ``ids.numel() * width`` values are touched, however large the tensor."""
        width = like.shape[1]
        table = self.table(like.device, like.dtype)
        _, offsets, signs = self.layout(like.numel(), seed, index)
        flat = ids.to(like.device).unsqueeze(-1) * width + torch.arange(width, device=like.device)
        chunk = flat // self.chunk
        offsets_t = torch.tensor(offsets, device=like.device)
        signs_t = torch.tensor(signs, device=like.device, dtype=like.dtype)
        return signs_t[chunk] * table[offsets_t[chunk] + flat % self.chunk]


def make_noise(kind: str, device: torch.device) -> GaussianNoise | NoiseTable:
    """``"gaussian"``, ``"table"``, or ``"auto"``: the table on CPU, fresh Gaussians on accelerators."""
    if kind == "auto":
        kind = "table" if torch.device(device).type == "cpu" else "gaussian"
    if kind == "gaussian":
        return GaussianNoise()
    if kind == "table":
        return NoiseTable()
    raise ValueError(f"unknown noise kind {kind!r}; use auto, table or gaussian")


class ZOEngine:
    """Seeded perturbations and noise updates over the parameter blocks of one model.

    ``scales`` holds one multiplier per block (float64, on the CPU); all ones is MeZO.
    ``forwards`` counts the loss evaluations made through :meth:`loss`, so that methods can be
    compared at an equal number of forward passes.
    """

    def __init__(self, model: nn.Module, noise: str = "auto"):
        self.model = model
        self.blocks = param_blocks(model)
        if not self.blocks:
            raise ValueError("the model has no trainable parameters")
        device = self.blocks[0][1].device
        self.noise = make_noise(noise, device)
        self.scales = torch.ones(len(self.blocks), dtype=torch.float64)
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

    def add_noise_(self, tensor: torch.Tensor, seed: int, index: int, alpha: float,
                   scale: float | None = None) -> None:
        """``tensor += alpha * scale_index * z_index(seed)`` (the tensor has block ``index``'s shape)."""
        scale = float(self.scales[index]) if scale is None else scale
        if scale != 0.0 and alpha != 0.0:
            self.noise.add(tensor, seed, index, alpha * scale, out=tensor)

    def noise_like(self, seed: int, index: int) -> torch.Tensor:
        """Materialise ``scale_index * z_index(seed)`` (for tests and for optimizers that keep moments)."""
        p = self.blocks[index][1]
        out = torch.zeros_like(p, memory_format=torch.contiguous_format)
        self.add_noise_(out, seed, index, 1.0)
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
    def update_(self, seed: Seeds, alpha: float, mean: Sequence[torch.Tensor] | None = None,
                mean_coeffs: Sequence[float] | None = None) -> None:
        """Move every block along its noise, in place: ``theta_b += alpha * scale_b * z_b(seed)``.

        ``seed`` may be a combination ``[(seed_j, c_j), ...]``, in which case the blocks move along
        ``sum_j c_j z_b(seed_j)`` (one noise pass per pair, nothing materialised); ``mean`` (one tensor
        per block) adds ``alpha * scale_b * k_b * mean_b``, with ``k_b = mean_coeffs[b]`` (1 by default)."""
        terms = as_terms(seed)
        coeffs = _mean_coeffs(mean_coeffs, len(self.blocks))
        for i, ((_, p), scale) in enumerate(zip(self.blocks, self.scales.tolist())):
            for s, c in terms:
                self.add_noise_(p.data, s, i, alpha * c, scale)
            if mean is not None and alpha * scale * coeffs[i] != 0.0:
                p.data.add_(mean[i], alpha=alpha * scale * coeffs[i])

    def _scratch(self, like: torch.Tensor) -> torch.Tensor:
        free = self._pool.get((like.shape, like.dtype, like.device))
        return free.pop() if free else torch.empty_like(like, memory_format=torch.contiguous_format)

    def _recycle(self, buf: torch.Tensor) -> None:
        if buf.numel() * buf.element_size() <= self._pool_limit:
            self._pool.setdefault((buf.shape, buf.dtype, buf.device), []).append(buf)

    def _write(self, src: torch.Tensor, terms: list[tuple[int, float]], mean: Sequence[torch.Tensor] | None,
               index: int, alpha: float, out: torch.Tensor, mean_coeff: float = 1.0, at: int = 0) -> None:
        """``out = src + alpha * (sum_j c_j z_index(seed_j) + k * mean_index)``, adding one term at a time.
        With ``at``, ``src`` and ``out`` are flat segments of block ``index`` starting at element ``at``."""
        numel = self.blocks[index][1].numel()
        for s, c in terms:
            self.noise.add(src, s, index, alpha * c, out=out, at=at, numel=numel)
            src = out
        if mean is not None and mean_coeff != 0.0:
            m = mean[index].reshape(-1)[at: at + src.numel()].view(src.shape)
            torch.add(src, m, alpha=alpha * mean_coeff, out=out)

    def _head(self, x: torch.Tensor, module: nn.Linear, index: int, terms: list[tuple[int, float]],
              mean: Sequence[torch.Tensor] | None, alpha: float, mean_coeff: float) -> torch.Tensor:
        """``module``'s output at the perturbed weight, without a weight-sized copy: the perturbed weight is
        written a few rows at a time (about one table chunk, so the rows stay in cache) into a small buffer
        and multiplied at once. This costs about what the unperturbed layer costs."""
        weight = module.weight.detach()
        out_features, width = weight.shape
        if torch.is_grad_enabled():  # autograd through a perturbed forward (ZO never does this): a full copy
            with torch.no_grad():
                perturbed = torch.empty_like(weight)
                self._write(weight, terms, mean, index, alpha, perturbed, mean_coeff)
            return F.linear(x, perturbed, module.bias)
        rows = max(1, self.noise.chunk // width)
        flat_x = x.reshape(-1, width)
        y = flat_x.new_empty(flat_x.shape[0], out_features)
        buf = flat_x.new_empty(rows * width)
        flat_w = weight.reshape(-1)
        for r0 in range(0, out_features, rows):
            r1 = min(r0 + rows, out_features)
            seg = buf[: (r1 - r0) * width]
            self._write(flat_w[r0 * width: r1 * width], terms, mean, index, alpha, seg, mean_coeff, at=r0 * width)
            torch.matmul(flat_x, seg.view(r1 - r0, width).T, out=y[:, r0:r1])
        if module.bias is not None:
            y += module.bias
        return y.view(*x.shape[:-1], out_features)

    @contextmanager
    def perturbed(self, seed: Seeds, alpha: float, mean: Sequence[torch.Tensor] | None = None,
                  mean_coeffs: Sequence[float] | None = None) -> Iterator[None]:
        """Inside the context, each module computes with ``theta_b + alpha * scale_b * z_b(seed)``.

        ``seed`` may be a combination ``[(seed_j, c_j), ...]``: the direction is then
        ``sum_j c_j z_b(seed_j)``, plus ``k_b * mean_b`` when ``mean`` (one tensor per block) is given,
        with ``k_b = mean_coeffs[b]`` (1 by default; a block whose ``k_b`` is 0 never reads its mean).

        Just before a unit (see :meth:`_units`) runs, the perturbed values of its parameters are written
        into scratch buffers that are swapped in as the parameters' data; just after, the original tensors
        are swapped back. The parameters' storage is never written, so they come back bit for bit (also
        when the forward pass raises), and the extra memory is one unit's parameters: no perturbation
        vector and no copy of the model is ever held. Two cases avoid even that copy: a plain
        ``nn.Embedding`` lookup adds the noise rows of the looked-up tokens to its output, and a linear
        layer too large for the buffer pool (an output head), with table noise, computes its output from
        its perturbed weight written a few rows at a time into a small buffer (:meth:`_head`; the module's
        ``forward`` is shadowed inside the context). Both equal the module's output at the perturbed weight.
        """
        swapped: dict[int, tuple[torch.Tensor, int]] = {}  # block -> (original data, nesting depth)
        scales = self.scales.tolist()
        terms = as_terms(seed)
        coeffs = _mean_coeffs(mean_coeffs, len(self.blocks))

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
                        scale = scales[i]
                        if alpha * scale == 0.0:
                            continue
                        seen["bypass"] |= inner
                        p = self.blocks[i][1]
                        original = p.data
                        buf = self._scratch(original)
                        self._write(original, terms, mean, i, alpha * scale, buf, coeffs[i])
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
                    if i not in swapped:  # scale 0: never swapped
                        continue
                    original, depth = swapped[i]
                    if depth > 1:
                        swapped[i] = (original, depth - 1)
                    else:
                        restore(i)
            return hook

        def lookup(i: int) -> Callable:
            def hook(module, args, kwargs, output):
                scale = scales[i]
                if i in swapped or alpha * scale == 0.0:  # already perturbed by an enclosing module, or not at all
                    return output
                ids = args[0] if args else kwargs["input"]
                for s, c in terms:
                    output = output.add(self.noise.rows(module.weight, s, i, ids), alpha=alpha * scale * c)
                if mean is not None and coeffs[i] != 0.0:
                    output = output.add(F.embedding(ids, mean[i]), alpha=alpha * scale * coeffs[i])
                return output
            return hook

        def head(module: nn.Linear, i: int) -> Callable:
            def forward(x: torch.Tensor) -> torch.Tensor:
                scale = scales[i]
                if i in swapped or alpha * scale == 0.0:  # perturbed by an enclosing module, or not at all
                    return F.linear(x, module.weight, module.bias)
                return self._head(x, module, i, terms, mean, alpha * scale, coeffs[i])
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

    def spsa(self, closure: Callable[[], torch.Tensor], seed: Seeds, eps: float,
             mean: Sequence[torch.Tensor] | None = None,
             mean_coeffs: Sequence[float] | None = None) -> tuple[float, float, float]:
        """Two-point SPSA along ``scale * z(seed)``: returns ``(g, loss_plus, loss_minus)`` with
        ``g = (L(theta + eps*s*z) - L(theta - eps*s*z)) / (2 eps)`` (MeZO's projected gradient).
        ``seed``, ``mean`` and ``mean_coeffs`` may describe a combination, as in :meth:`perturbed`."""
        with self.perturbed(seed, eps, mean, mean_coeffs):
            plus = self.loss(closure)
        with self.perturbed(seed, -eps, mean, mean_coeffs):
            minus = self.loss(closure)
        return (plus - minus) / (2 * eps), plus, minus

