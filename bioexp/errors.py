"""User-facing errors: problems a user can fix, reported by the runner as one line (no traceback)."""


class BioexpError(Exception):
    """A problem with the user's data, config or environment; the message says what to do."""


class DataNotFoundError(BioexpError, FileNotFoundError):
    """A dataset is not where the config says; the message says where to get it."""


class WeightsNotFoundError(BioexpError, FileNotFoundError):
    """Pretrained weights were asked for but are not on disk; the message names the ways out."""


class NonFiniteError(BioexpError, FloatingPointError):
    """A loss or the optimised metric became NaN/inf; earlier checkpoints are left intact."""
