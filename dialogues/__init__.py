"""Dialogues as versioned content: the format, its migrations, loader, validator and linter,
and the pure engine that runs a flow.

`dialogues` imports nothing else of this project, never Telegram and never the database;
`care` stores published versions and feeds the engine through the `FlowSource` protocol.
"""

from dialogues.engine import (
    Context,
    Session,
    Step,
    ask_again,
    choice_id,
    resume,
    silence_alerts,
    start,
    takes_choice,
    timeout_alerts,
    timeout_minutes,
)
from dialogues.errors import (
    ContentError,
    DialogueError,
    EngineError,
    FlowLoopError,
    NewerSpecError,
    SessionError,
    UnknownFlowError,
)
from dialogues.events import (
    Choice,
    EndFlow,
    Escalate,
    Event,
    NotifyWorker,
    Say,
    SetField,
    SetLanguage,
    SetStatus,
    Wipe,
    event_from_dict,
    event_to_dict,
)
from dialogues.findings import Finding
from dialogues.flow import WORKING_COPY, Flow, FlowSource, Library
from dialogues.inputs import ChoiceInput, CommandInput, Input, TextInput, TimeoutInput
from dialogues.loader import (
    LoadedFlow,
    LoadedTriggers,
    content_hash,
    load_flow_file,
    load_flow_text,
    load_triggers_text,
)
from dialogues.spec import CURRENT_SPEC_VERSION, LANGUAGES, PLACEHOLDERS, REQUIRED_FLOWS
from dialogues.validate import CONTENT_DIR, TRIGGERS_FILE, Report, load_library, validate_dir

__all__ = [
    "CONTENT_DIR",
    "CURRENT_SPEC_VERSION",
    "LANGUAGES",
    "PLACEHOLDERS",
    "REQUIRED_FLOWS",
    "TRIGGERS_FILE",
    "WORKING_COPY",
    "Choice",
    "ChoiceInput",
    "CommandInput",
    "ContentError",
    "Context",
    "DialogueError",
    "EndFlow",
    "EngineError",
    "Escalate",
    "Event",
    "Finding",
    "Flow",
    "FlowLoopError",
    "FlowSource",
    "Input",
    "Library",
    "LoadedFlow",
    "LoadedTriggers",
    "NewerSpecError",
    "NotifyWorker",
    "Report",
    "Say",
    "Session",
    "SessionError",
    "SetField",
    "SetLanguage",
    "SetStatus",
    "Step",
    "TextInput",
    "TimeoutInput",
    "UnknownFlowError",
    "Wipe",
    "ask_again",
    "choice_id",
    "content_hash",
    "event_from_dict",
    "event_to_dict",
    "load_flow_file",
    "load_flow_text",
    "load_library",
    "load_triggers_text",
    "resume",
    "silence_alerts",
    "start",
    "takes_choice",
    "timeout_alerts",
    "timeout_minutes",
    "validate_dir",
]
