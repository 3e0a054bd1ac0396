"""Minibatches of task examples in a deterministic order: the data order two methods share under one seed."""
from __future__ import annotations

import random
from typing import Iterator, Sequence

from finetune.data.tasks import Example


def batches(examples: Sequence[Example], batch_size: int, seed: int) -> Iterator[list[Example]]:
    """Endless minibatches: the examples reshuffled (with ``seed``) every epoch, cut into batches."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
        yield [examples[i] for i in order[:batch_size]]
        del order[:batch_size]
