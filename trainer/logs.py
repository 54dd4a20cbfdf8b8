"""Logging for every command line tool: `--log-level`, `--log-format text|json`, and the
third-party lines that read like errors but are not, demoted."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came from `extra=` and is data.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# faiss.loader logs "Could not load library with AVX512 support due to: ModuleNotFoundError"
# at INFO on every start: which SIMD build it picked, not a problem. Seen at DEBUG only.
_NOISY = ("faiss.loader",)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the fields a
    caller passed with `extra=`, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key != "color_message" and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def add_logging_arguments(parser) -> None:
    """--log-level and --log-format on an argparse parser (keep -v as the DEBUG shorthand)."""
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        default=None,
        help="least severe level logged (default info; -v/--verbose means debug)",
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="text (default) or json: one JSON object per line, for log collectors",
    )


def configure_logging(level: str | None = None, fmt: str = "text", verbose: bool = False) -> None:
    """Root logging on stderr at `level` ("debug".."error"; None: info, or debug when
    `verbose`), as text or JSON lines; third-party noise demoted below INFO."""
    if level is None:
        level = "debug" if verbose else "info"
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    # Not force=True: a process that already logs somewhere (a test runner, an embedding
    # application) keeps its handlers.
    logging.basicConfig(level=level.upper(), handlers=[handler])
    numeric = logging.getLevelName(level.upper())
    for name in _NOISY:
        logging.getLogger(name).setLevel(
            logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING
        )
