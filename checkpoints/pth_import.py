"""Import a published ZO Fine-tuner tuner (a pickled ``.pth`` file) as a zotune artifact, without
ever running pickled code.

The ZO Fine-tuner repository publishes one file per base model (docs/public-code.md): a ``torch.save`` zip archive whose
pickle is a ``dict`` from parameter name to ``Sequential(Linear(5, H), Tanh(), Linear(H, 1))`` (H = 64),
with whole module objects and CUDA device tags. ``torch.load`` would need ``weights_only=False`` and
so would execute whatever the pickle asks for. Instead this module reads the zip itself and unpickles
``data.pkl`` with :class:`RestrictedUnpickler`, whose ``find_class`` hands out only inert stand-ins:

* ``Sequential``/``Linear``/``Tanh`` become record-only classes (their ``__setstate__`` stores the state
  dict; no real ``nn.Module`` code runs);
* ``torch._utils._rebuild_tensor_v2``/``_rebuild_parameter`` become functions that view the bytes of a
  storage read from the archive (``torch.frombuffer`` + ``as_strided``, bounds-checked by torch);
* ``torch.FloatStorage`` and the other floating-point storage types only name a dtype; the storage's
  device tag (``cuda:3``) is ignored, everything lands on the CPU;
* ``collections.OrderedDict`` and ``set`` are the real (harmless) containers.

The stand-ins are made afresh for every file (classes, storage types, the rebuild functions), so even a
crafted pickle that sets attributes on them cannot change a later import.
Any other global -- ``os.system``, ``builtins.exec``, ``subprocess.Popen``, even a real torch class -- is
refused with a one-line :class:`ZotuneError` before it is looked up, so a malicious ``__reduce__`` never
runs. The legacy (pre-zip, torch < 1.6) format is refused too.

The converted tuner uses the paper's compatibility mode: raw features (``FeatureConfig(kind="raw")``),
``σ = |MLP(x)|`` (``PertNNConfig(output="abs")``), hidden width from the file (64), energy normalisation
on (every published file has ``need_normalization``). Energy normalisation counts plain block numels by
default; ``paper_batch=N`` stores the paper's effective sizes instead (blocks whose name contains
``embed`` count ``15 · N · shape[1]``), which is what reproduces its σ exactly for a run with
per-device batch × world size N.
"""
from __future__ import annotations

import datetime
import hashlib
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from checkpoints.artifact import BANK_TENSORS, Tuner
from finetune.common.errors import ZotuneError
from pertnn import FeatureConfig, PertNNBank, PertNNConfig, model_blocks

N_FEATURES = 5
MAX_PICKLE_BYTES = 64 << 20     # the published files' pickles are a few hundred kB
MAX_ARCHIVE_BYTES = 256 << 20  # all members uncompressed; the published files are a few MB
PAPER_EMBED_TOKENS = 15  # the paper's "tokens per example" in an embedding block's effective size


class _Record:
    """A stand-in for a pickled ``nn.Module`` (its subclasses name one): keeps the state dict that
    unpickling hands to it, runs nothing else."""

    module = "?"

    def __setstate__(self, state):
        self.__dict__["_state"] = state if isinstance(state, dict) else {}

    @property
    def state(self) -> dict:
        return self.__dict__.get("_state", {})


