"""A runnable flow (a validated spec plus its version and content hash) and where flows come from.

`FlowSource` is what the engine needs from its host: the active version of a flow, a given
version (so that a running conversation stays on the version it started on), and the triggers.
`care.flow_versions.FlowStore` implements it on the database; `Library` holds the working copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from dialogues.errors import UnknownFlowError
from dialogues.spec import FlowSpec, Node, TriggersSpec

WORKING_COPY = 0
"""The version number of a flow read straight from `dialogues/content/` (not published)."""


@dataclass(frozen=True)
class Flow:
    """One immutable version of a flow."""

    spec: FlowSpec
    content_hash: str
    version: int = WORKING_COPY

    @property
    def id(self) -> str:
        """The flow id, e.g. `checkin`."""
        return self.spec.flow

    def node(self, node_id: str) -> Node:
        """The node with this id; `UnknownFlowError` when the flow has none (a stale session)."""
        try:
            return self.spec.nodes[node_id]
        except KeyError:
            raise UnknownFlowError(
                f"flow {self.id} v{self.version} has no node {node_id}"
            ) from None


class FlowSource(Protocol):
    """Where the engine finds flows and triggers."""

    def active(self, flow_id: str) -> Flow:
        """The version new conversations use; `UnknownFlowError` if there is none."""
        ...

    def get(self, flow_id: str, number: int) -> Flow:
        """A given version of a flow; `UnknownFlowError` if there is none."""
        ...

    def triggers(self) -> TriggersSpec:
        """The global triggers (commands, intents, safety verdicts)."""
        ...


@dataclass(frozen=True)
class Library:
    """An in-memory `FlowSource`: the working copy, or any fixed set of flows (tests, `try`)."""

    flows: Mapping[str, Flow]
    trigger_spec: TriggersSpec
    older: Mapping[tuple[str, int], Flow] = field(default_factory=dict)

    def active(self, flow_id: str) -> Flow:
        """The flow with this id."""
        try:
            return self.flows[flow_id]
        except KeyError:
            raise UnknownFlowError(f"no flow {flow_id}") from None

    def get(self, flow_id: str, number: int) -> Flow:
        """The flow with this id and version."""
        flow = self.flows.get(flow_id)
        if flow is not None and flow.version == number:
            return flow
        try:
            return self.older[(flow_id, number)]
        except KeyError:
            raise UnknownFlowError(f"no flow {flow_id} v{number}") from None

    def triggers(self) -> TriggersSpec:
        """The triggers."""
        return self.trigger_spec
