"""Errors a user can act on.

Every command-line entry point catches :class:`BrainsweepError`, prints its message on
one line and exits with status 2; anything else is a bug and keeps its traceback.
"""


class BrainsweepError(Exception):
    """Base class: the message names the file, subject or setting and what was expected."""


class DataError(BrainsweepError):
    """The dataset on disk is missing something or is inconsistent."""


class ConfigError(BrainsweepError):
    """A setting is impossible or unknown."""


class StudyError(BrainsweepError):
    """A study measure (transfer, probes) failed after training; the run's results were written first."""
