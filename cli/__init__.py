"""The `candor` command line (layer 5, the top): composes the rooms' commands, importing them lazily."""
