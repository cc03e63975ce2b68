"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""


class BenchError(Exception):
    """A mistake in the user's input or environment, with the fix in its message."""


class ConfigError(BenchError, ValueError):
    """An unknown name or a value outside its valid range."""


class DatasetNotFound(BenchError, FileNotFoundError):
    """A dataset whose files are not on this machine."""


class DuplicateVariantError(BenchError):
    """Two variants claim the same name."""


class TrainingDiverged(BenchError, FloatingPointError):
    """A loss became NaN or infinite."""
