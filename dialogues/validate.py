"""The validator and linter: everything a schema cannot see, across all flows and triggers.

`validate_dir(path)` loads every flow file and the triggers file in a directory and returns a
`Report` with all findings of all files in one run: schema errors from the loader, then lint
(unreachable nodes, dead ends, jumps to missing nodes or flows, missing translations, intents
that the NLU does not define, unknown placeholders, loops that never ask, revealing words).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dialogues.errors import ContentError
from dialogues.findings import Finding
from dialogues.flow import Flow, Library
from dialogues.loader import (
    LoadedFlow,
    LoadedTriggers,
    SourceMap,
    load_flow_file,
    load_triggers_file,
)
from dialogues.spec import (
    FLAGS,
    LANGUAGES,
    PLACEHOLDERS,
    REQUIRED_FLOWS,
    AskNode,
    BranchNode,
    EndNode,
    FlowSpec,
    JumpNode,
    Node,
    SayNode,
    waits,
)

TRIGGERS_FILE = "triggers.yml"
"""The name of the triggers file in a content directory; every other *.yml is a flow."""

CONTENT_DIR = Path(__file__).parent / "content"
"""The bundled flows (the working copy editors change)."""

REVEALING_WORDS: tuple[str, ...] = (
    "uitbuiting",
    "uitgebuit",
    "loverboy",
    "mensenhandel",
    "misbruik",
    "prostitutie",
    "seks",
    "nazorg",
    "hulpverlen",
    "slachtoffer",
    "exploit",
    "trafficking",
    "abuse",
    "prostitut",
    "sex",
    "aftercare",
    "care worker",
    "victim",
)
"""Word stems that would tell someone reading her phone what this chat is about."""

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Report:
    """All findings of one validation run, with what loaded successfully."""

    findings: tuple[Finding, ...]
    flows: Mapping[str, LoadedFlow] = field(default_factory=dict)
    triggers: LoadedTriggers | None = None

    @property
    def errors(self) -> tuple[Finding, ...]:
        """The findings that block publishing."""
        return tuple(f for f in self.findings if f.is_error)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        """The findings worth fixing that do not block publishing."""
        return tuple(f for f in self.findings if not f.is_error)

    @property
    def ok(self) -> bool:
        """True when there are no errors."""
        return not self.errors

    def library(self) -> Library:
        """The flows as a working-copy `Library`; `ContentError` when there are errors."""
        if self.errors or self.triggers is None:
            raise ContentError(self.errors or [Finding(".", 1, "error", "no triggers file")])
        flows = {
            flow_id: Flow(loaded.spec, loaded.content_hash)
            for flow_id, loaded in self.flows.items()
        }
        return Library(flows, self.triggers.spec)


def validate_dir(
    directory: Path = CONTENT_DIR,
    *,
    known_intents: frozenset[str] | None = None,
    required_flows: Iterable[str] = REQUIRED_FLOWS,
    display_root: Path | None = None,
) -> Report:
    """Load and lint every flow and the triggers file in `directory`.

    `known_intents` are the intents the NLU defines (None skips that check; `dialogues` does
    not import `nlu`). File names in findings are relative to `display_root` when given.
    """
    findings: list[Finding] = []
    flows: dict[str, LoadedFlow] = {}
    triggers: LoadedTriggers | None = None
    if not directory.is_dir():
        name = str(directory)
        return Report((Finding(name, 1, "error", "no such directory", "check the path"),))
    for path in sorted(directory.glob("*.y*ml")):
        name = _display(path, display_root)
        try:
            if path.name == TRIGGERS_FILE:
                triggers = load_triggers_file(path, name)
                continue
            loaded = load_flow_file(path, name)
        except ContentError as error:
            findings += error.findings
            continue
        findings += _file_name_findings(path, loaded, flows)
        flows.setdefault(loaded.spec.flow, loaded)
    if triggers is None and not (directory / TRIGGERS_FILE).exists():
        name = _display(directory / TRIGGERS_FILE, display_root)
        findings.append(
            Finding(name, 1, "error", "the triggers file is missing", "copy the bundled one")
        )
    findings += lint(flows, triggers, known_intents=known_intents, required_flows=required_flows)
    return Report(tuple(sorted(set(findings))), flows, triggers)


def validate_file(
    path: Path,
    *,
    known_intents: frozenset[str] | None = None,
    context_dir: Path = CONTENT_DIR,
    display_root: Path | None = None,
) -> Report:
    """Load and lint one file, with the flows and triggers of `context_dir` around it (so that
    jumps to other flows can be checked); only the findings of this file are reported."""
    name = _display(path, display_root)
    context = validate_dir(context_dir, required_flows=())
    triggers: LoadedTriggers | None
    try:
        if path.name == TRIGGERS_FILE:
            triggers = load_triggers_file(path, name)
            flows = dict(context.flows)
        else:
            loaded = load_flow_file(path, name)
            triggers = context.triggers
            flows = {**context.flows, loaded.spec.flow: loaded}
    except ContentError as error:
        return Report(error.findings)
    findings = lint(flows, triggers, known_intents=known_intents, required_flows=())
    mine = sorted({finding for finding in findings if finding.file == name})
    return Report(tuple(mine), flows, triggers)


def load_library(
    directory: Path = CONTENT_DIR, *, known_intents: frozenset[str] | None = None
) -> Library:
    """The working copy as a `Library`; `ContentError` with all findings if it has errors."""
    return validate_dir(directory, known_intents=known_intents).library()


def _display(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.resolve().relative_to(root.resolve()))
        except ValueError:
            pass
    return str(path)


def _file_name_findings(
    path: Path, loaded: LoadedFlow, flows: Mapping[str, LoadedFlow]
) -> list[Finding]:
    out = []
    flow_id = loaded.spec.flow
    if flow_id in flows:
        other = flows[flow_id].source.file
        out.append(
            loaded.source.finding(
                ("flow",), f"flow '{flow_id}' is also defined in {other}", "give it another id"
            )
        )
    if path.stem != flow_id:
        out.append(
            loaded.source.finding(
                ("flow",),
                f"flow '{flow_id}' is in a file named {path.name}",
                f"rename the file to {flow_id}.yml or change `flow:`",
            )
        )
    return out


def lint(
    flows: Mapping[str, LoadedFlow],
    triggers: LoadedTriggers | None,
    *,
    known_intents: frozenset[str] | None = None,
    required_flows: Iterable[str] = REQUIRED_FLOWS,
) -> list[Finding]:
    """Lint flows that passed the schema, together (jumps and triggers cross files)."""
    specs = {flow_id: loaded.spec for flow_id, loaded in flows.items()}
    entries: dict[str, set[str]] = {flow_id: {spec.start} for flow_id, spec in specs.items()}
    findings: list[Finding] = []
    if triggers is not None:
        findings += _lint_triggers(triggers, specs, entries, known_intents)
    for loaded in flows.values():
        for path, target_flow, target_node in _cross_jumps(loaded.spec):
            if target_flow not in specs:
                findings.append(
                    loaded.source.finding(
                        path,
                        f"jump to a flow '{target_flow}' that does not exist",
                        "correct the flow id or add the flow",
                    )
                )
            elif target_node is not None:
                entries[target_flow].add(target_node)
                if target_node not in specs[target_flow].nodes:
                    findings.append(
                        loaded.source.finding(
                            path,
                            f"jump to a node '{target_node}' that flow '{target_flow}' lacks",
                            "correct the node id",
                        )
                    )
    for flow_id, loaded in flows.items():
        findings += _lint_flow(loaded, entries[flow_id], known_intents)
    findings += _lint_silent_loops(flows)
    for missing in sorted(set(required_flows) - set(specs)):
        anchor = next(iter(flows.values())).source.file if flows else "."
        findings.append(
            Finding(
                str(Path(anchor).parent / f"{missing}.yml"),
                1,
                "error",
                f"the required flow '{missing}' is missing",
                "add it; the bot starts it by this name",
            )
        )
    return findings


def _cross_jumps(spec: FlowSpec) -> Iterator[tuple[Path_, str, str | None]]:
    for node_id, node in spec.nodes.items():
        if isinstance(node, JumpNode) and node.flow is not None and node.flow != spec.flow:
            yield ("nodes", node_id, "flow"), node.flow, node.node


def edges(spec: FlowSpec, node_id: str, node: Node) -> list[tuple[Path_, str]]:
    """Where a node can go within its flow, each with the path of the field that says so."""
    base: Path_ = ("nodes", node_id)
    out: list[tuple[Path_, str]] = []
    if isinstance(node, SayNode | AskNode):
        for index, button in enumerate(node.buttons):
            if button.next:
                out.append(((*base, "buttons", index, "next"), button.next))
        if isinstance(node, AskNode):
            out += [((*base, "intents", intent), target) for intent, target in node.intents.items()]
            if node.otherwise:
                out.append(((*base, "otherwise"), node.otherwise))
        if node.timeout:
            out.append(((*base, "timeout"), node.timeout))
        if node.next:
            out.append(((*base, "next"), node.next))
    elif isinstance(node, BranchNode):
        out += [((*base, "then"), node.then), ((*base, "else"), node.else_)]
    elif isinstance(node, JumpNode):
        if node.node and node.flow in (None, spec.flow):
            out.append(((*base, "node"), node.node))
    elif not isinstance(node, EndNode) and node.next:
        out.append(((*base, "next"), node.next))
    return out


def _lint_flow(
    loaded: LoadedFlow, entries: set[str], known_intents: frozenset[str] | None
) -> list[Finding]:
    spec, source = loaded.spec, loaded.source
    out: list[Finding] = []
    if len(set(spec.languages)) != len(spec.languages):
        out.append(source.finding(("languages",), "a language is listed twice", "list it once"))
    if spec.start not in spec.nodes:
        out.append(
            source.finding(
                ("start",), f"the start node '{spec.start}' does not exist", "name an existing node"
            )
        )
    for node_id, node in spec.nodes.items():
        for path, target in edges(spec, node_id, node):
            if target not in spec.nodes:
                out.append(
                    source.finding(
                        path,
                        f"node '{node_id}' goes to a node '{target}' that does not exist",
                        "correct the name or add that node",
                    )
                )
        out += _lint_node(spec, source, node_id, node, known_intents)
    out += _lint_texts(loaded)
    reachable = _reachable(spec, entries)
    for node_id in spec.nodes:
        if node_id not in reachable:
            out.append(
                source.finding(
                    ("nodes", node_id),
                    f"node '{node_id}' can never be reached",
                    "go to it from another node, or delete it",
                    warning=True,
                )
            )
    return out


def _lint_node(
    spec: FlowSpec,
    source: SourceMap,
    node_id: str,
    node: Node,
    known_intents: frozenset[str] | None,
) -> list[Finding]:
    out: list[Finding] = []
    where: Path_ = ("nodes", node_id)
    if isinstance(node, SayNode | AskNode):
        seen: set[str] = set()
        for index, button in enumerate(node.buttons):
            if button.id in seen:
                out.append(
                    source.finding(
                        (*where, "buttons", index, "id"),
                        f"node '{node_id}' has two buttons with the id '{button.id}'",
                        "give each button its own id",
                    )
                )
            seen.add(button.id)
            if not (button.next or node.next):
                out.append(
                    source.finding(
                        (*where, "buttons", index),
                        f"button '{button.id}' of node '{node_id}' leads nowhere",
                        "give the button a `next:` or the node a `next:`",
                    )
                )
        intents = [((*where, "buttons", i, "intent"), b.intent) for i, b in enumerate(node.buttons)]
        if isinstance(node, AskNode):
            intents += [((*where, "intents", intent), intent) for intent in node.intents]
            if not (node.buttons or node.intents or node.otherwise):
                out.append(
                    source.finding(
                        where,
                        f"question '{node_id}' has no buttons, intents or `otherwise`",
                        "add buttons, or `otherwise:` for any answer",
                    )
                )
        elif not node.buttons and not node.next:
            out.append(_dead_end(source, where, node_id))
        if node.timeout_minutes is not None and node.timeout is None:
            out.append(
                source.finding(
                    (*where, "timeout_minutes"),
                    f"node '{node_id}' has `timeout_minutes` but no `timeout` to go to",
                    "add `timeout:` with the node to go to when she does not answer",
                )
            )
        elif node.timeout is not None and node.timeout_minutes is None:
            out.append(
                source.finding(
                    (*where, "timeout"),
                    f"the timeout of node '{node_id}' never happens: it has no `timeout_minutes`",
                    "add `timeout_minutes:` (how long the question waits for her)",
                    warning=True,
                )
            )
        if known_intents is not None:
            for path, intent in intents:
                if intent is not None and intent not in known_intents:
                    out.append(
                        source.finding(
                            path,
                            f"the intent '{intent}' is not defined in nlu/data",
                            "use an intent that nlu/data defines, or add examples "
                            "for it to nlu/data first",
                        )
                    )
    elif isinstance(node, BranchNode):
        if node.flag not in FLAGS:
            out.append(
                source.finding(
                    (*where, "flag"),
                    f"unknown flag '{node.flag}'",
                    "use one of: " + ", ".join(sorted(FLAGS)),
                )
            )
    elif isinstance(node, JumpNode):
        if node.node is None and node.flow is None:
            out.append(
                source.finding(
                    where, f"jump '{node_id}' says nowhere to go", "add `node:` and/or `flow:`"
                )
            )
    elif not isinstance(node, EndNode) and node.next is None:
        out.append(_dead_end(source, where, node_id))
    return out


def _dead_end(source: SourceMap, where: Path_, node_id: str) -> Finding:
    return source.finding(
        where,
        f"node '{node_id}' is a dead end: nothing comes after it",
        "add `next:`, or go to an `end` node if the flow is meant to stop here",
    )


def _texts(spec: FlowSpec) -> Iterator[tuple[Path_, Mapping[str, str]]]:
    for node_id, node in spec.nodes.items():
        where: Path_ = ("nodes", node_id)
        if isinstance(node, SayNode | AskNode):
            yield (*where, "text"), node.text
            if node.reask:
                yield (*where, "reask"), node.reask
            for index, button in enumerate(node.buttons):
                yield (*where, "buttons", index, "label"), button.label


def _lint_texts(loaded: LoadedFlow) -> list[Finding]:
    spec, source = loaded.spec, loaded.source
    out: list[Finding] = []
    for path, text in _texts(spec):
        out += _lint_text(source, path, text, spec.languages, discreet=spec.discreet)
    return out


def _lint_text(
    source: SourceMap,
    path: Path_,
    text: Mapping[str, str],
    languages: Iterable[str],
    *,
    discreet: bool,
) -> list[Finding]:
    out: list[Finding] = []
    for lang in languages:
        if lang not in text:
            out.append(
                source.finding(
                    path,
                    f"the text has no '{lang}' version",
                    f"add `{lang}:` with the text in that language",
                )
            )
    for lang, value in text.items():
        if lang not in languages:
            out.append(
                source.finding(
                    (*path, lang),
                    f"a '{lang}' text in a flow that does not list '{lang}' in `languages`",
                    f"add '{lang}' to `languages` or remove this text",
                    warning=True,
                )
            )
        out += _lint_placeholders(source, (*path, lang), value)
        if discreet:
            lowered = value.casefold()
            for word in REVEALING_WORDS:
                if re.search(rf"\b{re.escape(word)}", lowered):
                    out.append(
                        source.finding(
                            (*path, lang),
                            f"'{word}...' could tell someone reading her phone what this chat "
                            "is about",
                            "use neutral words (the bot sounds like a friendly coach app)",
                            warning=True,
                        )
                    )
    return out


def _lint_placeholders(source: SourceMap, path: Path_, value: str) -> list[Finding]:
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError:
        return [
            source.finding(
                path,
                "a '{' or '}' without its partner",
                "write placeholders as {alias}; write a literal brace as {{ or }}",
            )
        ]
    out = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conversion:
            out.append(
                source.finding(
                    path,
                    f"unknown placeholder '{{{name}}}'",
                    "use one of: " + ", ".join(f"{{{p}}}" for p in sorted(PLACEHOLDERS)),
                )
            )
    return out


def _reachable(spec: FlowSpec, entries: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = [entry for entry in entries if entry in spec.nodes]
    while todo:
        node_id = todo.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        todo += [t for _, t in edges(spec, node_id, spec.nodes[node_id]) if t in spec.nodes]
    return seen


def _lint_silent_loops(flows: Mapping[str, LoadedFlow]) -> list[Finding]:
    """Cycles through nodes that never wait for her: the engine would spin forever."""
    specs = {flow_id: loaded.spec for flow_id, loaded in flows.items()}
    graph: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for flow_id, spec in specs.items():
        for node_id, node in spec.nodes.items():
            if waits(node):
                continue
            targets = [(flow_id, t) for _, t in edges(spec, node_id, node)]
            if isinstance(node, JumpNode) and node.flow and node.flow in specs:
                if node.flow != flow_id:
                    targets.append((node.flow, node.node or specs[node.flow].start))
                elif not node.node:
                    targets.append((flow_id, spec.start))
            graph[(flow_id, node_id)] = [
                t
                for t in targets
                if t[1] in specs[t[0]].nodes and not waits(specs[t[0]].nodes[t[1]])
            ]
    out: list[Finding] = []
    state: dict[tuple[str, str], int] = {}
    reported: set[frozenset[tuple[str, str]]] = set()
    for root in graph:
        if state.get(root):
            continue
        stack: list[tuple[tuple[str, str], Iterator[tuple[str, str]]]] = [(root, iter(graph[root]))]
        trail = [root]
        state[root] = 1
        while stack:
            vertex, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[vertex] = 2
                stack.pop()
                trail.pop()
            elif state.get(child) == 1:
                cycle = trail[trail.index(child) :]
                if frozenset(cycle) not in reported:
                    reported.add(frozenset(cycle))
                    flow_id, node_id = cycle[0]
                    names = " -> ".join(f"{f}.{n}" if f != flow_id else n for f, n in cycle)
                    out.append(
                        flows[flow_id].source.finding(
                            ("nodes", node_id),
                            f"these nodes loop forever without asking her anything: "
                            f"{names} -> {node_id}",
                            "put a question (`ask`) in the loop, or end it",
                        )
                    )
            elif not state.get(child):
                state[child] = 1
                trail.append(child)
                stack.append((child, iter(graph[child])))
    return out


def _lint_triggers(
    loaded: LoadedTriggers,
    specs: Mapping[str, FlowSpec],
    entries: dict[str, set[str]],
    known_intents: frozenset[str] | None,
) -> list[Finding]:
    spec, source = loaded.spec, loaded.source
    out: list[Finding] = []

    def target(
        path: Path_,
        flow: str,
        node: str | None,
        node_path: Path_ | None = None,
        node_fix: str = "correct the node id",
    ) -> None:
        """The flow at `path` must exist, and `node` (at `node_path`, by default the `node`
        key beside `path`) must be one of its nodes; that node is then an entry of the flow."""
        if flow not in specs:
            out.append(
                source.finding(
                    path, f"the flow '{flow}' does not exist", "correct the flow id or add the flow"
                )
            )
        elif node is not None:
            entries[flow].add(node)
            if node not in specs[flow].nodes:
                out.append(
                    source.finding(
                        node_path or (*path[:-1], "node"),
                        f"flow '{flow}' has no node '{node}'",
                        node_fix,
                    )
                )

    for command, flow in spec.commands.items():
        target(("commands", command), flow, None)
    for index, trigger in enumerate(spec.intents):
        target(("intents", index, "flow"), trigger.flow, trigger.node)
        if known_intents is not None and trigger.intent not in known_intents:
            out.append(
                source.finding(
                    ("intents", index, "intent"),
                    f"the intent '{trigger.intent}' is not defined in nlu/data",
                    "use a defined intent, or add examples for it to nlu/data first",
                )
            )
    for index, safety in enumerate(spec.safety):
        target(("safety", index, "flow"), safety.flow, safety.node)
    for severity in ("critical", "high"):
        if not any(s.severity == severity and s.category is None for s in spec.safety):
            out.append(
                source.finding(
                    ("safety",),
                    f"no flow for a '{severity}' safety signal of any category",
                    f"add `- {{severity: {severity}, flow: ...}}` without a category",
                )
            )
    target(
        ("not_understood",),
        spec.not_understood,
        spec.stale_choice_node,
        node_path=("stale_choice_node",),
        node_fix=f"name a node of the flow '{spec.not_understood}', or leave the key out",
    )
    for name in ("stale_choice", "reask"):
        text = getattr(spec.texts, name)
        out += _lint_text(source, ("texts", name), text, LANGUAGES, discreet=True)
    return out
