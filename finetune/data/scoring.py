"""Task losses and metrics on a causal LM: scoring continuations, the training loss, and evaluation.

Following MeZO and ZO Fine-tuner:

* multiple choice: each option is scored by the mean log-probability of its tokens after the prompt;
  the loss is the cross-entropy over the options' scores, the prediction their argmax (accuracy);
* generation: the loss is the LM loss on the answer tokens only; evaluation decodes greedily after the
  prompt, stops at a newline and reports SQuAD token F1 against the gold answers.

Sequences are left-padded, so the scored tokens are always the last ones of each row and the model
only has to produce logits for the last few positions (``logits_to_keep``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from finetune.data.tasks import Example, f1_score


def _peft_before(version: str) -> bool:
    """Whether the installed peft is older than ``version``."""
    import peft
    from packaging.version import Version

    return Version(peft.__version__) < Version(version)


def _wide(logits: torch.Tensor) -> torch.Tensor:
    """Logits in at least float32 (fp16/bf16 are widened; float64 stays float64 for exact checks)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class TaskScorer:
    """Turns :class:`~finetune.data.tasks.Example` batches into token batches, losses and metrics."""

    def __init__(self, tokenizer, max_length: int = 256, max_new_tokens: int = 32):
        self.tok = tokenizer
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._cache: dict[tuple[str, bool], list[int]] = {}

    # ---- tokenisation -------------------------------------------------------------------------
    def token_ids(self, text: str, special: bool) -> list[int]:
        """``text``'s token ids (with the tokenizer's special tokens when ``special``), cached per text."""
        key = (text, special)
        if key not in self._cache:
            self._cache[key] = self.tok(text, add_special_tokens=special)["input_ids"]
        return self._cache[key]

    def _pair(self, prompt: str, continuation: str) -> tuple[list[int], int]:
        """Token ids of prompt + continuation (the prompt cut from the left to fit) and the
        continuation's length in tokens."""
        cont = self.token_ids(continuation, False)[: self.max_length - 1] or [self.pad_id]
        head = self.token_ids(prompt, True)[-(self.max_length - len(cont)):]
        return head + cont, len(cont)

    def batch_inputs(self, rows: Sequence[list[int]], device: torch.device, width: int = 0) -> dict[str, torch.Tensor]:
        """Left-padded ids, mask and positions, at least ``width`` wide (a data-parallel shard is padded as
        wide as its global batch, so that only the row count differs from the global batch's computation)."""
        width = max(width, max(len(r) for r in rows))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}

    # ---- scoring ------------------------------------------------------------------------------
    def continuation_logprobs(self, model, pairs: Sequence[tuple[str, str]],
                              like: Sequence[tuple[str, str]] | None = None) -> torch.Tensor:
        """Mean log-probability of each continuation's tokens given its prompt, one value per pair. With
        ``like`` (the global batch's pairs, of which ``pairs`` is a shard), shaped as ``like`` would be."""
        device = next(model.parameters()).device
        rows, lengths = zip(*(self._pair(p, c) for p, c in pairs))
        k, width = max(lengths), 0
        if like is not None:
            wide, long = zip(*(self._pair(p, c) for p, c in like))
            k, width = max(k, max(long)), max(len(r) for r in wide)
        out = model(**self.batch_inputs(rows, device, width), logits_to_keep=k + 1)
        logits = _wide(out.logits[:, :-1])                        # positions predicting the last k tokens
        targets = torch.tensor([r[-k:] if len(r) >= k else [self.pad_id] * (k - len(r)) + r for r in rows],
                               device=device)
        logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        lens = torch.tensor(lengths, device=device)
        valid = torch.arange(k, device=device).unsqueeze(0) >= (k - lens).unsqueeze(1)
        return (logp * valid).sum(-1) / lens

    def option_scores(self, model, examples: Sequence[Example], like: Sequence[Example] | None = None) -> torch.Tensor:
        """``[batch, max_options]`` mean log-probabilities of the options, ``-inf`` where an example has
        fewer options. When every option is a single token, one forward row per example suffices. With
        ``like`` (the global batch, of which ``examples`` is a shard), computed as for ``like``: the same
        width, padding and path, so each row is what the global batch gives it."""
        like = examples if like is None else like
        n_opt = max(len(e.options) for e in like)
        scores = torch.full((len(examples), n_opt), float("-inf"))
        opt_ids = [[self.token_ids(o, False) for o in e.options] for e in examples]
        if all(len(self.token_ids(o, False)) == 1 for e in like for o in e.options):
            device = next(model.parameters()).device
            rows = [self.token_ids(e.prompt, True)[-self.max_length:] for e in examples]
            width = max(len(self.token_ids(e.prompt, True)[-self.max_length:]) for e in like)
            logits = _wide(model(**self.batch_inputs(rows, device, width), logits_to_keep=1).logits[:, -1])
            logp = torch.log_softmax(logits, dim=-1)
            scores = scores.to(logp.device, logp.dtype)
            for i, row in enumerate(opt_ids):
                scores[i, : len(row)] = logp[i, [ids[0] for ids in row]]
            return scores
        pairs = [(e.prompt, o) for e in examples for o in e.options]
        wide = None if like is examples else [(e.prompt, o) for e in like for o in e.options]
        flat = self.continuation_logprobs(model, pairs, wide)
        scores = scores.to(flat.device, flat.dtype)
        at = 0
        for i, e in enumerate(examples):
            scores[i, : len(e.options)] = flat[at: at + len(e.options)]
            at += len(e.options)
        return scores

    def loss(self, model, examples: Sequence[Example]) -> torch.Tensor:
        """The training loss of a batch: option cross-entropy, or the answer-token LM loss."""
        return self.reduce_terms(self.loss_terms(model, examples), examples)

    def loss_terms(self, model, examples: Sequence[Example], like: Sequence[Example] | None = None) -> torch.Tensor:
        """The per-example quantities the loss reduces, one row per example: the option scores
        ``[n, max_options]``, or the answers' mean log-probabilities ``[n]``. With ``like`` (the global batch
        of which ``examples`` is a shard), each row is computed as the global batch computes it."""
        if examples[0].is_generation:
            wide = None if like is None else [(e.prompt, e.answers[0]) for e in like]
            return self.continuation_logprobs(model, [(e.prompt, e.answers[0]) for e in examples], wide)
        return self.option_scores(model, examples, like)

    def shard_loss(self, model, examples: Sequence[Example], like: Sequence[Example]) -> torch.Tensor:
        """This shard's share of the global batch ``like``'s loss, differentiable: the sum of its examples'
        losses divided by ``len(like)`` (the shares of all shards add up to the batch loss; data-parallel
        backward passes all-reduce their gradients)."""
        terms = self.loss_terms(model, examples, like)
        if examples[0].is_generation:
            return -terms.sum() / len(like)
        labels = torch.tensor([e.label for e in examples], device=terms.device)
        return F.cross_entropy(terms, labels, reduction="sum") / len(like)

    @staticmethod
    def reduce_terms(terms: torch.Tensor, examples: Sequence[Example]) -> torch.Tensor:
        """The batch loss from :meth:`loss_terms` of all of ``examples``: the cross-entropy over the option
        scores, or minus the mean answer log-probability."""
        if examples[0].is_generation:
            return -terms.mean()
        labels = torch.tensor([e.label for e in examples], device=terms.device)
        return F.cross_entropy(terms, labels)

    # ---- evaluation ---------------------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self, model, examples: Sequence[Example], batch_size: int = 16) -> float:
        """Accuracy (multiple choice) or mean token F1 (generation) over ``examples``."""
        if not examples:
            raise ValueError("no examples to evaluate")
        total = 0.0
        for at in range(0, len(examples), batch_size):
            chunk = examples[at: at + batch_size]
            if chunk[0].is_generation:
                total += sum(f1_score(p, e.answers) for p, e in zip(self.generate(model, chunk), chunk))
            else:
                pred = self.option_scores(model, chunk).argmax(-1).tolist()
                total += sum(int(p == e.label) for p, e in zip(pred, chunk))
        return total / len(examples)

    def generate(self, model, examples: Sequence[Example]) -> list[str]:
        """Greedy continuations of the prompts, cut at the first newline."""
        device = next(model.parameters()).device
        rows = [self.token_ids(e.prompt, True)[-(self.max_length - self.max_new_tokens):] for e in examples]
        batch = self.batch_inputs(rows, device)
        batch.pop("position_ids")
        # before peft 0.22, prefix tuning handed its prefix to the model as past_key_values, which transformers'
        # cached generate drops (it passes its own cache), so it generated without the cache; since 0.22 the cached
        # generate keeps the prefix and the uncached one fails (its attention mask counts the prefix);
        # tests/test_peft.py checks the result against token-by-token decoding on whichever peft is installed
        prompt_learning = getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False)
        out = model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False,
                             use_cache=not (prompt_learning and _peft_before("0.22")), pad_token_id=self.pad_id)
        texts = self.tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return [t.split("\n")[0].strip() for t in texts]

    # ---- losses and metrics over a whole split --------------------------------------------------
    @torch.inference_mode()
    def score_matrix(self, model, examples: Sequence[Example], batch_size: int = 16) -> torch.Tensor:
        """``[n, max_options]`` option scores of multiple-choice ``examples`` (float64 on the CPU, ``-inf``
        where an example has fewer options), scored ``batch_size`` examples at a time as :meth:`evaluate` does."""
        n_opt = max(len(e.options) for e in examples)
        out = torch.full((len(examples), n_opt), float("-inf"), dtype=torch.float64)
        for at in range(0, len(examples), batch_size):
            chunk = examples[at: at + batch_size]
            s = self.option_scores(model, chunk).double().cpu()
            out[at: at + len(chunk), : s.shape[1]] = s
        return out

    @torch.inference_mode()
    def assess(self, model, examples: Sequence[Example], batch_size: int = 16, metric: bool = True) -> dict:
        """The mean per-example loss over ``examples`` and the metric (accuracy, or token F1 for generation;
        for generation ``metric=False`` skips the decoding and gives ``None``). Multiple choice also returns
        the ``scores`` matrix (:meth:`score_matrix`) the loss and accuracy come from, in one pass."""
        if not examples:
            raise ValueError("no examples to evaluate")
        if not examples[0].is_generation:
            scores = self.score_matrix(model, examples, batch_size)
            labels = torch.tensor([e.label for e in examples])
            loss = F.cross_entropy(scores, labels).item()
            accuracy = (scores.argmax(-1) == labels).double().mean().item()
            return {"loss": loss, "metric": accuracy, "scores": scores}
        total = 0.0
        for at in range(0, len(examples), batch_size):
            chunk = examples[at: at + batch_size]
            total -= self.continuation_logprobs(model, [(e.prompt, e.answers[0]) for e in chunk]).double().sum().item()
        value = self.evaluate(model, examples, batch_size) if metric else None
        return {"loss": total / len(examples), "metric": value, "scores": None}
