"""Errors, atomic outputs and the download cache: utilities every layer may use."""
