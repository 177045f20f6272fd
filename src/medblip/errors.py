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
