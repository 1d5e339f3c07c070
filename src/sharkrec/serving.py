"""``sharkrec serve``: start the HTTP stack on an artifact, in one process or as N worker processes.

This module imports no torch and no web framework, so the supervisor of N workers stays small: the
artifact is checked (and its serving cache built, :mod:`sharkrec.export.shared`) in a short-lived
child process first, then every worker loads it mapped from the cache.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

from sharkrec.errors import ConfigError

#: the HTTP stacks ``sharkrec serve --server`` runs (see :func:`serve`); the first is the default
SERVERS = ("uvicorn", "granian", "uvicorn-h11")
CONFIG_ENV = "SHARKREC_SERVE_CONFIG"  # a worker process's settings, JSON, set by :func:`serve`
_APP = "sharkrec.export.server:app_from_environment"

#: what each stack needs beyond the core install; all of it is in the ``serve`` extra (granian: its own extra)
_STACKS = {"uvicorn": ("fastapi", "uvicorn", "httptools", "uvloop", "orjson"),
           "granian": ("fastapi", "granian", "uvloop", "orjson"), "uvicorn-h11": ("fastapi", "uvicorn", "orjson")}
_EXTRA = {"uvicorn": "serve", "uvicorn-h11": "serve", "granian": "granian"}


def serve(artifact: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000, *, server: str = "uvicorn",
          workers: int = 1, threads: int | None = None, access_log: bool = False,
          cache_dir: str | os.PathLike[str] | None = None, graceful_seconds: int = 30, **options: Any) -> None:
    """Run the app until interrupted.

    ``server``: ``uvicorn`` (uvicorn with the httptools parser and the uvloop event loop: the default,
    see the README's serving section for the measurement behind the choice), ``granian`` (a Rust HTTP
    front end) or ``uvicorn-h11`` (the pure-Python parser and asyncio loop, for comparison). ``workers``
    processes each serve the artifact; its tables are memory-mapped from a serving cache in ``cache_dir``,
    so the workers hold one copy. ``threads``: torch threads per worker. On SIGTERM or Ctrl-C, requests in
    flight are answered (for up to ``graceful_seconds``) before exit. ``access_log``: one JSON line per
    request on stderr. ``options`` go to :func:`sharkrec.export.server.create_app`.
    """
    if server not in SERVERS:
        raise ConfigError(f"unknown server {server!r}; use one of {', '.join(SERVERS)}")
    if workers < 1 or graceful_seconds < 0:
        raise ConfigError("workers must be >= 1 and the graceful shutdown seconds >= 0")
    missing = [name for name in _STACKS[server] if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"sharkrec serve --server {server} needs {', '.join(missing)}, which are not installed; "
                          f"install the extra: pip install 'sharkrec[{_EXTRA[server]}]'")
    if cache_dir is None:
        cache_dir = _default_cache_dir()
    config = {"artifact": str(artifact), "cache_dir": str(cache_dir), "threads": threads, "access_log": access_log,
              "options": options}
    app = None
    if workers == 1 and server != "granian":
        from sharkrec.export.server import worker_app

        app = worker_app(config)
    else:  # a bad artifact fails here, in one line, before any worker starts; the child builds the cache
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            pool.apply(_check, (config,))
        os.environ[CONFIG_ENV] = json.dumps(config)
    if server == "granian":
        from granian import Granian
        from granian.constants import HTTPModes, Interfaces, Loops

        Granian(_APP, address=host, port=port, interface=Interfaces.ASGI, workers=workers, loop=Loops.uvloop,
                http=HTTPModes.http1, factory=True, log_access=False, workers_kill_timeout=graceful_seconds or None
                ).serve()
        return
    import uvicorn

    fast = server == "uvicorn"
    # keep-alive longer than a loaded request can wait, so a pooled client connection is not closed under it
    uvicorn.run(app if app is not None else _APP, factory=app is None, workers=None if app is not None else workers,
                host=host, port=port, log_level="info", http="httptools" if fast else "h11",
                loop="uvloop" if fast else "asyncio", access_log=False, timeout_keep_alive=75,
                timeout_graceful_shutdown=graceful_seconds)


def _check(config: dict[str, Any]) -> None:
    from sharkrec.export.server import worker_app

    worker_app(config)


def _default_cache_dir() -> Path:
    """``$SHARKREC_CACHE/serving``, or ``$XDG_CACHE_HOME/sharkrec/serving`` (``~/.cache/sharkrec/serving``)."""
    if os.environ.get("SHARKREC_CACHE"):
        return Path(os.environ["SHARKREC_CACHE"]) / "serving"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sharkrec" / "serving"
