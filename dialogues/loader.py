"""Read flow and triggers files: size and encoding checks, YAML with line numbers, migration,
schema validation. Every problem becomes a `Finding` with file, line and a fix.

Loading never raises anything but `ContentError` (or its `NewerSpecError`), whatever the file
contains; all findings of one file come out together.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from dialogues.errors import ContentError, NewerSpecError
from dialogues.findings import Finding
from dialogues.migrations import migrate
from dialogues.spec import CURRENT_SPEC_VERSION, NODE_KINDS, FlowSpec, TriggersSpec

MAX_FILE_BYTES = 256 * 1024
"""A flow file larger than this is refused before it is parsed."""

_MAX_VALUES = 50_000
"""Guard against YAML alias bombs: a document may hold at most this many values once expanded."""

SpecT = TypeVar("SpecT", bound=BaseModel)


@dataclass(frozen=True)
class SourceMap:
    """Finds the line of a value in the loaded YAML document, by its path of keys and indexes."""

    file: str
    root: Any = field(repr=False)

    def line(self, *path: str | int) -> int:
        """1-based line of the deepest part of `path` that exists (elements not found are skipped,
        such as the node kind pydantic puts in its error locations)."""
        current = self.root
        line = 1
        for element in path:
            if isinstance(current, Mapping) and element in current:
                line = _position(current, "key", element, line)
                current = current[element]
            elif isinstance(current, list) and isinstance(element, int) and element < len(current):
                line = _position(current, "item", element, line)
                current = current[element]
        return line

    def finding(
        self, path: Sequence[str | int], message: str, fix: str = "", *, warning: bool = False
    ) -> Finding:
        """A finding located at `path` in this file."""
        line = self.line(*path)
        if warning:
            return Finding(self.file, line, "warning", message, fix)
        return Finding(self.file, line, "error", message, fix)


def _position(container: Any, kind: str, element: Any, default: int) -> int:
    lc = getattr(container, "lc", None)
    if lc is None:
        return default
    try:
        position = lc.key(element) if kind == "key" else lc.item(element)
    except (KeyError, IndexError, TypeError):
        return default
    return int(position[0]) + 1


@dataclass(frozen=True)
class LoadedFlow:
    """A flow file that passed the schema: the model, its source text and where things are."""

    spec: FlowSpec
    source: SourceMap
    text: str
    content_hash: str
    migrated_from: tuple[int, ...] = ()


@dataclass(frozen=True)
class LoadedTriggers:
    """The triggers file after the schema check."""

    spec: TriggersSpec
    source: SourceMap
    text: str
    content_hash: str


def content_hash(spec: BaseModel) -> str:
    """sha256 of the canonical JSON of a spec: the same content gives the same hash, whatever
    its comments, key order or (older) spec_version were."""
    canonical = json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_flow_file(path: Path, name: str | None = None) -> LoadedFlow:
    """Load one flow file; `name` is how findings refer to it (default: the path)."""
    return load_flow_text(_read(path, name), name or str(path))


def load_flow_text(text: str, file: str) -> LoadedFlow:
    """Load a flow from its YAML text; `file` names it in findings."""
    spec, source, migrated = _load(text, file, FlowSpec)
    return LoadedFlow(spec, source, text, content_hash(spec), migrated)


def load_triggers_file(path: Path, name: str | None = None) -> LoadedTriggers:
    """Load the triggers file."""
    return load_triggers_text(_read(path, name), name or str(path))


def load_triggers_text(text: str, file: str) -> LoadedTriggers:
    """Load the triggers file from its YAML text."""
    spec, source, _ = _load(text, file, TriggersSpec)
    return LoadedTriggers(spec, source, text, content_hash(spec))


def _read(path: Path, name: str | None) -> str:
    file = name or str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ContentError([_too_large(file, size)])
        raw = path.read_bytes()
    except OSError as error:
        raise ContentError(
            [Finding(file, 1, "error", f"cannot read the file ({error.strerror})", "check it")]
        ) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ContentError(
            [Finding(file, 1, "error", "the file is not UTF-8 text", "save it as UTF-8")]
        ) from None


def _too_large(file: str, size: int) -> Finding:
    return Finding(
        file,
        1,
        "error",
        f"the file is {size / 1_000_000:.1f} MB; a content file may be at most "
        f"{MAX_FILE_BYTES // 1024} KB",
        "split it into smaller flows that `jump` to each other",
    )


def _load(text: str, file: str, model: type[SpecT]) -> tuple[SpecT, SourceMap, tuple[int, ...]]:
    if len(text.encode()) > MAX_FILE_BYTES:
        raise ContentError([_too_large(file, len(text.encode()))])
    tabs = [
        Finding(file, number, "error", "a tab is used for indentation", "indent with spaces")
        for number, line in enumerate(text.splitlines(), start=1)
        if "\t" in line[: len(line) - len(line.lstrip())]
    ]
    if tabs:
        raise ContentError(tabs)
    document = _parse(text, file)
    source = SourceMap(file, document)
    _check_spec_version(document, source)
    migrated = tuple(migrate(document))
    plain = _plain(document, source)
    try:
        spec = model.model_validate_json(json.dumps(plain))
    except ValidationError as error:
        raise ContentError(
            sorted({_finding(detail, source, plain) for detail in error.errors()})
        ) from None
    return spec, source, migrated


def _parse(text: str, file: str) -> Any:
    yaml = YAML(typ="rt", pure=True)
    yaml.allow_duplicate_keys = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            document = yaml.load(text)
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = (error.problem or "invalid YAML").strip()
        if "duplicate key" in problem:
            key = re.search(r'key "([^"]*)"', problem)
            name = key.group(1) if key else "?"
            message, fix = f"the key '{name}' appears twice here", "keep only one of them"
        else:
            message, fix = f"this is not valid YAML: {problem}", _yaml_fix(problem)
        raise ContentError([Finding(file, line, "error", message, fix)]) from None
    except (YAMLError, Warning) as error:
        raise ContentError(
            [Finding(file, 1, "error", f"this is not valid YAML: {type(error).__name__}")]
        ) from None
    if document is None:
        raise ContentError(
            [Finding(file, 1, "error", "the file is empty", "start from an existing flow file")]
        )
    if not isinstance(document, Mapping):
        raise ContentError(
            [
                Finding(
                    file,
                    1,
                    "error",
                    "the file must be a mapping (`key: value` lines), not a list or a single value",
                    "start with `spec_version: 3`, then `flow:`, `title:`, `languages:`, "
                    "`start:` and `nodes:`",
                )
            ]
        )
    return document


def _yaml_fix(problem: str) -> str:
    if "mapping values are not allowed" in problem:
        return "put quotes around a text that contains ': '"
    if "found character" in problem:
        return "put quotes around the text"
    return "check quotes, colons and indentation on this line and the one before"


def _check_spec_version(document: Mapping[str, Any], source: SourceMap) -> None:
    version = document.get("spec_version")
    if "spec_version" not in document:
        raise ContentError(
            [
                source.finding(
                    (),
                    "'spec_version' is missing",
                    f"add `spec_version: {CURRENT_SPEC_VERSION}` as the first line",
                )
            ]
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ContentError(
            [
                source.finding(
                    ("spec_version",),
                    "'spec_version' must be a whole number from 1 up",
                    f"write `spec_version: {CURRENT_SPEC_VERSION}`",
                )
            ]
        )
    if version > CURRENT_SPEC_VERSION:
        raise NewerSpecError(
            [
                source.finding(
                    ("spec_version",),
                    f"this file is written for spec_version {version}, but this version of "
                    f"the bot understands up to {CURRENT_SPEC_VERSION}",
                    "update the bot first, or use a file written for this version",
                )
            ]
        )


def _plain(document: Any, source: SourceMap) -> Any:
    budget = [_MAX_VALUES]

    def convert(value: Any) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise ContentError(
                [
                    source.finding(
                        (),
                        f"the file expands to more than {_MAX_VALUES} values",
                        "do not use YAML anchors and aliases (& and *) in content files",
                    )
                ]
            )
        if isinstance(value, Mapping):
            return {str(key): convert(item) for key, item in value.items()}
        if isinstance(value, list):
            return [convert(item) for item in value]
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value)
        if value is None:
            return None
        return str(value)

    return convert(document)


_TYPE_NAMES = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "bool_type": "true or false",
    "float_type": "a number",
    "dict_type": "a mapping (`key: value` lines)",
    "model_type": "a mapping (`key: value` lines)",
    "tuple_type": "a list (lines starting with `- `)",
    "list_type": "a list (lines starting with `- `)",
}


def _finding(detail: ErrorDetails, source: SourceMap, plain: Any) -> Finding:
    loc = tuple(detail["loc"])
    kind = detail["type"]
    shown = _shown_path(loc, plain)
    where = shown or "the file"
    name = str(loc[-1]) if loc else ""
    value = detail.get("input")
    if kind == "missing":
        return source.finding(loc, f"{where}: '{name}' is missing", f"add `{name}:`")
    if kind == "extra_forbidden":
        return source.finding(
            loc, f"{where}: unknown field '{name}'", "remove it or correct its spelling"
        )
    if kind == "union_tag_invalid":
        tag = (detail.get("ctx") or {}).get("tag", value)
        return source.finding(
            (*loc, "kind"),
            f"{where}: unknown node kind '{tag}'",
            "use one of: " + ", ".join(NODE_KINDS),
        )
    if kind == "union_tag_not_found":
        return source.finding(
            loc, f"{where}: the node has no 'kind'", "add `kind:` (" + ", ".join(NODE_KINDS) + ")"
        )
    if kind == "string_pattern_mismatch":
        return source.finding(loc, f"{where}: '{value}' is not a valid name", _pattern_fix(loc))
    if kind in _TYPE_NAMES:
        quote = " (put quotes around numbers meant as text)" if kind == "string_type" else ""
        message = f"{where}: must be {_TYPE_NAMES[kind]}, not {_describe(value)}"
        return source.finding(loc, message, "change it" + quote)
    if kind == "string_too_long":
        return source.finding(loc, f"{where}: {detail['msg'].lower()}", "shorten it")
    message = detail["msg"].replace("Input should be", "must be")
    return source.finding(loc, f"{where}: {message}", "correct the value")


def _pattern_fix(loc: tuple[str | int, ...]) -> str:
    if "buttons" in loc and loc[-1] == "id":
        return "use up to 16 lower-case letters, digits or _ (a button id is never text she sees)"
    return "use lower-case letters, digits and _, starting with a letter"


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int | float):
        return f"the number {value}"
    return f"'{value}'"


def _shown_path(loc: tuple[str | int, ...], plain: Any) -> str:
    parts: list[str] = []
    current = plain
    for element in loc:
        if isinstance(current, dict) and element in current:
            parts.append(str(element))
            current = current[element]
        elif isinstance(current, list) and isinstance(element, int) and element < len(current):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{element}]"]
            current = current[element]
        elif element == loc[-1] and not isinstance(element, int) and element != "[key]":
            parts.append(str(element))
    return ".".join(parts)
