"""User-facing error types.

Anything raised as a :class:`MedblipError` is a problem with the user's input (a file, a config, a
command-line value). The CLI prints its message on one line and exits with status 2 instead of
showing a traceback.
"""

from __future__ import annotations


class MedblipError(Exception):
    """A problem the user can fix; the message names the file/key/value and the reason."""


class DataError(MedblipError):
    """Bad or unreadable data (layout, caption file, image)."""


class ImageError(DataError):
    """An image file that cannot be decoded; the message names the file."""


class ConfigError(MedblipError):
    """An invalid experiment configuration; the message names the key and the file."""


class CorruptFileError(MedblipError):
    """A checkpoint or state file that is truncated or damaged, or holds code where data belongs."""

    def __init__(self, path: object, reason: str, fix: str = "re-save or re-download it") -> None:
        super().__init__(f"{path}: file is corrupt or unsafe ({reason}); {fix}")

    @classmethod
    def from_exception(cls, path: object, exc: BaseException, fix: str = "re-save or re-download it") -> CorruptFileError:
        """The reader's exception in a few words (a refused pickle says that it was refused, not run)."""
        import pickle

        if isinstance(exc, pickle.UnpicklingError):
            reason = "it holds Python objects other than tensors and plain data; they were not loaded or run"
        else:
            first = (str(exc).strip().splitlines() or [""])[0]
            reason = f"{type(exc).__name__}: {first[:120]}" if first else type(exc).__name__
        return cls(path, reason, fix)
