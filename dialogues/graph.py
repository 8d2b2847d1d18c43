"""Draw a flow as a Mermaid flowchart, so an editor can see its shape."""

from __future__ import annotations

import re

from dialogues.spec import (
    AskNode,
    BranchNode,
    EndNode,
    EscalateNode,
    FlowSpec,
    JumpNode,
    LanguageNode,
    Node,
    NotifyNode,
    SayNode,
    SetNode,
    StatusNode,
    WipeNode,
)


def to_mermaid(spec: FlowSpec, lang: str | None = None) -> str:
    """Mermaid `flowchart TD` text: one box per node (kind and a short text), labelled arrows."""
    lang = lang if lang in spec.languages else spec.languages[0]
    lines = ["flowchart TD", f"    %% {spec.flow} ({spec.title}), texts in {lang}"]
    lines.append(f"    start_(( )) --> {_id(spec.start)}")
    for node_id, node in spec.nodes.items():
        lines.append(f"    {_id(node_id)}{_shape(node_id, node, lang)}")
    for node_id, node in spec.nodes.items():
        for label, target, other_flow in _arrows(spec, node, lang):
            if other_flow:
                box = _id(f"flow_{other_flow}_{target}")
                lines.append(f'    {box}[["{_clean(other_flow)}: {_clean(target)}"]]')
                target_id = box
            else:
                target_id = _id(target)
            arrow = f" -->|{_clean(label)}| " if label else " --> "
            lines.append(f"    {_id(node_id)}{arrow}{target_id}")
    return "\n".join(lines) + "\n"


def _id(node_id: str) -> str:
    return "n_" + re.sub(r"\W", "_", node_id)


def _clean(text: str, limit: int = 40) -> str:
    text = re.sub(r'["\[\]{}()<>|#;`]', "", " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _shape(node_id: str, node: Node, lang: str) -> str:
    title = f"{node_id} · {node.kind}"
    if isinstance(node, SayNode | AskNode):
        text = node.text.get(lang, "")
        return f'["{_clean(title)}<br/>{_clean(text)}"]'
    if isinstance(node, EscalateNode):
        return f'{{{{"{_clean(title)}<br/>{node.severity}: {node.reason}"}}}}'
    if isinstance(node, NotifyNode):
        return f'{{{{"{_clean(title)}<br/>{node.reason}"}}}}'
    if isinstance(node, BranchNode):
        return f'{{"{_clean(title)}<br/>{node.flag}?"}}'
    if isinstance(node, SetNode):
        fields = ", ".join(f"{k}={v}" for k, v in node.fields.items())
        return f'[/"{_clean(title)}<br/>{_clean(fields)}"/]'
    if isinstance(node, LanguageNode):
        return f'[/"{_clean(title)}<br/>{node.lang}"/]'
    if isinstance(node, StatusNode):
        return f'[/"{_clean(title)}<br/>{node.status}"/]'
    if isinstance(node, EndNode):
        return f'(["{_clean(title)}"])'
    if isinstance(node, WipeNode | JumpNode):
        return f'[/"{_clean(title)}"/]'
    return f'["{_clean(title)}"]'


def _arrows(spec: FlowSpec, node: Node, lang: str) -> list[tuple[str, str, str | None]]:
    out: list[tuple[str, str, str | None]] = []
    if isinstance(node, SayNode | AskNode):
        for button in node.buttons:
            target = button.next or node.next
            if target:
                out.append((button.label.get(lang, button.id), target, None))
        if isinstance(node, AskNode):
            out += [(f"#{intent}", target, None) for intent, target in node.intents.items()]
            if node.otherwise:
                out.append(("otherwise", node.otherwise, None))
        if node.timeout:
            out.append(("no answer", node.timeout, None))
        if isinstance(node, SayNode) and not node.buttons and node.next:
            out.append(("", node.next, None))
    elif isinstance(node, BranchNode):
        out += [("yes", node.then, None), ("no", node.else_, None)]
    elif isinstance(node, JumpNode):
        if node.flow and node.flow != spec.flow:
            out.append(("", node.node or "start", node.flow))
        elif node.node:
            out.append(("", node.node, None))
    elif not isinstance(node, EndNode) and node.next:
        out.append(("", node.next, None))
    return out
