"""The ZO engine and optimizers: seeded exact perturbations (engine, noise), ZO-SGD/momentum/Adam and the
tuner-driven TunedZO (optim), direction-choosing methods (directions), and a tuner's online mean (online)."""
from finetune.zo.engine import SPSA, Direction, ZOEngine
from finetune.zo.optim import TunedZO, ZOAdam, ZOOptimizer, ZOSGD, make_optimizer, make_schedule

__all__ = ["SPSA", "Direction", "TunedZO", "ZOAdam", "ZOEngine", "ZOOptimizer", "ZOSGD", "make_optimizer",
           "make_schedule"]
