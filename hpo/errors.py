"""Exception root of the service. The CLI prints these as one line and exits non-zero."""

from __future__ import annotations

from collections.abc import Iterator


class HpoError(Exception):
    """Root of all errors the service raises deliberately."""

    exit_code: int = 1


class SpecError(HpoError):
    """A study spec is malformed or invalid. ``problems`` holds one line per problem."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class StorageError(HpoError):
    """The store cannot be reached or refused an operation. Messages never hold a password."""


class StudyConflictError(HpoError):
    """A study exists under this name with a different spec."""


class StudyNotFoundError(HpoError):
    """No study of this name in the store."""


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then its causes and contexts (and SQLAlchemy's wrapped driver errors,
    ``orig``), each once."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for linked in (current.__cause__, current.__context__, getattr(current, "orig", None)):
            if isinstance(linked, BaseException):
                pending.append(linked)
