"""What the fine-tune and meta-train stages share about a run: checked numbers, the output check, the run
lock, input fingerprints, resumable snapshots, the divergence guard (and the late-rise note) and strict JSON.

See ``docs/reliability.md`` for the promises these make.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from finetune.common.atomic import atomic_file
from finetune.common.errors import ZotuneError, first_line

DTYPES = ("fp32", "bf16", "fp16")
NOISES = ("auto", "table", "gaussian")
DEVICE_MAPS = ("auto", "balanced", "sequential")
# lr schedules: a run's, and a tuner's top-block step's (finetune.zo.optim.schedule_factor). linear-warmup: the lr rises
# linearly over the first WARMUP_FRACTION of the steps, then falls linearly to 0.
SCHEDULES = ("constant", "linear", "cosine", "linear-warmup")
WARMUP_FRACTION = 0.1
FP16_MAX = 65504.0


# ------------------------------------------------------------------------------------------- numbers
def flag_of(name: str) -> str:
    """The command-line flag of a config field: ``weight_decay`` -> ``--weight-decay``."""
    return "--" + name.replace("_", "-")


def check_number(name: str, value, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False) -> None:
    """Raise a one-line error naming ``name`` (a flag, or what the value is) unless ``value`` is a finite
    number (an integer if ``integer``) within the bounds (``None`` = unbounded; ``*_open``: excluded)."""
    kind = "an integer" if integer else "a finite number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high:g}")
        what = f"{' and '.join(bounds)}, {kind}" if bounds else kind
        raise ZotuneError(f"{name} must be {what} (got {value!r})")


@dataclass
class RunConfig:
    """The fields every training run has (model, data, hardware); the stages add their own."""

    model: str = ""
    steps: int = 100
    batch_size: int = 16
    eps: float = 1e-3
    seed: int = 0
    n_train: int = 1000
    max_length: int = 256
    dtype: str = "fp32"
    device: str | None = None
    device_map: str | None = None      # accelerate's device map ("auto", ...): the model split across devices
    threads: int | None = None
    noise: str = "auto"

    def validate_run(self) -> None:
        """Check the shared fields; one-line errors name the flag."""
        for name in ("steps", "batch_size", "n_train", "max_length"):
            check_number(flag_of(name), getattr(self, name), low=1, integer=True)
        check_number("--seed", self.seed, integer=True)
        check_number("--eps", self.eps, low=0, low_open=True)
        if self.threads is not None:
            check_number("--threads", self.threads, low=1, integer=True)
        if self.dtype not in DTYPES:
            raise ZotuneError(f"--dtype must be one of {', '.join(DTYPES)} (got {self.dtype!r})")
        if self.device_map is not None and self.device_map not in DEVICE_MAPS:
            raise ZotuneError(f"--device-map must be one of {', '.join(DEVICE_MAPS)} (got {self.device_map!r})")
        if self.device_map is not None and self.device is not None:
            raise ZotuneError("give --device or --device-map, not both")
        if self.noise not in NOISES:
            raise ZotuneError(f"--noise must be one of {', '.join(NOISES)} (got {self.noise!r})")


def changed_fields(saved: dict, now: dict, default: dict, ignore: Iterable[str] = ()) -> list[str]:
    """The config fields whose value differs between a snapshot and now (a field newer than the
    snapshot counts as its default)."""
    skip = set(ignore)
    return [k for k in now if k not in skip and saved.get(k, default.get(k)) != now[k]]


# ------------------------------------------------------------------------------------------- outputs
def check_output(out: Path, kind: str = "folder", flag: str = "--out") -> Path:
    """Refuse, before any work, an output (given as ``flag``) that could not receive the finished run: no
    name (``/``, ``.``), a symbolic link, an existing file or non-empty folder, a parent that is a file or
    cannot be written. Creates the missing parent folders; returns ``out``."""
    out = Path(out)
    if out.name in ("", ".", ".."):
        raise ZotuneError(f"{flag} {str(out)!r} names no new {kind}; give a path such as runs/my-run")
    if out.is_symlink():
        raise ZotuneError(f"{flag} {out} is a symbolic link (to {os.readlink(out)}); give the path of the "
                          f"{kind} itself")
    if out.is_file() or (out.is_dir() and (kind != "folder" or any(out.iterdir()))):
        raise ZotuneError(f"output {out} already exists; choose another {flag} or delete it")
    parent = out.parent
    ancestor = parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ZotuneError(f"{flag} {out}: {ancestor} is a file, not a folder; choose another {flag}")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".zotune-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ZotuneError(f"cannot write to {parent} ({e.strerror or first_line(e)}); choose another {flag}") from None
    return out


def os_error(e: BaseException) -> OSError | None:
    """``e`` as an :class:`OSError` if it is one, or a safetensors error wrapping one ("os error 28"), else None."""
    if isinstance(e, OSError):
        return e
    m = re.search(r"os error (\d+)", str(e))
    if type(e).__name__ == "SafetensorError" and m:
        code = int(m.group(1))
        return OSError(code, os.strerror(code))
    return None


def write_failed(what: Path | str, e: OSError, then: str) -> ZotuneError:
    """A one-line error for a failed write (disk full, permissions): what failed, why, and ``then``, what
    to do once the cause is fixed ("rerun the same command")."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        why, fix = "the disk is full", "free some space"
    else:
        why, fix = e.strerror or first_line(e), "fix that"
    return ZotuneError(f"could not write {what}: {why}; {fix} and {then}")


