"""Errors raised by the dialogues package.

The tree::

    DialogueError
     +-- ContentError          flow or triggers files that cannot be used (carries findings)
     |    +-- NewerSpecError   a file written for a newer version of this code
     +-- EngineError           the engine was asked something impossible
          +-- UnknownFlowError a flow id (or version) that the flow source does not know
          +-- SessionError     a stored session that cannot be read
          +-- FlowLoopError    a flow ran too many steps without asking (the linter prevents it)

Messages are plain sentences for editors and operators; they never contain what a client wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dialogues.findings import Finding


class DialogueError(Exception):
    """Base class of every error raised by `dialogues`."""


class ContentError(DialogueError):
    """Flow content that cannot be loaded or used; `findings` says where and why."""

    def __init__(self, findings: Sequence[Finding]) -> None:
        self.findings: tuple[Finding, ...] = tuple(findings)
        first = self.findings[0].format() if self.findings else "invalid dialogue content"
        more = len(self.findings) - 1
        super().__init__(first + (f" (and {more} more)" if more > 0 else ""))


class NewerSpecError(ContentError):
    """A file declares a `spec_version` newer than this code understands."""


class EngineError(DialogueError):
    """The engine cannot do what it was asked."""


class UnknownFlowError(EngineError):
    """A flow id or version that the flow source does not have."""


class SessionError(EngineError):
    """A serialised session that is malformed or from an incompatible format."""


class FlowLoopError(EngineError):
    """A flow ran too many steps without waiting for her; the linter rejects such loops."""
