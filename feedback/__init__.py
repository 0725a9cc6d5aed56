"""Feedback: the answer log and flags store, export, and flags → training pairs."""
