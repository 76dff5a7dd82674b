"""The transformers family's task is the zoo's `text-classification` (token ids in, logits out, accuracy),
registered by the mcbert family's task module: imported here so that this family's modules bring it."""
from __future__ import annotations

from zoo.families.mcbert.task import TEXT_CLASSIFICATION  # noqa: F401  (registers the task)
