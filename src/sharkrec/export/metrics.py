"""Prometheus metrics of the HTTP server, written in the text exposition format (version 0.0.4).

Three kinds, enough for a server: :class:`Counter` (only rises), :class:`Gauge` (a value, or a function
read at scrape time) and :class:`Histogram` (cumulative ``_bucket{le=...}`` counts, ``_sum``, ``_count``).
Each has fixed label names; ``labels(...)`` picks one series. :class:`Registry` renders them all::

    # HELP sharkrec_http_requests_total HTTP requests answered, by endpoint and status.
    # TYPE sharkrec_http_requests_total counter
    sharkrec_http_requests_total{endpoint="/predict",status="200"} 12

Updates come from the event loop and the model thread; a lock per metric keeps them whole.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: request latency buckets, seconds
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: rows per model batch buckets
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)
        self._lock = threading.Lock()

    def _key(self, values: Sequence[str]) -> tuple[str, ...]:
        if len(values) != len(self.label_names):
            raise ValueError(f"metric {self.name} takes labels {self.label_names}, got {tuple(values)}")
        return tuple(str(v) for v in values)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    """A count that only rises, one per label combination."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        key = self._key(label_values)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *label_values: str) -> float:
        return self._values.get(self._key(label_values), 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.label_names, key)} {_number(v)}" for key, v in items]


class Gauge(_Metric):
    """A value that goes up and down: set directly, or read from ``function`` at every scrape."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = (),
                 function: Callable[[], float] | None = None) -> None:
        super().__init__(name, help_text, label_names)
        if function is not None and label_names:
            raise ValueError("a gauge read from a function has no labels")
        self._function = function
        self._values: dict[tuple[str, ...], float] = {}

    def set(self, value: float, *label_values: str) -> None:
        key = self._key(label_values)
        with self._lock:
            self._values[key] = float(value)

    def samples(self) -> list[str]:
        if self._function is not None:
            return [f"{self.name} {_number(float(self._function()))}"]
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.label_names, key)} {_number(v)}" for key, v in items]


class Histogram(_Metric):
    """Observations counted into upper-bounded buckets (rendered cumulative, ``+Inf`` last), their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float], label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError(f"histogram {name} needs increasing buckets, got {buckets}")
        self.buckets = tuple(float(b) for b in buckets)
        self._series: dict[tuple[str, ...], list[float]] = {}  # per bucket (+Inf last) counts, then sum

    def observe(self, value: float, *label_values: str) -> None:
        key = self._key(label_values)
        index = bisect.bisect_left(self.buckets, value)  # the first bucket with value <= le
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            series[index] += 1
            series[-1] += value

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted((key, list(series)) for key, series in self._series.items())
        lines = []
        for key, series in items:
            running = 0.0
            for bound, count in zip((*self.buckets, math.inf), series[:-1], strict=True):
                running += count
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {_number(running)}")
            labels = _labels(self.label_names, key)
            lines.append(f"{self.name}_sum{labels} {_number(series[-1])}")
            lines.append(f"{self.name}_count{labels} {_number(running)}")
        return lines


M = TypeVar("M", bound=_Metric)


class Registry:
    """The metrics of one app, rendered in registration order."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def add(self, metric: M) -> M:
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"metric {metric.name} is registered twice")
        self._metrics.append(metric)
        return metric

    def render(self) -> bytes:
        lines: list[str] = []
        for metric in self._metrics:
            lines += metric.header() + metric.samples()
        return ("\n".join(lines) + "\n").encode("utf-8")


class RequestMetrics:
    """ASGI middleware counting HTTP requests by endpoint (the route's path template, ``other`` when no
    route matched) and status, and observing their latency in seconds; with ``log``, it is also called
    with one access record per request (see :func:`access_line`)."""

    def __init__(self, app: Any, requests: Counter, latency: Histogram,
                 log: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.app = app
        self.requests = requests
        self.latency = latency
        self.log = log

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            seconds = time.perf_counter() - start
            self.requests.inc(endpoint, str(status[0]))
            self.latency.observe(seconds, endpoint)
            if self.log is not None:
                client = scope.get("client") or ("", 0)
                self.log({"time": round(time.time(), 6), "client": f"{client[0]}:{client[1]}",
                          "method": scope.get("method"), "path": scope.get("path"), "endpoint": endpoint,
                          "status": status[0], "ms": round(seconds * 1e3, 3),
                          "request_bytes": content_length(scope), "pid": os.getpid()})


def access_line(record: dict[str, Any]) -> None:
    """Write one access record as a JSON line on stderr (the structured access log of ``sharkrec serve
    --access-log``): time (Unix seconds), client, method, path, endpoint (route template), status, ms,
    request_bytes (Content-Length), pid (the worker)."""
    sys.stderr.write(json.dumps(record, separators=(",", ":")) + "\n")


def content_length(scope: dict[str, Any]) -> int | None:
    """The request's declared ``Content-Length`` (``None`` when absent or not a number)."""
    value = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
    return int(value) if value is not None and value.isdigit() else None
