"""What meta-train-head and meta-train-top share: the short fine-tune runs on meta-training tasks that they choose a
tuner's exact-step lrs by, read back when finished and refused when they ran other options, and the tuner file they
write once, atomically, under a lock.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from checkpoints import Tuner
from finetune.common.errors import ZotuneError
from finetune.common.runs import RunLock, check_output, os_error, write_failed
from finetune.trainer import FinetuneConfig, work_dir


def final_dev_loss(run: dict) -> float:
    """A bench run's final dev loss; infinite when it diverged or has none that is finite."""
    if run.get("diverged") or not run.get("curve"):
        return math.inf
    loss = run["curve"][-1].get("dev_loss")
    return float(loss) if isinstance(loss, (int, float)) and math.isfinite(loss) else math.inf


def tuner_run(base: FinetuneConfig, seed: int, forwards: int, eval_points: int, folder: Path, tuner: Tuner,
              progress: bool = True) -> dict:
    """The one run of a bench of method ``tuner`` with ``base``'s options (its task, lr, head and top-block steps)
    and ``seed``, in ``folder``: read when finished (refused in one line if it ran other options), resumed when
    interrupted, else run. What :func:`meta.head.select_head_lr` and :func:`meta.top.select_top_lr` choose by."""
    from finetune.bench import BenchConfig, bench, bench_spec

    done = folder / "bench.json"
    cfg = BenchConfig(base=base, methods=["tuner"], lrs={"tuner": [base.lr]}, seeds=[seed], forwards=forwards,
                      eval_points=eval_points, select="dev")
    if not done.exists():
        bench(cfg, folder, progress=progress, resume=work_dir(folder).exists(), tuner=tuner)
    report = json.loads(done.read_text())
    check_same_options(folder, report.get("config", {}), bench_spec(cfg))
    (run,) = report["runs"]
    return run


_HARDWARE = ("threads", "device", "device_map")  # where a bench ran, not what it computed


def check_same_options(folder: Path, stored: dict, now: dict) -> None:
    """Refuse, in one line, a finished bench in ``--work`` that ran with other options than this search would
    use (another --lr, --schedule, --tuner, budget...): its dev loss would be read as if it were this one's."""
    def flat(spec: dict) -> dict:
        base = {k: v for k, v in spec.get("base", {}).items() if k not in _HARDWARE}
        return {**{k: v for k, v in spec.items() if k != "base"}, **base}

    a, b = flat(stored), flat(now)
    diff = [k for k in b if k in a and a[k] != b[k] and not (k == "tuner" and _same_file(a[k], b[k]))]
    if diff:
        k = diff[0]
        raise ZotuneError(f"{folder} ran with {k}={a[k]!r}, not {b[k]!r}: give this search its own --work, or rerun "
                          "with the options that bench used")


def _same_file(then, now) -> bool:
    """Whether the tuner a finished bench recorded is the one this search uses: the same bytes when both files
    exist. A recorded file that is gone cannot be checked (a work folder moved or merged with its tuner) and is
    taken as the same; a file that exists with other bytes is not."""
    if then is None or now is None:
        return False
    then, now = Path(then), Path(now)
    if not then.exists():
        return True
    return now.exists() and then.read_bytes() == now.read_bytes()


def check_out(out: Path) -> Path:
    """Refuse, before any work, an ``--out`` that is not a new ``.safetensors`` file; return it."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ZotuneError(f"--out must name a .safetensors file, got {out}")
    return check_output(out, kind="file")


def checked_start(base: FinetuneConfig, out: Path, tuner: Tuner | None, lr: str, step: str,
                  frozen: str) -> tuple[Path, Tuner]:
    """Refuse, before any run, what a selection of the ``step``'s ``lr`` cannot start from: no dev split to choose
    on, bad run options, an ``--out`` that is not a new ``.safetensors`` file, a tuner for an adapter (which keeps
    ``frozen`` frozen). Returns ``out`` and the tuner (``tuner``, else read from ``base.tuner``)."""
    if base.n_dev < 1:
        raise ZotuneError(f"the {lr} is chosen on the dev split: set --n-dev >= 1")
    base.validate()
    out = check_out(out)
    tuner = tuner or Tuner.from_pretrained(base.tuner)
    if tuner.adapter is not None:
        raise ZotuneError(f"this tuner is for an adapter (--peft), which keeps {frozen} frozen: the {step} does not "
                          "apply to it")
    return out, tuner


@contextmanager
def locked_output(out: Path) -> Iterator[None]:
    """Hold ``out`` for this selection (a second one writing it is refused) and refuse it, again, if it exists."""
    with RunLock(out):
        check_output(out, kind="file")  # again, now that no other run can write it
        yield


def write_tuner(tuner: Tuner, out: Path) -> None:
    """Write the chosen ``tuner`` to ``out`` atomically; a write error is one line that says the benches are kept."""
    try:
        tuner.save_pretrained(out)
    except Exception as e:  # noqa: BLE001 - only write errors are turned into one line
        if (e := os_error(e)) is None:
            raise
        raise write_failed(out, e, "rerun the same command (the finished benches are kept)") from None
