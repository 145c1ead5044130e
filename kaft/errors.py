"""User errors: anything a user can fix by changing a setting or a file.

Every stage raises a subclass of :class:`KaftError`; the CLI prints it as one ``kaft: error: ...`` line (exit 2, or
a failed job in a sweep) instead of a traceback. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations


class KaftError(ValueError):
    """A user error whose message says what to change (one line, no traceback)."""


class ConfigError(KaftError):
    """An impossible setting or combination of settings."""
