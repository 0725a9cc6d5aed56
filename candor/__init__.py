"""Candor: answers from your own documents, and says so when they do not hold the answer.

This folder is the ground layer (layer 1): settings, the prompt and refusal contract (``prompts``,
``decision``, ``refusal_score``), the answerability models, adapter versions, JSON files, errors. Its
modules import nothing of Candor's above them, and nothing heavy at module level.
"""

__version__ = "0.1.0"
