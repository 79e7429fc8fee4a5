"""Log lines: as text (the default) or one JSON object a line (`CSS_LOG_FORMAT=json`).

`logging_config` is the whole `logging.config.dictConfig` of the service: the command line
applies it, and hands it to uvicorn, which applies it again in each worker process (a
worker does not inherit its parent's logging). Both formats cover the service's loggers and
uvicorn's. A JSON line has `time` (UTC, ISO 8601), `level`, `logger` and `message`; a line
logged while a job is served has its `request_id`; a job's own line (`job finished`,
`css_core.operations.record`) has its fields too. Neither format ever holds a key, a message's
content or a job's `extra_args`: the job's line holds names, numbers and statuses only.
"""

from __future__ import annotations

import copy
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

from css_core.operations import request_id

__all__ = ("JOB_FIELDS", "JsonFormatter", "TextFormatter", "lean_records", "logging_config")

#: the attribute of a log record holding a finished job's fields
JOB_FIELDS = "css_job"
_encode_json = msgspec.json.Encoder().encode
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_PLAIN = re.compile(r"[\w.:/@+-]*")  # a text value shown as is; any other is quoted


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
        return _encode_json(entry).decode()


class TextFormatter(logging.Formatter):
    """The usual text line, a job's fields after its message as `name=value`."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = getattr(record, JOB_FIELDS, None)
        if not fields:
            return line
        shown = (f"{name}={_text(value)}" for name, value in fields.items())
        return line + " " + " ".join(shown)


def _text(value: object) -> str:
    if not isinstance(value, str):
        return str(value)  # a number
    # a job's model name may hold spaces or line breaks: quoted, it cannot fake another field or line
    return value if _PLAIN.fullmatch(value) else _encode_json(value).decode()


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
    return config
