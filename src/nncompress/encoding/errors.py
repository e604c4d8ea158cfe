"""The error a damaged or hostile .nnc file (or bit stream) raises."""
from nncompress.core.errors import UserError


class CorruptFileError(UserError):
    """The bytes are not a valid encoding: truncated, bit-flipped, wrong format, or crafted.

    A subclass of `UserError`, so the CLI prints its one-line message and exits with code 2.
    """
