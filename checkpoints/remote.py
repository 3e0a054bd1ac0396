"""Tuner files on the Hugging Face Hub: ``hf://`` specs, repository ids, and downloads into the cache.

``hf://owner/name`` means that repository's ``tuner.safetensors``; ``hf://owner/name/path/file.safetensors``
another file in it. Pulled files live in ``<cache>/tuners/<owner>--<name>/``. Every Hub failure (offline,
missing repository or file, refused upload) becomes a one-line :class:`ZotuneError`. This module knows
nothing of the artifact's contents, so the artifact can resolve ``hf://`` specs through it.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from finetune.common.cache import cache_dir
from finetune.common.errors import ZotuneError, first_line

TUNER_FILE = "tuner.safetensors"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REPO = re.compile(rf"{_NAME}/{_NAME}")


def check_repo(repo: str) -> str:
    """``repo`` if it is a Hub repository id ``owner/name``, else a one-line error."""
    if not _REPO.fullmatch(repo) or ".." in repo or "--" in repo or repo.endswith(".git"):
        raise ZotuneError(f"{repo!r} is not a Hugging Face Hub repository id; use owner/name")
    return repo


def parse_hf(spec: str) -> tuple[str, str]:
    """``hf://owner/name[/path/in/repo]`` -> ``(owner/name, path in repo)`` (``tuner.safetensors`` by default)."""
    if not spec.startswith("hf://"):
        raise ZotuneError(f"{spec!r} is not an hf:// spec; use hf://owner/name or hf://owner/name/file.safetensors")
    parts = spec[len("hf://"):].strip("/").split("/")
    if len(parts) < 2:
        raise ZotuneError(f"{spec!r} names no repository; use hf://owner/name or hf://owner/name/file.safetensors")
    repo = check_repo("/".join(parts[:2]))
    filename = "/".join(parts[2:]) or TUNER_FILE
    if any(p in ("", ".", "..") for p in parts[2:]):
        raise ZotuneError(f"{spec!r} has an invalid file path in the repository")
    return repo, filename


def hub_error(what: str, repo: str, exc: Exception, hint: str) -> ZotuneError:
    """A one-line error for a failed Hub call; ``hint`` says what to do when the Hub is unreachable."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)):
        why = " (HF_HUB_OFFLINE is set)" if constants.is_offline_mode() else ""
        return ZotuneError(f"cannot {what}: the Hugging Face Hub is unreachable{why}; {hint}")
    if isinstance(exc, GatedRepoError):
        return ZotuneError(f"cannot {what}: {repo} is gated; accept its terms on the Hub and log in (hf auth login)")
    if isinstance(exc, RepositoryNotFoundError):
        return ZotuneError(f"cannot {what}: no repository {repo} on the Hugging Face Hub (if it is private, "
                           "log in with `hf auth login`)")
    if isinstance(exc, EntryNotFoundError):
        return ZotuneError(f"cannot {what}: {repo} has no such file ({first_line(exc)})")
    if isinstance(exc, HfHubHTTPError):
        return ZotuneError(f"cannot {what}: the Hub answered {first_line(exc)} (log in with `hf auth login` "
                           "for write access)")
    return ZotuneError(f"cannot {what}: {type(exc).__name__}: {first_line(exc)}")


def tuner_cache(repo: str) -> Path:
    """The local folder of the tuners pulled from ``repo``."""
    return cache_dir() / "tuners" / check_repo(repo).replace("/", "--")


def download(repo: str, filename: str = TUNER_FILE) -> Path:
    """Fetch ``filename`` of Hub repository ``repo`` into :func:`tuner_cache` (unvalidated); return its path."""
    import huggingface_hub

    if filename.startswith("/") or any(part in ("", ".", "..") for part in filename.split("/")):
        raise ZotuneError(f"{filename!r} is not a file path inside a repository; use a name such as "
                          f"{TUNER_FILE} or v2/{TUNER_FILE}")
    folder = tuner_cache(repo)
    made = [p for p in (folder.parent, folder) if not p.exists()]
    try:
        path = huggingface_hub.hf_hub_download(repo_id=check_repo(repo), filename=filename, local_dir=folder)
    except Exception as e:  # noqa: BLE001 - every Hub failure is reported on one line
        for p in reversed(made):  # leave no empty folders behind (the Hub client's own metadata aside)
            if p.is_dir() and not any(f.is_file() and ".cache" not in f.relative_to(p).parts for f in p.rglob("*")):
                shutil.rmtree(p, ignore_errors=True)
        raise hub_error(f"pull {filename} from {repo}", repo, e,
                         "check the network, or copy the .safetensors file over and pass its path") from None
    return Path(path)


def resolve(spec: str | Path) -> Path:
    """A tuner's local path: ``spec`` itself, or for ``hf://owner/name[/file]`` the downloaded file."""
    if str(spec).startswith("hf://"):
        return download(*parse_hf(str(spec)))
    return Path(spec)
