"""Tuner artifacts: the safetensors format (save, load, validate) and the tuners we ship."""
from checkpoints.artifact import FORMAT, FORMAT_VERSION, Tuner

__all__ = ["FORMAT", "FORMAT_VERSION", "Tuner"]
