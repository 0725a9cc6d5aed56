"""The `candor` command line: the top layer, composing the rooms' commands."""
