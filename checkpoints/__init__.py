"""Tuner artifacts: the safetensors format (save, load, validate), the tuners we ship
(``pretrained/``), sharing them through the Hugging Face Hub (:mod:`checkpoints.hub`) and the safe import
of the published ZO Fine-tuner ``.pth`` files (:mod:`checkpoints.pth_import`)."""
from checkpoints.artifact import FORMAT, FORMAT_VERSION, Tuner

__all__ = ["FORMAT", "FORMAT_VERSION", "Tuner"]
