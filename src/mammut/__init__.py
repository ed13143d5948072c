"""mammut: one vision-language model (MaMMUT) shared across tasks."""
__version__ = "0.1.0"
