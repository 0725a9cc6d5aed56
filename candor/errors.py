"""Errors meant for a person: the CLI prints their message and exits non-zero,
the API turns them into a 4xx/503 JSON body. Ground level: imports nothing.

The message (``str(exc)``) is for the operator: it may name hosts, URLs and files.
``public`` is what an API client is told instead where they differ: a sentence
without internal endpoints (the API adds a request id; its log keeps the message).
"""


class CandorError(Exception):
    """A failure with a message a user can act on."""

    exit_code = 1
    public: str | None = None  # what an API client sees instead of the message (None: the message)

    def __init__(self, *args: object, public: str | None = None) -> None:
        super().__init__(*args)
        if public is not None:
            self.public = public


class NotFoundError(CandorError):
    exit_code = 2


class InvalidInputError(CandorError):
    exit_code = 2


class ConflictError(CandorError):
    exit_code = 3


class UnavailableError(CandorError):
    """A dependency (model server, Chroma, database) cannot be reached."""

    exit_code = 4
    public = "a service Candor depends on is unavailable; try again shortly"
