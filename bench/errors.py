"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""


class BenchError(Exception):
    """A mistake in the user's input or environment, with the fix in its message."""


class ConfigError(BenchError, ValueError):
    """An unknown name or a value outside its valid range."""


class DatasetNotFound(BenchError, FileNotFoundError):
    """A dataset whose files are not on this machine."""


class DuplicateVariantError(BenchError):
    """Two variants claim the same name."""


class RunStopped(BenchError):
    """Training was stopped because the run went bad; a study fails the trial and goes on."""


class TrainingDiverged(RunStopped, FloatingPointError):
    """A loss became NaN or infinite."""


class UnhealthyRun(RunStopped):
    """The training doctor found a failure that makes going on pointless."""
