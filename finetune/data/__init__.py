"""Models and data: ``--model`` names to (model, tokenizer), ``--task`` specs to examples, task losses and
evaluation, and minibatches in a seeded order."""
from finetune.data.batches import batches
from finetune.data.models import load_model
from finetune.data.scoring import TaskScorer
from finetune.data.tasks import load_task

__all__ = ["TaskScorer", "batches", "load_model", "load_task"]
