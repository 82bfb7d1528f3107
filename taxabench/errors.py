"""The one error type users see: an expected failure with a message that says what to do."""


class TaxabenchError(Exception):
    """An expected failure (bad input, missing weights, bad config). The CLI prints its message, not a traceback."""


class ConfigError(TaxabenchError):
    """An experiment config that does not validate: the message names the file and the key."""


class DataError(TaxabenchError):
    """A dataset that cannot be read as declared: the message names the file, the row and the column."""


class WeightsNotFoundError(TaxabenchError):
    """Pretrained weights that cannot be resolved offline: the message names the file and how to provide it."""


class DamagedFileError(TaxabenchError):
    """A run file that exists but cannot be read (truncated, corrupted): names the file and what to do."""

    def __init__(self, path, problem: str, fix: str):
        super().__init__(f"{path} is damaged: {problem}; {fix}")
        self.path = path


class WeightsInvalidError(WeightsNotFoundError):
    """Weights that were found (a path given, or a cached file) but are not the expected ones: a wrong SHA-256, an
    interrupted download. Never a reason to fall back to other weights."""