def strict_json(obj, **kw) -> str:
    """``json.dumps`` that never writes NaN or Infinity (not JSON): non-finite floats become ``null``."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    return json.dumps(clean(obj), allow_nan=False, **kw)


# ------------------------------------------------------------------------------------------- locks
class RunLock:
    """An exclusive lock on ``target`` (an output path) for the life of a run: a ``.<name>.lock`` file
    beside it, held with ``fcntl.flock`` and holding the owner's pid. A second run is refused on one line.
    The lock ends with the process, however it ends. Needs ``fcntl.flock`` (POSIX); elsewhere it does nothing."""

    def __init__(self, target: Path):
        self.target = Path(target)
        self.path = self.target.with_name(f".{self.target.name}.lock")
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # no flock on this platform (Windows): runs are not locked
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ZotuneError(f"another run (pid {pid}) holds the lock on {self.target}; wait for it to end "
                                  "or choose another --out") from None
            except OSError as e:  # a file system without locks (some network ones)
                os.close(fd)
                raise ZotuneError(f"cannot lock {self.path} ({e.strerror}); write the output to a local file "
                                  "system") from None
            try:  # the holder before us may have removed the file after we opened it: lock the current one
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self.fd)
            self.fd = None


# ------------------------------------------------------------------------------------------- fingerprints
def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@torch.no_grad()
def sha256_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A hash of named tensors: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, t in named:
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- guard
@torch.no_grad()
def param_norm(params: Iterable[torch.Tensor]) -> float:
    """The L2 norm of all ``params`` together (each reduced in float32, no copy of the weights)."""
    return math.sqrt(sum(float(torch.linalg.vector_norm(p.detach(), dtype=torch.float32)) ** 2 for p in params))


class Diverged(ZotuneError):
    """The run stopped because its loss or weights stopped being finite or ran away."""


class DivergenceGuard:
    """Stops a run whose weights stopped being finite or ran away: their norm beyond ``ratio`` times the
    starting norm (at least an RMS of 0.01, so zero-initialised weights may move). Checked at step 1, every
    ``every`` steps, and whenever :meth:`check` is forced. :meth:`check_loss` stops a run whose training
    loss ran away."""

    LOSS_WINDOW = 10

    def __init__(self, params: list[torch.Tensor], ratio: float = 100.0, every: int = 10):
        self.params, self.every, self.ratio = params, every, ratio
        self.start = param_norm(params)
        self.limit = ratio * max(self.start, 0.01 * math.sqrt(sum(p.numel() for p in params)))

    def check(self, step: int, hint: str, force: bool = False) -> None:
        if not force and step % self.every and step != 1:
            return
        norm = param_norm(self.params)
        if not math.isfinite(norm) and not all(bool(torch.isfinite(p).all()) for p in self.params):
            raise Diverged(f"the weights became non-finite by step {step}; {hint}")
        if not norm <= self.limit:
            raise Diverged(f"the run diverged: the weights' norm grew from {self.start:.3g} to {norm:.3g} "
                              f"by step {step}; {hint}")

    def check_loss(self, losses: list[float], step: int, hint: str) -> None:
        """Stops a run whose training loss ran away while its weights stayed finite and bounded (a few
        blocks blown up can do that): the mean of the last ``LOSS_WINDOW`` losses beyond ``ratio`` times the
        mean of the first ``LOSS_WINDOW`` (at least 1, so a loss that starts near 0 may move). ``losses`` is
        the run's whole list, so the reference survives a resume. Needs two windows of steps."""
        w = self.LOSS_WINDOW
        if len(losses) < 2 * w:
            return
        start, recent = sum(losses[:w]) / w, sum(losses[-w:]) / w
        if recent > self.ratio * max(start, 1.0):
            raise Diverged(f"the run diverged: the training loss grew from {start:.3g} (mean of the first {w} "
                           f"steps) to {recent:.3g} (the last {w}) by step {step}; {hint}")


