"""The errors a person can act on. The command line prints their message alone (exit code 2), so each
message names the file, field or value at fault and what to do about it."""


class ZofoError(ValueError):
    pass


class ConfigError(ZofoError):
    """A configuration value is wrong: the field, the value and what is allowed."""


class DataError(ZofoError):
    """Task data is missing or malformed: the file, the line and the problem."""


class RunFolderError(ZofoError):
    """The run folder cannot be used as asked."""


class RecordError(ZofoError):
    """A file a run wrote is unreadable: the file and the line."""


class NonFiniteLoss(ZofoError):
    """Training diverged: the step (and the direction's seed)."""
