"""Errors that carry a one-line, user-facing reason."""

from __future__ import annotations

import os


class InputError(Exception):
    """A single input cannot be used; the batch goes on without it.

    ``str(err)`` is the one-line message ``"<input>: <reason>"`` recorded in failure lists.
    """

    def __init__(self, source: str | os.PathLike, reason: str) -> None:
        self.source = str(source)
        self.reason = " ".join(str(reason).split())  # keep it on one line
        super().__init__(f"{self.source}: {self.reason}")


class ModelFileError(Exception):
    """A model file is missing, tampered with or of the wrong kind."""


class ManifestError(ValueError):
    """A stage manifest or model card is missing, of another version, or does not match its schema.

    ``str(err)`` is one line naming the file, what is wrong and which stage to rerun.
    """
