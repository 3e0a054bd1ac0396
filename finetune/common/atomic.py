"""Atomic outputs: a folder or file appears complete under its final name, or not at all."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from finetune.common.errors import ZotuneError


def refuse_existing(out: Path) -> None:
    """Raise if ``out`` is a file or a non-empty folder: finished outputs are never overwritten."""
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise ZotuneError(f"output {out} already exists; choose another --out or delete it")


@contextmanager
def atomic_dir(out: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling folder to write into; rename it to ``out`` when the block succeeds,
    delete it when the block fails. An existing non-empty ``out`` is refused up front."""
    out = Path(out)
    refuse_existing(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield partial
        os.chmod(partial, 0o777 & ~_umask())  # mkdtemp makes the folder private (0700)
        if out.exists():
            out.rmdir()  # an empty folder made beforehand
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path in the same folder; move it onto ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private (0600); give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
