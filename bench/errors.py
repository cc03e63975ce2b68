"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""


class BenchError(Exception):
    """A mistake in the user's input or environment, with the fix in its message."""


class ConfigError(BenchError, ValueError):
    """An unknown name or a value outside its valid range."""


class SubsetTooLarge(ConfigError):
    """A training subset (NAME[N], a study's ``subset``) with more images than its dataset holds."""


class DatasetNotFound(BenchError, FileNotFoundError):
    """A dataset whose files are not on this machine."""


class DuplicateVariantError(BenchError):
    """Two variants claim the same name."""


class OutputNotWritten(BenchError):
    """A run's folder refused a write mid-run (a full disk); its last checkpoint is intact, so the run resumes."""


class RunStopped(BenchError):
    """Training was stopped because the run went bad; a study fails the trial and goes on."""


class TrainingDiverged(RunStopped, FloatingPointError):
    """A loss became NaN or infinite."""


class UnhealthyRun(RunStopped):
    """The training doctor found a failure that makes going on pointless."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the work after what it had done was saved."""

    def __init__(self, signum: int, what: str):
        import signal

        self.signum = signum
        self.then = "run the same command again to continue"
        """What the user does next; the caller that knows the command says it."""
        super().__init__(f"stopped by {signal.Signals(signum).name} {what}")

    @property
    def exit_code(self) -> int:
        """What a shell expects of a process ended by this signal."""
        return 128 + self.signum
