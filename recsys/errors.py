"""User-facing errors. The CLI prints ``str(err)`` as one line and exits with code 2."""


class FedrecError(Exception):
    """Base class for errors caused by the user's input (files, config, ids)."""


class DataError(FedrecError):
    """A data file is missing, malformed or inconsistent."""


class ConfigError(FedrecError):
    """A config file has unknown keys or bad values."""


class ManifestError(FedrecError):
    """An artifact's manifest does not match what the caller expects."""
