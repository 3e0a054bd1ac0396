"""Where zotune keeps downloaded and converted assets, and how it fetches packages into that cache."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from finetune.common.errors import ZotuneError


def cache_dir() -> Path:
    """The cache root: ``$ZOTUNE_CACHE`` if set, else ``~/.cache/zotune``."""
    root = Path(os.environ.get("ZOTUNE_CACHE") or Path.home() / ".cache" / "zotune")
    root.mkdir(parents=True, exist_ok=True)
    return root


def pip_download(requirement: str, filename_prefix: str) -> Path:
    """Download one PyPI distribution (no dependencies) into the cache once and return its path.

    ``requirement`` is ``name==version``; ``filename_prefix`` is the start of the distribution's file name
    (for example ``"bigbench-1.0.0"``), and a cached file with that prefix is reused without touching the
    network. pip is asked first (it honours the user's index settings); if it fails (recent pip refuses
    to prepare some old sdists, bigbench's among them), the file is fetched from PyPI's simple index and
    checked against its published SHA-256. Downloads land in a temporary folder and are renamed into
    place, so an interrupted download never leaves a partial file behind.
    """
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    found = sorted(p for p in downloads.iterdir() if p.name.startswith(filename_prefix) and p.is_file())
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".tmp-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = [p for p in Path(tmp).iterdir() if p.name.startswith(filename_prefix)]
        if not got:
            try:
                got = [_download_from_pypi(requirement, filename_prefix, Path(tmp))]
            except (OSError, ValueError, KeyError) as err:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise ZotuneError(f"could not download {requirement} from PyPI (pip: {last}; direct: {err}); "
                                  f"check the network, or place the file in {downloads}") from err
        final = downloads / got[0].name
        os.replace(got[0], final)
    return final


def _download_from_pypi(requirement: str, filename_prefix: str, dest: Path) -> Path:
    """Fetch the file of ``name==version`` whose name starts with ``filename_prefix`` through PyPI's
    simple index (its JSON form, PEP 691)."""
    name = requirement.partition("==")[0]
    request = urllib.request.Request(f"https://pypi.org/simple/{name}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        files = json.load(resp)["files"]
    entry = next((f for f in files if f["filename"].startswith(filename_prefix)), None)
    if entry is None:
        listed = ", ".join(f["filename"] for f in files[-3:]) or "nothing"
        raise ValueError(f"the index lists no {filename_prefix} file (it lists {listed})")
    path = dest / entry["filename"]
    digest = hashlib.sha256()
    with urllib.request.urlopen(entry["url"], timeout=60) as resp, open(path, "wb") as out:
        while block := resp.read(1 << 20):
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != entry["hashes"]["sha256"]:
        raise ValueError(f"SHA-256 mismatch for {entry['filename']}")
    return path
