"""Seeded noise for the ZO engine: block b's noise at a seed is a pure function of ``(seed, b)``.

:class:`GaussianNoise` draws fresh normals per block (MeZO's noise; the default on accelerators);
:class:`NoiseTable` reads them from one shared table (the default on CPUs, where drawing normals costs
about as much as a forward pass). Both give E[z z^T] = I.
"""
from __future__ import annotations

import functools

import torch

SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, block) pairs over generator seeds


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
