"""Every error refvit raises on bad input is a `RefvitError` (a `ValueError`), so callers can catch one class.

Each message names the file, key, tensor or shape at fault.
"""


class RefvitError(ValueError):
    """Base class of every error refvit raises on bad input."""


class CheckpointError(RefvitError):
    """A checkpoint file is malformed, or its tensors do not match the model (missing, unexpected, wrong shape)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle in a pytorch_model.bin asks for something outside the allowlist (it is never executed)."""


class ConfigError(RefvitError):
    """config.json or preprocessor_config.json has a wrong type, a bad value or an unknown architecture."""


class ImageError(RefvitError):
    """An image file cannot be read safely (not an image, truncated, decompression bomb)."""


class InputError(RefvitError):
    """An array passed to a model or processor has the wrong rank, channel count, size or dtype."""


def listed(names: list, limit: int = 20) -> str:
    """Names for an error message: the first `limit`, comma-separated, then how many there are in all."""
    return ", ".join(names[:limit]) + (f" … ({len(names)} in all)" if len(names) > limit else "")


def name_problems(*lists: tuple[str, list]) -> list[str]:
    """'<what>: a, b, …' for each (what, names) whose names are not empty: what an input lacks, what it holds that
    was not asked for. Callers report every problem in one error."""
    return [f"{what}: {listed(names)}" for what, names in lists if names]
