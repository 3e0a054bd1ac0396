"""ZOTrainer: a transformers.Trainer whose steps are zotune ZO steps. Checked against direct ZOSGD steps with
make_schedule on the same batches, bit-identical resumption from the Trainer's own checkpoints, the Trainer's
logging / evaluation / saving, and the refusal of settings it does not support."""
import copy
import json

import pytest
import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, TrainerCallback, TrainingArguments

from checkpoints import Tuner
from finetune.common.errors import ZotuneError
from finetune.data.models import load_model
from finetune.hf_trainer import ZOArguments, ZOTrainer
from finetune.zo.directions import make_direction_optimizer
from finetune.zo.optim import ZOSGD, TunedZO, make_schedule

torch.set_num_threads(1)
WORDS = ["apple", "stone", "river", "cloud", "green", "seven", "table", "light"]


def texts(n, offset=0):
    return [" ".join(WORDS[(i * 3 + k + offset) % len(WORDS)] for k in range(2 + i % 3)) for i in range(n)]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama", seed=1)


def lm_dataset(tokenizer, n, offset=0):
    return Dataset.from_dict({"text": texts(n, offset)}).map(lambda row: tokenizer(row["text"]),
                                                             remove_columns=["text"])


def training_args(tmp_path, **overrides):
    kw = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, learning_rate=1e-2, max_steps=4,
              seed=3, use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no", logging_steps=1,
              dataloader_num_workers=0)
    kw.update(overrides)
    return TrainingArguments(**kw)


class Recording(ZOTrainer):
    """Keeps a copy of every batch it steps on."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen = getattr(self, "seen", []) + [{k: v.clone() for k, v in inputs.items()}]
        return super().training_step(model, inputs, num_items_in_batch)


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_zotrainer_steps_are_zosgd_steps_with_the_trainers_schedule(tiny, tmp_path):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    reference = copy.deepcopy(model)
    collator = DataCollatorForLanguageModeling(tok, mlm=False)
    trainer = Recording(model=model, args=training_args(tmp_path, max_steps=3, lr_scheduler_type="linear"),
                        train_dataset=lm_dataset(tok, 6), data_collator=collator, zo_args=ZOArguments(eps=1e-3))
    trainer.train()
    assert len(trainer.seen) == 3

    opt = ZOSGD(reference, lr=1e-2, eps=1e-3, seed=3)          # the seed of TrainingArguments
    sched = make_schedule(opt, "linear", total_steps=3)        # HF's linear schedule without warm-up
    losses = []
    for batch in trainer.seen:
        losses.append(opt.step(lambda: reference(**batch).loss))
        sched.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(weights(model)[1], weights(tiny[0])[1])
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["loss"] for entry in logged] == pytest.approx(losses, rel=1e-6)
    assert [entry["learning_rate"] for entry in logged] == pytest.approx([1e-2, 1e-2 * 2 / 3, 1e-2 / 3])
    assert all("grad_norm" not in entry for entry in trainer.state.log_history)
    assert trainer.zo_optimizer.engine.forwards == 6 and all(p.grad is None for p in model.parameters())


def tiny_tuner(model):
    tuner = Tuner.for_model(model, "tiny-llama", seed=0)
    tuner.bank.randomize_output_(torch.Generator().manual_seed(0))
    return tuner


@pytest.mark.parametrize("zo", ["sgd", "adam-q2", "tuner-momentum"])
def test_resume_from_checkpoint_continues_exactly(tiny, tmp_path, zo):
    model, tok = tiny
    zo_args = {"sgd": ZOArguments(), "adam-q2": ZOArguments(optimizer="adam", q=2),
               "tuner-momentum": ZOArguments(optimizer="momentum", tuner=tiny_tuner(model))}[zo]
    data, collator = lm_dataset(tok, 8), DataCollatorForLanguageModeling(tok, mlm=False)

    def run(out, resume=None, **overrides):
        m = copy.deepcopy(model)
        args = training_args(tmp_path, output_dir=str(tmp_path / out), save_strategy="steps", save_steps=2,
                             **overrides)
        ZOTrainer(model=m, args=args, train_dataset=data, data_collator=collator,
                  zo_args=copy.deepcopy(zo_args)).train(resume_from_checkpoint=resume)
        return weights(m)

    straight = run("straight")                                     # 4 steps; saves checkpoint-2 on the way
    checkpoint = tmp_path / "straight" / "checkpoint-2"
    assert "zo" in torch.load(checkpoint / "optimizer.pt", weights_only=True)  # the seed stream is saved
    resumed = run("resumed", resume=str(checkpoint))               # a fresh model and trainer, steps 3 and 4
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed))
    assert not all(torch.equal(a, b) for a, b in zip(straight, weights(model)))
    (checkpoint / "optimizer.pt").unlink()                          # without the ZO state the run differs
    (checkpoint / "scheduler.pt").unlink()
    forgetful = run("forgetful", resume=str(checkpoint))
    assert not all(torch.equal(a, b) for a, b in zip(straight, forgetful))


class LogRecorder(TrainerCallback):
    """What a report_to integration receives: every on_log call."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs)))


