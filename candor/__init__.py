"""Candor: answers from your own documents, and says so when they do not hold the answer."""

__version__ = "0.1.0"