class _StorageType:
    """A stand-in for ``torch.FloatStorage`` and friends: only names a dtype."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _Storage:
    def __init__(self, data: torch.Tensor):
        self.data = data


_MODULES = {("torch.nn.modules.container", "Sequential"), ("torch.nn.modules.linear", "Linear"),
            ("torch.nn.modules.activation", "Tanh")}
_STORAGES = {"FloatStorage": torch.float32, "HalfStorage": torch.float16,
             "BFloat16Storage": torch.bfloat16, "DoubleStorage": torch.float64}
_CONTAINERS = {("collections", "OrderedDict"): OrderedDict, ("builtins", "set"): set,
               ("__builtin__", "set"): set}  # protocol 2 names builtins the Python 2 way
_REBUILD = {"_rebuild_tensor_v2": "rebuild_tensor", "_rebuild_parameter": "rebuild_parameter",
            "_rebuild_parameter_with_state": "rebuild_parameter"}
ALLOWED = sorted({".".join(k) for k in _MODULES | set(_CONTAINERS)}
                 | {f"torch.{n}" for n in _STORAGES} | {f"torch._utils.{n}" for n in _REBUILD})


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles the ZO Fine-tuner layout from a torch zip archive; refuses every global not in
    :data:`ALLOWED` (and hands out inert stand-ins for those that are; see the module docstring).

    ``archive`` is the open zip and ``root`` its top folder; storages are read from ``root/data/<key>``.
    """

    def __init__(self, file, archive: zipfile.ZipFile, root: str, source: str):
        super().__init__(file)
        self.archive, self.root, self.source = archive, root, source
        self.storages: dict[str, _Storage] = {}
        self.stand_ins: dict[tuple[str, str], object] = {}

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in _CONTAINERS:
            return _CONTAINERS[key]
        if key not in self.stand_ins:
            if key in _MODULES:
                self.stand_ins[key] = type(f"Stub{name}", (_Record,), {"module": name})
            elif module == "torch" and name in _STORAGES:
                self.stand_ins[key] = _StorageType(_STORAGES[name])
            elif module == "torch._utils" and name in _REBUILD:
                rebuild = getattr(self, _REBUILD[name])
                self.stand_ins[key] = lambda *args, **kwargs: rebuild(*args, **kwargs)  # a fresh function
            else:
                raise ZotuneError(f"{self.source} asks to load {module}.{name}, which a ZO Fine-tuner tuner "
                                  "never needs; refused without running it (the file is not a plain tuner "
                                  "and may be malicious)")
        return self.stand_ins[key]

    def rebuild_tensor(self, storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> torch.Tensor:
        if not isinstance(storage, _Storage):
            raise pickle.UnpicklingError("a tensor does not point to a storage of the archive")
        ints = lambda xs: isinstance(xs, (tuple, list)) and all(type(x) is int and x >= 0 for x in xs)  # noqa: E731
        if not (ints(size) and ints(stride) and len(size) == len(stride) and type(storage_offset) is int
                and storage_offset >= 0):
            raise pickle.UnpicklingError("a tensor has a malformed size, stride or offset")
        numel, last = 1, storage_offset
        for n, st in zip(size, stride):
            numel *= n
            last += (n - 1) * st if n else 0
        available = storage.data.numel()
        if numel and (numel > available or last >= available):  # checked before anything is allocated
            raise pickle.UnpicklingError(f"a tensor of {numel} elements (size {list(size)}, stride {list(stride)}) "
                                         f"does not fit its storage of {available}")
        return torch.as_strided(storage.data, tuple(size), tuple(stride), int(storage_offset)).clone()

    def rebuild_parameter(self, data, requires_grad=False, backward_hooks=None, state=None) -> torch.Tensor:
        if not isinstance(data, torch.Tensor):
            raise pickle.UnpicklingError("a parameter does not hold a tensor")
        return data

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, kind, key, _location, numel = pid  # the device tag is ignored: everything is read to the CPU
        if key not in self.storages:
            name = f"{self.root}/data/{key}"
            itemsize = torch.empty((), dtype=kind.dtype).element_size()
            try:
                declared = self.archive.getinfo(name).file_size
            except KeyError:
                raise pickle.UnpicklingError(f"storage {key} is not in the archive") from None
            if declared != numel * itemsize:  # checked before reading: the archive's size is bounded
                raise pickle.UnpicklingError(f"storage {key} has {declared} bytes, expected {numel * itemsize}")
            raw = self.archive.read(name)
            if len(raw) != numel * itemsize:
                raise pickle.UnpicklingError(f"storage {key} has {len(raw)} bytes, expected {numel * itemsize}")
            data = torch.frombuffer(bytearray(raw), dtype=kind.dtype) if raw else torch.empty(0, dtype=kind.dtype)
            self.storages[key] = _Storage(data)
        return self.storages[key]


def read_pth(path: str | Path) -> tuple[dict[str, tuple[torch.Tensor, ...]], str]:
    """The MLPs of a published ``.pth`` tuner as ``{name: (W1 [H,F], b1 [H], W2 [1,H], b2 [1])}`` in file
    order (float32, CPU), and the archive's root folder name (the original run tag)."""
    path = Path(path)
    if not path.is_file():
        raise ZotuneError(f"{path} not found; give the path of a ZO Fine-tuner .pth file")
    if not zipfile.is_zipfile(path):
        raise ZotuneError(f"{path} is not a torch zip archive; only the zip format of torch.save (torch >= 1.6), "
                          "which the published ZO Fine-tuner files use, can be imported")
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        total = sum(i.file_size for i in infos)
        if total > MAX_ARCHIVE_BYTES:
            raise ZotuneError(f"{path} unpacks to {total} bytes, more than a tuner file ever holds "
                              f"({MAX_ARCHIVE_BYTES}); refused (it may be a zip bomb)")
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ZotuneError(f"{path} is a zip file but not a torch.save archive (no single <root>/data.pkl)")
        root = pickles[0].split("/", 1)[0]
        byteorder = f"{root}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise ZotuneError(f"{path} was saved on a big-endian machine; this is not supported")
        if archive.getinfo(pickles[0]).file_size > MAX_PICKLE_BYTES:
            raise ZotuneError(f"{path} has a pickle of {archive.getinfo(pickles[0]).file_size} bytes, more than a "
                              f"tuner file ever holds ({MAX_PICKLE_BYTES}); refused")
        with archive.open(pickles[0]) as f:
            unpickler = RestrictedUnpickler(f, archive, root, str(path))
            try:
                mlps = _mlps(unpickler.load(), path)
            except ZotuneError:
                raise
            except Exception as e:  # noqa: BLE001 - any malformed pickle is the file's problem
                raise ZotuneError(f"{path} is not a readable ZO Fine-tuner tuner ({type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no detail'})") from None
    return mlps, root


def _module(obj) -> str | None:
    return type(obj).module if isinstance(obj, _Record) else None


def _mlps(obj, path: Path) -> dict[str, tuple[torch.Tensor, ...]]:
    def bad(what: str) -> ZotuneError:
        return ZotuneError(f"{path} does not have the ZO Fine-tuner layout (a dict from parameter name to "
                           f"Sequential(Linear({N_FEATURES}, H), Tanh, Linear(H, 1))): {what}")

    if not isinstance(obj, dict) or not obj:
        raise bad(f"the pickle holds {type(obj).__name__}, not a non-empty dict")
    out, hidden = {}, None
    for name, seq in obj.items():
        if not isinstance(name, str) or _module(seq) != "Sequential":
            raise bad(f"entry {name!r:.60} is not a Sequential")
        mods = seq.state.get("_modules") or {}
        layers = [mods.get(k) for k in ("0", "1", "2")]
        if len(mods) != 3 or [_module(m) for m in layers] != ["Linear", "Tanh", "Linear"]:
            raise bad(f"{name!r} is not Linear, Tanh, Linear")
        tensors = []
        for layer in (layers[0], layers[2]):
            params = layer.state.get("_parameters") or {}
            for key in ("weight", "bias"):
                t = params.get(key)
                if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                    raise bad(f"{name!r}: a Linear has no floating-point {key}")
                tensors.append(t.to(torch.float32))
        w1, b1, w2, b2 = tensors
        h = w1.shape[0]
        if (w1.shape, b1.shape, w2.shape, b2.shape) != ((h, N_FEATURES), (h,), (1, h), (1,)) or h < 1:
            raise bad(f"{name!r} has shapes {[list(t.shape) for t in tensors]}")
        if hidden is not None and h != hidden:
            raise bad(f"{name!r} has hidden width {h}, other blocks {hidden}")
        if not all(bool(torch.isfinite(t).all()) for t in tensors):
            raise bad(f"{name!r} holds non-finite weights")
        hidden = h
        out[name] = (w1, b1, w2, b2)
    return out


def convert(path: str | Path, model: nn.Module, base_model: str, paper_batch: int | None = None) -> Tuner:
    """A :class:`Tuner` for ``model``'s architecture holding the published MLPs of ``path``, in the paper's
    compatibility mode (see the module docstring). Every block of ``model`` must have exactly one MLP."""
    path = Path(path)
    mlps, root = read_pth(path)
    blocks = model_blocks(model)
    names = [b.name for b in blocks]
    missing = [n for n in names if n not in mlps]
    if missing:
        raise ZotuneError(f"{path} has no MLP for block {missing[0]!r} of {base_model} ({len(missing)} of "
                          f"{len(names)} blocks missing); it was made for another model: pass its --model")
    extra = [k for k in mlps if k not in set(names)]
    if extra:
        raise ZotuneError(f"{path} has an MLP for {extra[0]!r}, which {base_model} does not have as a trainable "
                          f"tensor ({len(extra)} such); it was made for another model: pass its --model")
    if paper_batch is not None and paper_batch < 1:
        raise ZotuneError("--paper-batch must be at least 1")
    hidden = mlps[names[0]][0].shape[0]
    tuner = Tuner.for_model(model, base_model, PertNNConfig(hidden=hidden, n_features=N_FEATURES,
                                                            energy_norm=True, output="abs"),
                            FeatureConfig(kind="raw"))
    if paper_batch is not None:
        for b in tuner.blocks:
            if "embed" in b["name"] and len(b["shape"]) == 2:
                b["energy_numel"] = PAPER_EMBED_TOKENS * paper_batch * int(b["shape"][1])
    tuner.bank = PertNNBank([b.get("energy_numel", b["numel"]) for b in tuner.blocks], tuner.bank.cfg)
    with torch.no_grad():
        for k, stacked in zip(BANK_TENSORS, zip(*(mlps[n] for n in names))):
            getattr(tuner.bank, k).copy_(torch.stack(stacked).reshape(getattr(tuner.bank, k).shape))
    tuner.provenance = {
        "imported_from": {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                          "run_tag": root, "format": "ZO Fine-tuner .pth (dict of Sequential)"},
        "energy_numels": ("plain block numels" if paper_batch is None else
                          f"paper: blocks named *embed* count {PAPER_EMBED_TOKENS}*{paper_batch}*hidden"),
        "meta_tasks": [],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return tuner
