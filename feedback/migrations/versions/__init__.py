"""Numbered schema versions (0001_..., 0002_...): never edit a released one, add the next."""
