"""The two ways data can be wrong: a malformed file, or one sample that cannot be loaded.

``DataFormatError`` stops a run before it starts (the input files disagree with their
format). ``BadSampleError`` concerns one sample at load time; a run configured with
``skip_bad_samples`` counts and logs it instead of dying on one broken JPEG.
"""

from __future__ import annotations


class DataFormatError(ValueError):
    """A file or a record in it is malformed. The message names the file and the record."""


class BadSampleError(RuntimeError):
    """One sample cannot be loaded. The message names the file and the reason."""
