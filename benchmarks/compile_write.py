"""Would torch.compile bring Sparse-MeZO's perturbation write near MeZO's? (docs/methods.md, "Speed".)

Times, on one flat fp32 tensor written one noise-table chunk (2^18 entries) at a time as the engine does:
MeZO's write (one add), Sparse-MeZO's chunked eager write (abs, le into floats, multiply, add: the engine's
path), and the same four operations fused by torch.compile (inductor, C++ on CPU). Prints the minimum of 5 runs
and whether the fused result equals the eager one bit for bit.

    OMP_NUM_THREADS=1 python benchmarks/compile_write.py --numel 30000000
"""
import argparse
import time

import torch

CHUNK = 1 << 18


def write_mezo(p, z, h, a):
    for s in range(0, p.numel(), CHUNK):
        c = p[s:s + CHUNK]
        c.add_(z[:c.numel()], alpha=a)


def write_eager(p, z, h, a):
    buf = torch.empty(CHUNK)
    for s in range(0, p.numel(), CHUNK):
        c = p[s:s + CHUNK]
        m = buf[:c.numel()]
        torch.abs(c, out=m)
        torch.le(m, h, out=m)
        m.mul_(z[:c.numel()])
        c.add_(m, alpha=a)


def _fused(c, zz, h: float, a: float):
    c.add_(zz * (c.abs() <= h), alpha=a)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--numel", type=int, default=30_000_000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    theta, z, h, a = torch.randn(args.numel), torch.randn(CHUNK), 0.5, 1e-3
    fused = torch.compile(_fused, dynamic=True)

    def write_compiled(p, z, h, a):
        for s in range(0, p.numel(), CHUNK):
            c = p[s:s + CHUNK]
            fused(c, z[:c.numel()], h, a)

    t = time.perf_counter()
    write_compiled(theta.clone(), z, h, a)
    print(f"compile (first call): {time.perf_counter() - t:.1f} s")
    x, y = theta.clone(), theta.clone()
    write_eager(x, z, h, a)
    write_compiled(y, z, h, a)
    print(f"fused == eager bit for bit: {torch.equal(x, y)} (max difference {(x - y).abs().max().item():.2e})")
    for f in (write_mezo, write_eager, write_compiled):
        q, times = theta.clone(), []
        for _ in range(5):
            t = time.perf_counter()
            f(q, z, h, a)
            times.append(time.perf_counter() - t)
        print(f"{f.__name__:15s} {min(times):.4f} s")


if __name__ == "__main__":
    main()
