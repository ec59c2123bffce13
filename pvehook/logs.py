"""Structured events: structlog, configured once by the CLI, imported on first use.

Importing structlog costs more than the rest of a hook for an unmanaged guest (the
README's performance section has the figures): runs that change nothing log nothing,
so they never pay it, and runs that change rules import it in the background while
iptables-restore works (warm()).
"""

import sys
import threading

_file = None
_warming = None


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


def warm():
    """Start importing structlog in another thread: called just before waiting for
    iptables-restore, after which the change is logged. The wait releases the GIL, so
    the import costs the caller nothing."""
    global _warming
    if _warming is None and "structlog" not in sys.modules:
        _warming = threading.Thread(target=__import__, args=("structlog",), daemon=True)
        _warming.start()


def _structlog(name):
    if _warming is not None:
        _warming.join()
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
