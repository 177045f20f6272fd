"""medblip: fine-tune, evaluate, compare and explain vision-language models for radiology captioning.

The library is importable without the command line interface (``medblip.cli``).
"""

__version__ = "0.1.0"
