"""Figures, the printed table and the JSON file of a benchmark run."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import django
from django.db import connection


@dataclass
class Figure:
    scenario: str
    name: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    better: str = "higher"  # or "lower"
    target: str = ""
    ok: bool | None = None  # the target met (None: no target, or not measured)
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """measured / baseline (Taskforge over Celery, deep page over page 1, ...)."""
        if not self.value or not self.baseline:
            return None
        return self.value / self.baseline


@dataclass
class Report:
    quick: bool
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    machine: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for item, figure in zip(data["figures"], self.figures, strict=True):
            item["ratio"] = figure.ratio
        return data

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")


def _memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        return None
    return None  # pragma: no cover


def machine() -> dict[str, Any]:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW server_version")
            database = f"PostgreSQL {cursor.fetchone()[0]}"
        else:
            cursor.execute("SELECT sqlite_version()")
            database = f"SQLite {cursor.fetchone()[0]}"
    bwrap = shutil.which("bwrap")
    bwrap_version = None
    if bwrap:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, check=False)
        bwrap_version = out.stdout.strip()
    return {
        "cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "memory_gib": round((_memory_bytes() or 0) / 1024**3, 1),
        "python": platform.python_version(),
        "database": database,
        "os": platform.platform(),
        "django": django.get_version(),
        "bubblewrap": bwrap_version,
        "cache": "redis" if os.environ.get("REDIS_URL") else "database",
    }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ms",):
        return f"{value:.1f} {unit}"
    if unit in ("/s",):
        return f"{value:,.0f}{unit}"
    if unit == "MiB":
        return f"{value:,.1f} {unit}"
    return f"{value:,.0f} {unit}".strip()


def print_table(report: Report, console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"Taskforge benchmark {'(quick) ' if report.quick else ''}{report.started_at}")
    for column in ("scenario", "figure", "value", "baseline", "ratio", "target", ""):
        table.add_column(column, overflow="fold")
    for f in report.figures:
        baseline = f"{_fmt(f.baseline, f.unit)} ({f.baseline_name})" if f.baseline is not None else ""
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else ""
        verdict = {True: "[green]ok[/]", False: "[red]miss[/]", None: ""}[f.ok]
        table.add_row(f.scenario, f.name, _fmt(f.value, f.unit), baseline, ratio, f.target, verdict)
    console.print(table)
    m = report.machine
    console.print(
        f"{m.get('cores')} cores, {m.get('memory_gib')} GiB, Python {m.get('python')}, "
        f"{m.get('database')}, cache {m.get('cache')}, {m.get('bubblewrap') or 'no bwrap'}"
    )
    for message in report.skipped:
        console.print(f"[yellow]skipped:[/] {message}")
