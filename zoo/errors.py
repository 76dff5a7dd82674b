"""Typed errors of the zoo. The CLI turns each into one line; Python callers catch them by type."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class ZooError(Exception):
    """Base class of every error the zoo raises on purpose."""


class UnknownNameError(ZooError, LookupError):
    """A name (model, recipe config, dataset, format...) is not registered; lists the closest ones."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name = kind, name
        self.known = sorted(known)
        self.suggestions = difflib.get_close_matches(name, self.known, n=5, cutoff=0.5) if isinstance(name, str) else []
        hint = f"; did you mean {', '.join(self.suggestions)}?" if self.suggestions else ""
        listing = "" if self.suggestions or len(self.known) > 12 else f" (known: {', '.join(self.known)})"
        super().__init__(f"unknown {kind} {name!r}{hint}{listing}")


class DuplicateNameError(ZooError, ValueError):
    """A registry refuses a second entry under a name it already holds."""


class InvalidArgumentError(ZooError, ValueError):
    """An argument is outside what the zoo accepts (sparsity 1.5, an unknown quant scheme...)."""


class NoEvaluationDataError(ZooError):
    """An entry's evaluation data is not on this machine (an upstream ImageNet checkpoint without an
    ImageNet folder): the one legitimate reason a report has no task metric. Anything else that goes
    wrong while evaluating is raised, never cached as "not measured"."""


class RecipeError(ZooError, ValueError):
    """A recipe or one of its configs is invalid, of an unsupported version, or has an unknown type."""


class CheckpointError(ZooError):
    """A checkpoint cannot be read: missing file, unknown format or version, inconsistent tensors."""


class ChecksumError(CheckpointError):
    """A weight file's SHA-256 differs from the one its config records (truncated or altered file)."""


class HubError(ZooError):
    """A hub operation failed: unknown repo or revision, refused upload, unreachable endpoint."""


class SignatureError(ZooError):
    """A published variant's signature does not verify with any trusted key, a file changed since it was
    signed, or it is unsigned where signatures are required (zoo.signing)."""


class CardValidationError(ZooError, ValueError):
    """A model card is malformed or its results do not parse back to the measured numbers."""


class UnsupportedModelError(ZooError, ValueError):
    """The zoo cannot serve this model as asked: a Hub repo in a format no reader knows, or a checkpoint
    that is not what its task needs (a timm feature extractor, with no classifier, loaded as a classifier)."""
