"""mathdistill: distill math reasoning from a teacher LLM into a small student.

Pipeline (one module per stage): problems -> generate -> curate -> train -> export -> evaluate -> report,
chained by ``run``; ``ablate`` grids over it, ``serve`` publishes a student.
"""

__version__ = "0.1.0"
