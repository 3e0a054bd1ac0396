"""Fused CPU loops for the baselines' writes: Sparse-MeZO, HiZOO, LOZO (``kernels.cpp``, compiled on first use).

With table noise the engine writes a perturbation one table chunk at a time. MeZO's write is one pass over a
chunk (``theta + a * z``); Sparse-MeZO's mask adds three more (``abs``, a comparison, a multiply), HiZOO's update
one (its scaling's own step), LOZO's low-rank noise a product per rank, and on a CPU each pass costs about as much
as MeZO's add. The loops here make each write one pass, so these methods' steps cost about what MeZO's does
(docs/methods.md, "Speed").

They are an optimisation only, with the same numbers as the eager path, bit for bit: on first use the source is
compiled with torch's C++ extension loader (a C++ compiler and ninja are needed; the build is cached per CPU
under torch's extension directory, ``TORCH_EXTENSIONS_DIR`` if set; about 30 s once), and a probe then runs every
loop against the eager operations it replaces on this machine. If the compiler is missing, the build fails or the probe finds one
differing bit, the engine keeps the eager path, and says so once on stderr. Set ``ZOTUNE_FUSED_KERNELS=0`` to
skip the build. Only contiguous float32 CPU tensors are fused; anything else takes the eager path.
"""
from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("kernels.cpp")
_lock = threading.Lock()
_module = None  # the loaded extension, False when unavailable, None before the first try
_why = ""  # why it is unavailable


def _cpu_key() -> str:
    """A short hash of this CPU's feature flags, torch's and Python's versions and the source: a build with
    ``-march=native`` is kept per CPU, so a home directory shared by machines with different CPUs never loads
    code built for another, and a changed source gets a build of its own."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    text = "|".join([platform.machine(), platform.processor(), flags, torch.__version__, platform.python_version(),
                     hashlib.sha1(_SOURCE.read_bytes()).hexdigest()])
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _probe(module) -> str:
    """'' if every loop gives the eager operations' numbers bit for bit on a probe (sizes that leave a tail
    after any vector width, values on both sides of the threshold, an output aliasing its input), else why not."""
    gen = torch.Generator().manual_seed(0)
    for n in (1, 7, 33, 1000, 70001):
        theta = torch.randn(n, generator=gen) * 0.02
        z, h = torch.randn(n, generator=gen), torch.rand(n, generator=gen) * 3 + 0.05
        factor, a, value, thr = torch.rand(n, generator=gen) + 0.5, -1.37e-3, 0.731e-2, 0.013
        want = torch.add(theta, torch.mul(z, torch.le(theta.abs(), thr).to(theta.dtype)), alpha=a)
        got = theta.clone()
        module.below_magnitude_add(got, z, got, a, thr)
        if not torch.equal(want.view(torch.int32), got.view(torch.int32)):
            return "its masked add differs from the eager one"
        got_t, got_s = theta.clone(), h.clone()
        module.scaled_update(got_t, z, got_s, factor, value)
        if not (torch.equal(torch.addcmul(theta, z, h, value=value).view(torch.int32), got_t.view(torch.int32))
                and torch.equal((h * factor).view(torch.int32), got_s.view(torch.int32))):
            return "its scaled update differs from the eager addcmul and multiply"
        for r, at in ((1, 0), (2, 5), (3, 1)):  # a segment from the middle of a row, to the block's end
            u, vt = torch.randn(n // 7 + 2, r, generator=gen), torch.randn(r, 7, generator=gen)
            part = torch.randn(u.shape[0] * 7 - at, generator=gen) * 0.02
            want = torch.add(part, low_rank_product(u, vt).view(-1)[at:], alpha=a)
            got = part.clone()
            module.low_rank_add(got, u, vt, got, a, at)
            if not torch.equal(want.view(torch.int32), got.view(torch.int32)):
                return "its low-rank add differs from the eager product and add"
    return ""


def load():
    """The compiled, probed extension, or None (and :func:`why_not` says why). Tried once per process."""
    global _module, _why
    if _module is None:
        with _lock:
            if _module is None:
                _module, _why = _build()
                if _module is False and _why:
                    print(f"zotune: fused CPU kernels unavailable ({_why}); Sparse-MeZO, HiZOO and LOZO use the "
                          "eager path (the same numbers, slower)", file=sys.stderr)
    return _module or None


def why_not() -> str:
    """Why :func:`load` returned None ('' if it did not, or was not tried)."""
    return _why


def _build():
    if os.environ.get("ZOTUNE_FUSED_KERNELS", "1") == "0":
        return False, ""  # asked for: nothing to report
    try:
        from torch.utils.cpp_extension import get_default_build_root, load as load_extension
        name = f"zotune_kernels_{_cpu_key()}"
        build = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / name
        if not list(build.glob(f"{name}*.so")) + list(build.glob(f"{name}*.pyd")):
            print("zotune: compiling the fused CPU kernels for Sparse-MeZO, HiZOO and LOZO (once per machine, ~30 s)",
                  file=sys.stderr)
        build.mkdir(parents=True, exist_ok=True)
        module = load_extension(name, [str(_SOURCE)], extra_cflags=["-O3", "-march=native"],
                                build_directory=str(build), verbose=False)
    except Exception as e:  # no compiler, no ninja, a failed build: the eager path is always there
        return False, f"the build failed: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e) else ''}"
    why = _probe(module)
    return (False, why + " on this CPU") if why else (module, "")


def low_rank_product(u: torch.Tensor, vt: torch.Tensor) -> torch.Tensor:
    """``u @ vt`` (``u``: rows x r, ``vt``: r x n) with each entry summed in a fixed order: ``u[:, 0] vt[0]``, then
    one fused multiply-add per further rank (``addcmul``): the eager form of the loop ``low_rank_add``, and LOZO's
    noise (:class:`~finetune.zo.noise.LowRankNoise`). A BLAS product's order depends on the library, the CPU and
    the number of rows."""
    out = torch.outer(u[:, 0], vt[0])
    for k in range(1, u.shape[1]):
        out.addcmul_(u[:, k: k + 1], vt[k: k + 1])
    return out


def fusable(*tensors: torch.Tensor) -> bool:
    """Whether the loops apply: contiguous float32 CPU tensors."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)