@dataclass(frozen=True)
class LateRise:
    """A finished run's training loss rose again after its lowest point (:func:`late_rise`): the mean over its
    lowest tenth (steps ``lowest_steps``, counted from 1) and over its last ``window`` steps."""
    lowest: float
    lowest_steps: tuple[int, int]
    last: float
    window: int

    def note(self, remedy: str = "try --schedule linear or a lower --lr") -> str:
        """One line for the user; ``remedy``: what to change, in the words of the interface they ran."""
        a, b = self.lowest_steps
        return (f"note: the training loss rose late in the run (mean {self.lowest:.3f} over steps {a}-{b}, "
                f"{self.last:.3f} over the last {self.window}); the lr may be too high for a run this long: {remedy}")


def late_rise(losses: list[float], min_steps: int = 50) -> LateRise | None:
    """Whether a finished run's training loss rose again late in the run, well beyond its noise: a rise the
    divergence guard (100x) lets through, and one that a decaying lr or a lower one usually removes.

    The last ``10 w`` steps (``w = len(losses) // 10``) are cut into ten windows of ``w``. With ``m_0`` the
    first window's mean, ``m_lo`` the lowest and ``m_last`` the last's, the loss rose late when the lowest window
    is not the last and ``m_last - m_lo`` exceeds each of: a quarter of the fall ``m_0 - m_lo``, a fifth of
    ``m_lo``, and five times the noise of a window's mean, ``sigma / sqrt(w)`` (``sigma``: the standard
    deviation of those steps' step-to-step differences over sqrt 2, the per-step noise, which a slow trend barely
    touches). None for runs shorter than ``min_steps`` or with a non-finite loss (``None`` in a ``metrics.json``)."""
    n = len(losses)
    if n < max(min_steps, 10) or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in losses):
        return None
    w = n // 10
    start = n - 10 * w
    means = [sum(losses[start + i * w:start + (i + 1) * w]) / w for i in range(10)]
    low = min(range(10), key=means.__getitem__)
    sigma = statistics.pstdev([b - a for a, b in zip(losses[start:], losses[start + 1:])]) / math.sqrt(2)
    rise = means[-1] - means[low]
    if low == 9 or rise <= max(0.25 * (means[0] - means[low]), 0.2 * means[low], 5 * sigma / math.sqrt(w)):
        return None
    return LateRise(means[low], (start + low * w + 1, start + (low + 1) * w), means[-1], w)


# ------------------------------------------------------------------------------------------- snapshots
class Snapshot:
    """A resumable snapshot of a run in one file (``torch.save`` of a dict of tensors and plain values),
    written atomically every ``every`` steps. ``inputs`` (fingerprints of the task data, the model, the
    tuner) are stored with it and checked on resume."""

    def __init__(self, path: Path, every: int, restart_hint: str):
        self.path, self.every, self.restart_hint = Path(path), every, restart_hint

    def exists(self) -> bool:
        return self.path.exists()

    def due(self, step: int, total: int) -> bool:
        return self.every > 0 and step % self.every == 0 and step < total

    def save(self, state: dict) -> None:
        try:
            with atomic_file(self.path) as tmp:
                torch.save(state, tmp)
        except Exception as e:  # noqa: BLE001 - only write errors are turned into one line
            if (e := os_error(e)) is None:
                raise
            raise write_failed(f"the snapshot {self.path}", e, "rerun the same command with --resume (the "
                               "previous snapshot, if any, is kept)") from None

    def load(self) -> dict:
        """The snapshot's state; a one-line error if it is unreadable."""
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
            raise ZotuneError(f"the snapshot {self.path} is unreadable ({type(e).__name__}), it may be truncated "
                              f"or corrupt; {self.restart_hint}") from None
        if not isinstance(state, dict) or not {"step", "config"} <= set(state):
            raise ZotuneError(f"the snapshot {self.path} is not a zotune snapshot; {self.restart_hint}")
        return state

    def check(self, state: dict, now: dict, default: dict, inputs: dict, ignore: Iterable[str] = ()) -> None:
        """Refuse to resume when the options or the inputs differ from the interrupted run's."""
        changed = changed_fields(dict(state["config"]), now, default, ignore)
        if changed:
            k = changed[0]
            raise ZotuneError(f"cannot resume: the interrupted run used {k}={state['config'].get(k)!r}, not "
                              f"{now[k]!r}; rerun with its options, or {self.restart_hint}")
        saved = state.get("inputs") or {}
        for what, digest in inputs.items():
            if what in saved and saved[what] != digest:
                raise ZotuneError(f"cannot resume: the {what} changed since the interrupted run (fingerprint "
                                  f"{str(saved[what])[:12]} then, {str(digest)[:12]} now); restore it, or "
                                  f"{self.restart_hint}")
