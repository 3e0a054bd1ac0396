"""Seeded noise for the ZO engine: block b's noise at a seed is a pure function of ``(seed, b)``.

:class:`GaussianNoise` draws fresh normals per block (MeZO's noise; the default on accelerators);
:class:`NoiseTable` reads them from one shared table (the default on CPUs, where drawing normals costs
about as much as a forward pass). Both give E[z z^T] = I.

Two more kinds have the same interface (``add``, ``dot``, ``rows``) for the baselines of
:mod:`finetune.zo.baselines`: Rademacher (+-1) noise (:class:`RademacherTable` on CPUs,
:class:`RademacherNoise` on accelerators; :func:`rademacher_like`) and low-rank noise ``U V^T`` per matrix
(:class:`LowRankNoise`).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from finetune.zo.kernels import fusable, low_rank_product

SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, block) pairs over generator seeds


def _block_seed(seed: int, index: int) -> int:
    return (seed * SEED_MIX + index * 0x632BE59BD9B4E019 + 1) % (2**63 - 1)


def keyed_seed(seed: int, index: int, purpose: int) -> int:
    """A generator seed for one purpose (a low-rank factor, an active set...) of ``(seed, index)``: draws for
    different purposes never share a stream, so no draw shifts another."""
    return _block_seed(_block_seed(seed, index), 0x51ED27 + purpose)


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
            z = self._draw(tensor.shape, gen, tensor)
        else:  # a segment: draw the whole block's noise (this class is for accelerators) and slice it
            z = self._draw((numel,), gen, tensor)
            z = z[at: at + tensor.numel()].view(tensor.shape)
        torch.add(tensor, z, alpha=alpha, out=out)

    @staticmethod
    def _draw(shape, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(shape, generator=gen, device=like.device, dtype=like.dtype)

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
        for lo, hi, sign, off in self.slices(seed, index, src.numel(), at, numel):
            torch.add(src[lo:hi], table[off:off + hi - lo], alpha=sign * alpha, out=dst[lo:hi])

    def slices(self, seed: int, index: int, n: int, at: int = 0, numel: int | None = None) -> list:
        """Where the noise of the flat segment ``[at, at + n)`` of block ``index`` (of ``numel`` elements; ``n``
        when None) lies in the table, one piece per table chunk the segment touches: ``(lo, hi, sign, off)``
        with ``z[at + lo: at + hi] = sign * table[off: off + hi - lo]`` (``sign`` +-1). A piece has at most
        ``chunk`` elements, so a caller's temporaries of one piece stay in cache."""
        starts, offsets, signs = self.layout(n if numel is None else numel, seed, index)
        out = []
        for k in range(at // self.chunk, (at + n - 1) // self.chunk + 1):  # the chunks the segment touches
            lo, hi = max(at, starts[k]), min(at + n, starts[k] + self.chunk)
            out.append((lo - at, hi - at, signs[k], offsets[k] + lo - starts[k]))
        return out

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


class RademacherNoise(GaussianNoise):
    """Exact i.i.d. Rademacher (+-1 with probability 1/2 each) noise per block from a per-(seed, block)
    generator (FZOO's perturbation; for accelerators). E[u u^T] = I."""

    name = "rademacher"

    @staticmethod
    def _draw(shape, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        u = torch.randint(0, 2, shape, generator=gen, device=like.device, dtype=like.dtype)
        return u.mul_(2).sub_(1)


class RademacherTable(NoiseTable):
    """Rademacher noise read from a shared table of random signs, laid out as :class:`NoiseTable` lays out
    its normals (chunks at seeded offsets with seeded signs): entries are +-1, E[u u^T] = I, and adding it is
    a plain add of a table slice (for CPUs)."""

    name = "rademacher-table"

    def table(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (torch.device(device), dtype)
        if key not in self._tables:
            gen = torch.Generator().manual_seed(self.table_seed + 1)
            signs = torch.randint(0, 2, (self.size,), generator=gen, dtype=torch.float32) * 2 - 1
            self._tables[key] = signs.to(device=device, dtype=dtype)
        return self._tables[key]


def rademacher_like(noise) -> RademacherTable | RademacherNoise:
    """The Rademacher noise of the same kind as ``noise``: a sign table for a table, generators otherwise."""
    if isinstance(noise, NoiseTable):
        return RademacherTable(noise.size, noise.chunk, noise.table_seed)
    return RademacherNoise()


class LowRankNoise:
    """Low-rank noise (LOZO): block b's noise is ``U_b V_b^T`` if the block has two or more dims (viewed as
    ``shape[0] x rest``), with ``U_b`` (``m x rank``) drawn from ``(seed, b)`` and ``V_b`` (``n x rank``) from
    ``(window_seed, b)``, both standard normal; other blocks get ``base`` noise at ``seed``. Each entry has
    variance ``rank`` (the public code's scale: not divided by ``rank``).

    One object serves one window: its V is fixed, and a step's U is drawn once and kept until the next seed
    (a step replays its seed three times), so nothing of size m x n is ever stored: ``add`` writes ``U V^T``
    a few rows at a time (or the rows of a segment that it touches), each entry summed in a fixed order
    (:func:`low_rank_product`), or in one fused pass with ``loops`` (the module :func:`finetune.zo.kernels.load`
    returns; the same numbers) for float32 CPU tensors.
    """

    name = "lowrank"
    U, V = 1, 2  # purposes of keyed_seed

    def __init__(self, base, shapes, rank: int, window_seed: int, loops=None):
        if rank < 1:
            raise ValueError("the rank of low-rank noise must be at least 1")
        self.base, self.rank, self.window_seed, self.loops = base, int(rank), int(window_seed), loops
        self.shapes = [tuple(int(x) for x in s) for s in shapes]
        self.chunk = getattr(base, "chunk", 1 << 18)
        self._u_seed: int | None = None
        self._u: dict[tuple, torch.Tensor] = {}
        self._v: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def matrix(self, index: int) -> tuple[int, int] | None:
        """``(m, n)`` of block ``index`` seen as a matrix, or None for a vector (plain noise)."""
        shape = self.shapes[index]
        return (shape[0], math.prod(shape[1:])) if len(shape) >= 2 else None

    def factors(self, seed: int, index: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U, V)`` of block ``index`` at ``seed`` (this window's V)."""
        u, (v, _) = self._factors(seed, index, device, dtype)
        return u, v

    def _factors(self, seed, index, device, dtype):
        """``U`` and ``(V, V^T contiguous)``, cached."""
        m, n = self.matrix(index)
        device = torch.device("cpu" if device is None else device)
        if seed != self._u_seed:
            self._u_seed, self._u = seed, {}
        key = (index, device, dtype)
        if key not in self._u:
            gen = torch.Generator(device=device).manual_seed(keyed_seed(seed, index, self.U))
            self._u[key] = torch.randn(m, self.rank, generator=gen, device=device, dtype=dtype)
        if key not in self._v:
            gen = torch.Generator(device=device).manual_seed(keyed_seed(self.window_seed, index, self.V))
            v = torch.randn(n, self.rank, generator=gen, device=device, dtype=dtype)
            self._v[key] = (v, v.T.contiguous())
        return self._u[key], self._v[key]

    def add(self, tensor: torch.Tensor, seed: int, index: int, alpha: float, out: torch.Tensor,
            at: int = 0, numel: int | None = None) -> None:
        """``out = tensor + alpha * z_index(seed)``, also on a flat segment (``at``, ``numel``) as the other kinds."""
        mn = self.matrix(index)
        if mn is None:
            return self.base.add(tensor, seed, index, alpha, out=out, at=at, numel=numel)
        m, n = mn
        u, (_, vt) = self._factors(seed, index, tensor.device, tensor.dtype)
        if self.loops is not None and fusable(tensor, out, u):
            return self.loops.low_rank_add(tensor.view(-1), u, vt, out.view(-1), alpha, at)
        if not out.is_contiguous():  # (a strided parameter) through a contiguous copy
            flat = tensor.contiguous().clone()
            self.add(flat, seed, index, alpha, out=flat, at=at)
            out.copy_(flat.view(out.shape))
            return
        src, dst, count = tensor.reshape(-1), out.view(-1), tensor.numel()
        rows = max(1, self.chunk // n)  # the product a few rows at a time: a temporary of about one table chunk
        for r0 in range(at // n, (at + count - 1) // n + 1, rows):
            lo, hi = max(at, r0 * n), min(at + count, (r0 + rows) * n)
            part = low_rank_product(u[r0: r0 + rows], vt).view(-1)[lo - r0 * n: hi - r0 * n]
            torch.add(src[lo - at: hi - at], part, alpha=alpha, out=dst[lo - at: hi - at])

    def dot(self, tensor: torch.Tensor, seed: int, index: int) -> torch.Tensor:
        mn = self.matrix(index)
        if mn is None:
            return self.base.dot(tensor, seed, index)
        u, v = self.factors(seed, index, tensor.device, tensor.dtype)
        return (u * (tensor.reshape(mn) @ v)).sum()

    def rows(self, like: torch.Tensor, seed: int, index: int, ids: torch.Tensor) -> torch.Tensor:
        u, (_, vt) = self._factors(seed, index, like.device, like.dtype)
        return low_rank_product(F.embedding(ids.to(like.device).reshape(-1), u), vt).view(*ids.shape, -1)


def make_noise(kind: str, device: torch.device) -> GaussianNoise | NoiseTable:
    """``"gaussian"``, ``"table"``, or ``"auto"``: the table on CPU, fresh Gaussians on accelerators."""
    if kind == "auto":
        kind = "table" if torch.device(device).type == "cpu" else "gaussian"
    if kind == "gaussian":
        return GaussianNoise()
    if kind == "table":
        return NoiseTable()
    raise ValueError(f"unknown noise kind {kind!r}; use auto, table or gaussian")
