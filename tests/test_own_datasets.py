"""Users' own tables as tasks: CSV, JSON/JSONL, parquet and save_to_disk folders, read with `datasets` and
mapped to examples by column options (load_task(..., columns=TaskColumns(...)), task_from_dataset, the CLI)."""
import csv
import json
import random

import datasets
import pytest

import cli
from finetune.common.errors import ZotuneError
from finetune.data.tasks import Example, TaskColumns, load_task, task_from_dataset

REVIEWS = [(f"review {i}: {'good' if i % 3 else 'bad'} stuff.", i % 3 != 0) for i in range(30)]


def reference_split(examples, seed, n_train, n_dev, n_test):
    """The documented split, written out: shuffle with random.Random(seed), cut test, then dev, then train."""
    pool = list(examples)
    random.Random(seed).shuffle(pool)
    return pool[n_test + n_dev:n_test + n_dev + n_train], pool[n_test:n_test + n_dev], pool[:n_test]


def write_csv(path, header, rows):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def test_csv_with_label_words(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", ["text", "sentiment"], [(t, int(y)) for t, y in REVIEWS])
    columns = TaskColumns(input="text", label_words=("no", "yes"), label="sentiment")
    task = load_task(path, seed=5, n_train=20, n_dev=4, n_test=6, columns=columns)
    expected = [Example(t, (" no", " yes"), int(y)) for t, y in REVIEWS]
    assert (task.name, task.kind, task.metric) == (path, "mc", "accuracy")
    assert (task.train, task.dev, task.test) == reference_split(expected, 5, 20, 4, 6)
    assert task == load_task(path, seed=5, n_train=20, n_dev=4, n_test=6, columns=columns)   # deterministic
    assert load_task(path, seed=6, n_train=20, n_dev=4, n_test=6, columns=columns).test != task.test


def test_labels_given_as_option_text(tmp_path):
    path = write_csv(tmp_path / "words.csv", ["text", "answer"], [(t, "yes" if y else "no") for t, y in REVIEWS])
    task = load_task(path, n_train=30, n_dev=0, n_test=0,
                     columns=TaskColumns(input="text", label_words="no,yes", label="answer"))
    assert sorted(task.train, key=lambda e: e.prompt) == sorted(
        (Example(t, (" no", " yes"), int(y)) for t, y in REVIEWS), key=lambda e: e.prompt)


def test_zotune_jsonl_unchanged_and_equal_to_the_datasets_reader(tmp_path):
    rows = [{"input": f"{t} It was", "options": [" bad", " good"], "label": int(y)} for t, y in REVIEWS]
    path = tmp_path / "own.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = [Example(r["input"], tuple(r["options"]), r["label"]) for r in rows]
    plain = load_task(str(path), seed=2, n_train=20, n_dev=5, n_test=5)                 # zotune's own reader
    assert (plain.train, plain.dev, plain.test) == reference_split(expected, 2, 20, 5, 5)
    mapped = load_task(str(path), seed=2, n_train=20, n_dev=5, n_test=5,                # read with datasets
                       columns=TaskColumns(options="options", label="label"))
    assert mapped == plain


def test_json_parquet_and_save_to_disk_in_the_users_columns(tmp_path):
    rows = {"question": [f"What is {i} + 1?" for i in range(12)],
            "choices": [[f" {i + 1}", f" {i + 2}", f" {i}"] for i in range(12)],
            "gold": [i % 3 for i in range(12)]}
    expected = [Example(q, tuple(c), g) for q, c, g in zip(rows["question"], rows["choices"], rows["gold"])]
    (tmp_path / "mc.json").write_text(json.dumps([dict(zip(rows, v)) for v in zip(*rows.values())]))
    table = datasets.Dataset.from_dict(rows)
    table.to_parquet(str(tmp_path / "mc.parquet"))
    table.save_to_disk(str(tmp_path / "mc_folder"))
    columns = TaskColumns(input="question", options="choices", label="gold")
    for spec in ("mc.json", "mc.parquet", "mc_folder"):
        task = load_task(str(tmp_path / spec), seed=1, n_train=8, n_dev=2, n_test=2, columns=columns)
        assert (task.train, task.dev, task.test) == reference_split(expected, 1, 8, 2, 2), spec
    in_memory = task_from_dataset(table, columns, name="mine", seed=1, n_train=8, n_dev=2, n_test=2)
    assert (in_memory.name, in_memory.train, in_memory.test) == ("mine", task.train, task.test)


def test_generation_columns_and_a_dataset_dict_folder(tmp_path):
    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"q": ["Capital of France?", "2+2?"], "a": [" Paris", " 4"]}),
        "test": datasets.Dataset.from_dict({"q": ["Colour of the sky?"], "a": [" blue"]})})
    splits.save_to_disk(str(tmp_path / "qa"))
    task = load_task(str(tmp_path / "qa"), n_train=3, n_dev=0, n_test=0,
                     columns=TaskColumns(input="q", target="a"))
    assert task.kind == "gen" and task.metric == "f1"
    assert sorted(task.train, key=lambda e: e.prompt) == [
        Example("2+2?", answers=(" 4",)), Example("Capital of France?", answers=(" Paris",)),
        Example("Colour of the sky?", answers=(" blue",))]
    answers = datasets.Dataset.from_dict({"q": ["a?", "b?"], "a": [[" x", " y"], [" z"]]})
    assert task_from_dataset(answers, TaskColumns(input="q", target="a"), n_train=2, n_dev=0, n_test=0).train \
        == reference_split([Example("a?", answers=(" x", " y")), Example("b?", answers=(" z",))], 0, 2, 0, 0)[0]


