"""Errors a user can act on.

Every error napari-sam raises on purpose is a :class:`NapariSamError`; each subclass
also inherits the matching builtin, so ``except ValueError`` keeps working. Messages say
what arrived, what was expected, and what to do.
"""

from __future__ import annotations


class NapariSamError(Exception):
    """Base class of all errors raised on purpose by napari-sam."""


class InvalidInputError(NapariSamError, ValueError):
    """An image, prompt or argument is not usable as given."""


class CheckpointError(NapariSamError, RuntimeError):
    """A weights file is missing, corrupt, of another model, or fails its checksum."""


class ModelOutputError(NapariSamError, RuntimeError):
    """The model returned NaN or infinite values (damaged or unsuitable weights)."""


class UnknownModelError(NapariSamError, KeyError):
    """A model name is neither in the registry nor an existing file."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DownloadError(NapariSamError, OSError):
    """No source could deliver a file (offline, no pip, all mirrors failed)."""


class CacheMismatchError(NapariSamError, ValueError):
    """A cached result was made for other data or settings."""


class StoreInUseError(NapariSamError, RuntimeError):
    """Another run is writing the same store (it holds the store's lock)."""


class StoreAccessError(NapariSamError, OSError):
    """A store on disk cannot be read or written (permissions, a full disk, a lost mount)."""


class MissingDependencyError(NapariSamError, ImportError):
    """An optional package is needed for this feature."""


class OperationCancelled(NapariSamError):
    """Long work stopped because the caller asked it to (not a failure)."""
