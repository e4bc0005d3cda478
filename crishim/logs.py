"""Logging set-up for the three formats the config offers."""

from __future__ import annotations

import contextvars
import json
import logging
import sys

#: The filters that hid an image during the current CRI call; set (to a
#: list) only while a call is logged at debug level, else None.
HIDDEN_BY: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "crishim_hidden_by", default=None
)


def note_hidden(filter_name: str) -> None:
    """A filter hid an image during this call: said on the call's debug line."""
    hidden = HIDDEN_BY.get()
    if hidden is not None and filter_name not in hidden:
        hidden.append(filter_name)


# syslog priorities, which journald reads from a "<N>" line prefix
_JOURNAL_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    """``<6>crishim.server: message``: journald adds time and unit itself."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _JOURNAL_PRIORITY.get(record.levelno, 6)
        text = f"<{priority}>{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "info", fmt: str = "console") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "journal":
        handler.setFormatter(JournalFormatter())
    elif fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
