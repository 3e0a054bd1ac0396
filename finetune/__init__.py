"""The fine-tune stage (trainer, bench), above the ZO engine (zo/), models and data (data/) and shared utilities (common/)."""
