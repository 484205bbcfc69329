"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""


class TunelabError(Exception):
    """Base class: bad input from the user (config, data, paths), not a bug."""


class ConfigError(TunelabError):
    """An invalid config file, key or value."""


class DataError(TunelabError):
    """Malformed or unusable data; the message names the file and line."""


class ModelError(TunelabError):
    """A model that cannot be found or loaded (offline hub ids, bad paths)."""


class MergeNotSupported(TunelabError):
    """The method's update is not a weight change, so it cannot be merged."""


class DiskFull(TunelabError):
    """No space left while writing an artifact; what was written before is intact."""
