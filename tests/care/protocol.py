"""psycopg's protocol trace, for tests that count the round trips to PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, event


@contextmanager
def tracing(engine: Engine, trace: Path) -> Iterator[Engine]:
    """`engine`, whose connections write psycopg's protocol trace to `trace` from here on: the
    pool is emptied, one new connection is opened (and checked), then the trace is cleared,
    so that only what follows is in it. Afterwards the pool is emptied again."""
    from psycopg import pq

    handles: list[IO[str]] = []

    def traced(dbapi_connection: Any, _record: Any) -> None:
        handles.append(trace.open("a"))
        dbapi_connection.pgconn.trace(handles[-1].fileno())
        dbapi_connection.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)

    event.listen(engine, "connect", traced)
    engine.dispose()
    try:
        with engine.connect():
            pass
        trace.write_text("")  # what opening the connection sent is not counted
        yield engine
    finally:
        event.remove(engine, "connect", traced)
        engine.dispose()
        for handle in handles:
            handle.close()


def client_messages(trace: Path) -> list[list[str]]:
    """The messages the client sent, each as its trace fields."""
    lines = [line.split("\t") for line in trace.read_text().splitlines()]
    return [fields for fields in lines if fields[0] == "F"]


def round_trips(trace: Path) -> int:
    """How many times the client waited for the server: each Sync (the end of one or more
    statements) and each simple Query (psycopg's BEGIN and COMMIT) is one round trip."""
    return sum(1 for fields in client_messages(trace) if fields[2] in ("Sync", "Query"))