def test_logging_evaluation_and_saving(tiny, tmp_path):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    collator = DataCollatorForLanguageModeling(tok, mlm=False)
    eval_data = lm_dataset(tok, 4, offset=1)
    recorder = LogRecorder()
    args = training_args(tmp_path, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4,
                         save_strategy="steps", save_steps=4, logging_steps=2)
    trainer = Recording(model=model, args=args, train_dataset=lm_dataset(tok, 8), eval_dataset=eval_data,
                        data_collator=collator, callbacks=[recorder])
    trainer.train()
    losses = {step: logs for step, logs in recorder.logs if "loss" in logs}
    evals = {step: logs["eval_loss"] for step, logs in recorder.logs if "eval_loss" in logs}
    assert sorted(losses) == [2, 4] and sorted(evals) == [2, 4]
    with torch.no_grad():  # the final eval loss, computed directly on the trained model
        batch = collator([eval_data[i] for i in range(4)])
        assert evals[4] == pytest.approx(model(**batch).loss.item(), rel=1e-5)
    saved = tmp_path / "out" / "checkpoint-4"
    assert json.loads((saved / "trainer_state.json").read_text())["global_step"] == 4
    reloaded, _ = load_model(str(saved))
    assert all(torch.equal(a, b) for a, b in zip(reloaded.parameters(), model.parameters()))


@pytest.mark.parametrize("overrides, zo_kwargs, message", [
    (dict(gradient_accumulation_steps=2), {}, "set gradient_accumulation_steps=1"),
    (dict(bf16=True), {}, "does not use mixed precision"),
    (dict(activation_checkpointing=True), {}, "ZO has no backward pass"),
    ({}, dict(zo_args=ZOArguments(optimizer="lion")), "unknown ZO optimizer 'lion'"),
    ({}, "sgd", "needs a zotune ZO optimizer, not SGD"),
])
def test_unsupported_settings_are_one_line_errors(tiny, tmp_path, overrides, zo_kwargs, message):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    if zo_kwargs == "sgd":
        zo_kwargs = dict(optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None))
    with pytest.raises(ZotuneError, match=message) as err:
        ZOTrainer(model=model, args=training_args(tmp_path, **overrides), train_dataset=lm_dataset(tok, 4),
                  data_collator=DataCollatorForLanguageModeling(tok, mlm=False), **zo_kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("make", [
    lambda model: ZOSGD(model, lr=5e-3, eps=1e-3, momentum=0.5, seed=11),
    lambda model: make_direction_optimizer("greedy", "sgd", model, lr=5e-3, eps=1e-3, seed=11, candidates=3),
], ids=["momentum", "greedy"])
def test_a_ready_zo_optimizer_can_be_passed(tiny, tmp_path, make):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    reference = copy.deepcopy(model)
    opt = make(model)
    trainer = Recording(model=model, args=training_args(tmp_path, max_steps=2, lr_scheduler_type="constant"),
                        train_dataset=lm_dataset(tok, 4), data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
                        optimizers=(opt, None))
    trainer.train()
    assert trainer.zo_optimizer is opt
    ref = make(reference)
    for batch in trainer.seen:
        ref.step(lambda: reference(**batch).loss)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))
    assert opt.engine.forwards == ref.engine.forwards > 0


