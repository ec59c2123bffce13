"""Structured events: structlog, configured once by the CLI, imported on first use.

Importing structlog costs about 50 ms, half of what a hook for an unmanaged guest may
take; most hook runs log nothing, so they never pay it.
"""

import sys

_file = None


def configure(path: str):
    """Send events to ``path`` as JSON lines (stderr if it cannot be opened)."""
    global _file
    _file = path


class Logger:
    def __init__(self, name: str):
        self.name = name
        self._logger = None

    def __getattr__(self, level):
        if self._logger is None:
            self._logger = _structlog(self.name)
        return getattr(self._logger, level)


def get_logger(name: str) -> Logger:
    return Logger(name)


def _structlog(name):
    import structlog

    if not structlog.is_configured():
        try:
            out = open(_file, "a", encoding="utf-8") if _file else sys.stderr
        except OSError:
            out = sys.stderr
        structlog.configure(
            processors=[structlog.processors.add_log_level,
                        structlog.processors.TimeStamper(fmt="iso", utc=True),
                        structlog.processors.JSONRenderer()],
            logger_factory=structlog.PrintLoggerFactory(file=out),
            cache_logger_on_first_use=True)
    return structlog.get_logger(name)
