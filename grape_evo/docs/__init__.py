"""Generated documentation: docs/algorithms.md (``grape docs algorithms``)."""

from grape_evo.docs.algorithms import algorithms_markdown

__all__ = ["algorithms_markdown"]
