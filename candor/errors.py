"""Errors meant for a person: the CLI prints their message and exits non-zero,
the API turns them into a 4xx/503 JSON body. Ground level: imports nothing."""


class CandorError(Exception):
    """A failure with a message a user can act on."""

    exit_code = 1


class NotFoundError(CandorError):
    exit_code = 2


class InvalidInputError(CandorError):
    exit_code = 2


class ConflictError(CandorError):
    exit_code = 3


class UnavailableError(CandorError):
    """A dependency (model server, Chroma, database) cannot be reached."""

    exit_code = 4