def test_a_table_in_zotune_columns_needs_no_column_options(tmp_path):
    path = write_csv(tmp_path / "qa.csv", ["input", "target"], [("Q1:", " a1"), ("Q2:", " a2"), ("Q3:", " a3")])
    task = load_task(path, n_train=3, n_dev=0, n_test=0)
    assert sorted(e.answers[0] for e in task.train) == [" a1", " a2", " a3"]
    other = write_csv(tmp_path / "other.csv", ["text", "y"], [("a", 0), ("b", 1)])
    with pytest.raises(ZotuneError, match=r"say which columns to use.*its columns are text, y$"):
        load_task(other)


@pytest.mark.parametrize("columns, rows, message", [
    (TaskColumns(input="txt", label_words="no,yes", label="y"), [("a", 0)],
     r"no column 'txt' \(the input column\); did you mean 'text'\? its columns are text, y; set --input-column"),
    (TaskColumns(input="text", label_words="no,yes", label="label"), [("a", 0)],
     r"no column 'label' \(the label column\).*set --label-column"),
    (TaskColumns(input="text", label_words="no,yes", label="y"), [("a", 0), ("b", 1), ("c", 2)],
     r"data.csv, row 3: label 2 in column 'y' is out of range; use 0 to 1"),
    (TaskColumns(input="text", label_words="no,yes", label="y"), [("a", "yes"), ("b", "maybe")],
     r"data.csv, row 2: label 'maybe' in column 'y' is not one of the options 'no', 'yes'"),
    (TaskColumns(input="text", options="y", label="y"), [("a", 0)],
     r"row 1: column 'y' \(the options\) must hold a list of non-empty strings.*use --label-words"),
])
def test_mistakes_name_the_column_or_row(tmp_path, columns, rows, message):
    path = write_csv(tmp_path / "data.csv", ["text", "y"], rows)
    with pytest.raises(ZotuneError, match=message) as err:
        load_task(path, columns=columns)
    assert "\n" not in str(err.value)


def test_contradictory_or_misplaced_column_options():
    with pytest.raises(ZotuneError, match="either to multiple choice"):
        TaskColumns(input="text", label="y")                      # no options
    with pytest.raises(ZotuneError, match="not both"):
        TaskColumns(target="a", label="y", label_words="no,yes")
    with pytest.raises(ZotuneError, match="at least 2 distinct"):
        TaskColumns(label="y", label_words="yes,yes")
    with pytest.raises(ZotuneError, match="column options apply to a CSV"):
        load_task("bigbench:strategyqa", columns=TaskColumns(target="a"))
    with pytest.raises(ZotuneError, match="does not exist"):
        load_task("no/such/file.parquet", columns=TaskColumns(target="a"))


def test_cli_fine_tunes_on_a_csv_and_reports_a_wrong_column(tmp_path, capsys):
    path = write_csv(tmp_path / "reviews.csv", ["text", "sentiment"], [(t, int(y)) for t, y in REVIEWS])
    task = ["--task", path, "--input-column", "text", "--label-words", "no,yes"]
    out = tmp_path / "run"
    assert cli.main(["finetune", "--model", "tiny-llama", *task, "--label-column", "sentiment", "--steps", "2",
                     "--batch-size", "4", "--n-test", "6", "--no-save-model", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == path and metrics["eval"]["n"] == 6 and metrics["forwards"] == 4
    assert metrics["config"]["label_words"] == "no,yes" and metrics["config"]["label_column"] == "sentiment"
    capsys.readouterr()
    assert cli.main(["finetune", "--model", "tiny-llama", *task, "--label-column", "sentimnet",
                     "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no column 'sentimnet'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists() and not (tmp_path / ".bad.partial").exists()
