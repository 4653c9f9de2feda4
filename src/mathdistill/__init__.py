"""mathdistill: distill math reasoning from a teacher LLM into a small student.

Pipeline (one module per stage): problems -> generate -> curate -> train -> export -> evaluate -> report,
chained by ``run``; ``ablate`` grids over it, ``serve`` publishes a student.
"""

__version__ = "0.1.0"

import logging as _logging

# torchao (the int8 export) is imported by peft/transformers whenever it is installed; its notices about CUDA
# kernels and torch's pytree deprecation lines are not for our users.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
