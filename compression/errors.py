"""Domain errors of the compression library: one base class, a few precise subclasses."""


class CompressionError(Exception):
    """Base class of every error the library raises on purpose."""


class InvalidConfigError(CompressionError, ValueError):
    """A config, spec or argument has a value outside its rule."""


class DataNotFoundError(InvalidConfigError):
    """A built-in data set is not where this machine keeps data, and may not be downloaded."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name


class TrainingDivergedError(CompressionError):
    """The loss became NaN or infinite: the weights are no longer usable."""


class UnsupportedLayerError(CompressionError):
    """A layer or architecture cannot be handled as asked."""


class InvalidCheckpointError(CompressionError):
    """A checkpoint is not a safe, readable state dict that fits the architecture."""


class CorruptArtifactError(CompressionError):
    """A `.pqz` file is truncated, altered, inconsistent or of another format version."""