def test_a_tuner_file_drives_the_steps(tiny, tmp_path):
    model, tok = tiny
    tuner = tiny_tuner(model)
    tuner.save_pretrained(tmp_path / "tuner.safetensors")
    finals = []
    for spec in (tuner, str(tmp_path / "tuner.safetensors")):
        m = copy.deepcopy(model)
        trainer = ZOTrainer(model=m, args=training_args(tmp_path, max_steps=2), train_dataset=lm_dataset(tok, 4),
                            data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
                            zo_args=ZOArguments(tuner=spec))
        trainer.train()
        assert isinstance(trainer.zo_optimizer, TunedZO)
        finals.append(weights(m))
    assert all(torch.equal(a, b) for a, b in zip(*finals))
    sgd = copy.deepcopy(model)
    ZOTrainer(model=sgd, args=training_args(tmp_path, max_steps=2), train_dataset=lm_dataset(tok, 4),
              data_collator=DataCollatorForLanguageModeling(tok, mlm=False)).train()
    assert not all(torch.equal(a, b) for a, b in zip(finals[0], sgd.parameters()))   # the tuner's scales matter


@pytest.mark.parametrize("step", ["head", "top"])
def test_a_tuner_with_an_exact_step_is_refused_not_dropped(tiny, tmp_path, step):
    """A tuner carrying the head step or the top-block step is refused (ZOTrainer's loss is not an option
    cross-entropy); the same tuner without it (``with_head(0)``, ``with_top(0)``) runs."""
    model, tok = tiny
    tuner = getattr(tiny_tuner(model), f"with_{step}")(1e-3)
    args = dict(model=copy.deepcopy(model), args=training_args(tmp_path, max_steps=1), train_dataset=lm_dataset(tok, 2),
                data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    with pytest.raises(ZotuneError, match=f"with_{step}"):
        ZOTrainer(**args, zo_args=ZOArguments(tuner=tuner)).train()
    ZOTrainer(**args, zo_args=ZOArguments(tuner=getattr(tuner, f"with_{step}")(0))).train()  # the bank alone runs


class Scaled(ZOTrainer):
    """The Trainer's loss times ``factor(step)`` (step counted from 1): a loss that climbs back late, or does not."""

    factor = staticmethod(lambda step: 1.0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return loss * self.factor(self.state.global_step + 1)


@pytest.mark.parametrize("late", [True, False])
def test_a_late_climb_of_the_training_loss_gets_a_warning(tiny, tmp_path, caplog, late):
    """lr 0 (the weights stay), 60 steps; the loss tripled from step 41 on: late_rise and one warning line naming the
    Trainer's own settings; tripled from the first step: neither (the rule of cli.py finetune's note)."""
    from finetune.common.runs import late_rise

    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    trainer = Scaled(model=model, args=training_args(tmp_path, max_steps=60, learning_rate=0.0),
                     train_dataset=lm_dataset(tok, 12), data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    trainer.factor = (lambda step: 3.0 if step > 40 else 1.0) if late else (lambda step: 3.0)
    with caplog.at_level("WARNING", logger="finetune.hf_trainer"):
        trainer.train()
    assert len(trainer.zo_losses) == 60
    assert trainer.zo_losses == pytest.approx([e["loss"] for e in trainer.state.log_history if "loss" in e], rel=1e-6)
    warned = [r.getMessage() for r in caplog.records if r.name == "finetune.hf_trainer"]
    if late:
        assert trainer.late_rise == late_rise(trainer.zo_losses) and trainer.late_rise is not None
        assert trainer.late_rise.last > 2 * trainer.late_rise.lowest
        assert len(warned) == 1 and "rose late" in warned[0] and "lr_scheduler_type='linear'" in warned[0], warned
        assert "--schedule" not in warned[0]
    else:
        assert trainer.late_rise is None and warned == []
