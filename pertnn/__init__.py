"""PertNN: the learned per-block perturbation-scale network of the ZO Fine-tuner, in pure torch.

* :mod:`pertnn.blocks`   -- what a block is (one trainable tensor), its kind, tying, and a model fingerprint.
* :mod:`pertnn.features` -- the per-block input features of the bank at one step.
* :mod:`pertnn.bank`     -- the bank of per-block MLPs, evaluated in one batched call, giving one σ per block.
* :mod:`pertnn.policy`   -- the direction policy: per-block gates mixing an online mean direction into the noise.
"""
from pertnn.bank import BlockMLPs, PertNNBank, PertNNConfig, energy_normalise
from pertnn.blocks import (
    Block,
    fingerprint,
    fingerprint_mismatch,
    model_blocks,
    trainable_tensors,
    tied_groups,
)
from pertnn.features import N_FEATURES, FeatureConfig, StepHistory, block_features, tensor_var_mean
from pertnn.policy import DirectionPolicy, PolicyConfig

__all__ = [
    "N_FEATURES",
    "Block",
    "BlockMLPs",
    "DirectionPolicy",
    "FeatureConfig",
    "PertNNBank",
    "PertNNConfig",
    "PolicyConfig",
    "StepHistory",
    "block_features",
    "energy_normalise",
    "fingerprint",
    "fingerprint_mismatch",
    "model_blocks",
    "trainable_tensors",
    "tensor_var_mean",
    "tied_groups",
]
