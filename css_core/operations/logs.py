"""Log lines: as text (the default) or one JSON object a line (`CSS_LOG_FORMAT=json`).

`logging_config` is the whole `logging.config.dictConfig` of the service: the command line
applies it, and hands it to uvicorn, which applies it again in each worker process (a
worker does not inherit its parent's logging). Both formats cover the service's loggers and
uvicorn's. A JSON line has `time` (UTC, ISO 8601), `level`, `logger` and `message`; a line
logged while a job is served has its `request_id`; a job's own line (`job finished`,
`css_core.operations.record`) has its fields too. Neither format ever holds a key, a message's
content or a job's `extra_args`: the job's line holds names, numbers and statuses only.

A text line is one line whatever a job sent: the control characters of its message and
fields (line breaks included, Unicode's too) are shown escaped (`\\n`, `\\x1b`, `\\u2028`); only
a traceback after it spans lines. A stream cut after its answer started is logged once, by
the service (`StreamCut`): uvicorn's report of the same exception is dropped.
"""

from __future__ import annotations

import copy
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

from css_core.errors import StreamCut
from css_core.operations import request_id

__all__ = ("JOB_FIELDS", "JsonFormatter", "StreamCutFilter", "TextFormatter", "lean_records", "logging_config")

#: the attribute of a log record holding a finished job's fields
JOB_FIELDS = "css_job"
_encode_json = msgspec.json.Encoder().encode
_JSON_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_PLAIN = re.compile(r"[\w.:/@+-]*")  # a text value shown as is; any other is quoted
# what would break a text line, or rewrite the terminal showing it: C0, DEL, C1's NEL, Unicode's line breaks
_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class JsonFormatter(logging.Formatter):
    """Each record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (rid := request_id.current.get()) is not None:
            entry["request_id"] = rid
        if (fields := getattr(record, JOB_FIELDS, None)) is not None:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        line = _encode_json(entry).decode()
        # JSON allows these three unescaped, but a reader splitting on Unicode line breaks (Python's
        # `splitlines`) would cut the line there
        return line if line.isascii() else line.translate(_JSON_BREAKS)


class TextFormatter(logging.Formatter):
    """The usual text line, a job's fields after its message as `name=value`."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = getattr(record, JOB_FIELDS, None)
        if fields:
            # one loop, no call per field: a job's line has a dozen of them
            shown = [line]
            for name, value in fields.items():
                if value.__class__ is str and not _PLAIN.fullmatch(value):
                    # a model name may hold spaces or line breaks: quoted, it cannot fake a field or a line
                    value = _encode_json(value).decode()
                shown.append(f"{name}={value}")
            line = " ".join(shown)
        # a job's values reach messages too (a model name in "falling back to ..."): a line break
        # in one would start a forged line
        return line if line.isprintable() else _CONTROL.sub(_escape, line)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


class StreamCutFilter(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" when the exception is a cut stream: the
    relay raises `StreamCut` only so that the server aborts the response, and the cut is
    logged already, with its cause."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not str(record.msg).startswith("Exception in ASGI application"):
            return True
        seen: set[int] = set()
        while exc is not None and id(exc) not in seen:  # Litestar wraps it: "caught after response started"
            if isinstance(exc, StreamCut):
                return False
            seen.add(id(exc))
            exc = exc.__cause__ or exc.__context__
        return True


def lean_records() -> None:
    """Leave out of every log record what neither format shows: the caller's file and line (a
    walk up the stack), the thread, the process and its name (the logging HOWTO's
    "Optimization"). Set in each worker, where the job lines are logged."""
    logging._srcfile = None  # documented: no findCaller() per record
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    if sys.version_info >= (3, 12):
        logging.logAsyncioTasks = False


def logging_config(log_format: str, level: str = "INFO") -> dict[str, Any]:
    """The `dictConfig` of the service's logging in `log_format` ("text" or "json")."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    if log_format == "json":
        # uvicorn's own lines too: its formatters are replaced, its handlers kept
        config["formatters"] = {name: {"()": JsonFormatter} for name in config["formatters"]}
        config["formatters"]["css"] = {"()": JsonFormatter}
    else:
        config["formatters"]["css"] = {"()": TextFormatter, "fmt": TEXT_FORMAT}
    config["handlers"]["css"] = {"class": "logging.StreamHandler", "formatter": "css", "stream": "ext://sys.stderr"}
    config["root"] = {"level": level, "handlers": ["css"]}
    config["loggers"]["httpx"] = {"level": "WARNING"}  # one line per provider call otherwise
    config.setdefault("filters", {})["css_stream_cut"] = {"()": StreamCutFilter}
    config["loggers"].setdefault("uvicorn.error", {})["filters"] = ["css_stream_cut"]
    return config
