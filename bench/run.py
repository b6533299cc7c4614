"""`make bench`: every benchmark, each on a fresh database, BENCH_REPEAT
times (default 3); the medians go into one table, printed and written to
bench/results/latest.md with the machine it ran on.

    python -m config.launcher exec -- python -m bench.run      # what make bench runs
    BENCH_SCALE=0.05 BENCH_REPEAT=1 BENCH_ONLY="outbound build" make bench

The database server is the one of DATABASE_URL (the launcher starts a
throwaway one when it is unset). Migrations run once into a template
database; each run gets a copy of it (CREATE DATABASE ... TEMPLATE), named
BENCH_DB_PREFIX (default herald_bench_) + "run", dropped afterwards.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import ROOT, Row, scale

BENCHMARKS = ["outbound", "build", "generate", "claims", "ratelimit", "memory", "pages"]
RESULTS = Path(os.environ.get("BENCH_OUTPUT") or ROOT / "bench" / "results" / "latest.md")
PREFIX = os.environ.get("BENCH_DB_PREFIX") or "herald_bench_"


# --- databases -------------------------------------------------------------------


def _server() -> dict[str, Any]:
    import environ

    return environ.Env.db_url_config(os.environ["DATABASE_URL"])


def _admin():  # type: ignore[no-untyped-def]
    import psycopg

    s = _server()
    return psycopg.connect(
        dbname="postgres",
        host=s["HOST"] or None,
        port=s["PORT"] or None,
        user=s["USER"] or None,
        password=s["PASSWORD"] or None,
        autocommit=True,
    )


def _url_with_name(name: str) -> str:
    url, _, query = os.environ["DATABASE_URL"].partition("?")
    base = url.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")


def database_drop(name: str) -> None:
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_create(name: str, template: str | None = None) -> str:
    database_drop(name)
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return _url_with_name(name)


def template_prepare() -> str:
    name = PREFIX + "template"
    url = database_create(name)
    env = dict(os.environ, DATABASE_URL=url)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    return name


# --- machine ---------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def machine() -> dict[str, str]:
    with _admin() as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{_cpu_model()}, {os.cpu_count()} cores",
        "ram": f"{_ram_gb():.1f} GB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql": pg.split()[0],
        "load": f"load average at start {load}",
    }


# --- running ---------------------------------------------------------------------


def run_once(name: str, template: str) -> dict[str, Any]:
    database = PREFIX + "run"
    url = database_create(database, template)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    env = dict(os.environ, DATABASE_URL=url, BENCH_RESULT=str(out), PYTHONPATH=str(ROOT))
    try:
        subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=ROOT, env=env, check=True)
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)
        database_drop(database)


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def table_rows(rows: list[Row], runs: list[dict[str, Any]], error: str | None) -> list[list[str]]:
    lines = []
    for row in rows:
        h = median([r["figures"].get(row.herald) for r in runs])
        ref = median([r["figures"].get(row.reference) for r in runs]) if row.reference else None
        if error is not None and h is None:
            lines.append([row.figure, "error", "", "", row.target, "no"])
            continue
        reference = "—"
        if row.reference:
            reference = f"{fmt(ref, row.digits)} ({row.reference_label})"
        ratio = f"{h / ref:.2f}" if h is not None and ref else "—"
        met = "—"
        if row.met is not None and h is not None:
            met = "yes" if row.met(h, ref) else "no"
        elif row.met is not None:
            met = "n/a"
        unit = f" {row.unit}" if row.unit and h is not None else ""
        lines.append([row.figure, f"{fmt(h, row.digits)}{unit}", reference, ratio, row.target, met])
    return lines


def markdown(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines]
    return "\n".join(out)


def main() -> int:
    repeat = int(os.environ.get("BENCH_REPEAT") or 3)
    only = (os.environ.get("BENCH_ONLY") or "").split()
    unknown = [n for n in only if n not in BENCHMARKS]
    if unknown:
        print(f"bench: unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")
        return 2
    names = [n for n in BENCHMARKS if not only or n in only]
    info = machine()
    print(f"bench: {', '.join(names)}; {repeat} run(s) each, scale {scale():g}", flush=True)
    template = template_prepare()
    lines: list[list[str]] = []
    notes: list[str] = []
    failed = False
    started = time.monotonic()
    try:
        for name in names:
            module = importlib.import_module(f"bench.{name}")
            runs: list[dict[str, Any]] = []
            error = None
            for i in range(repeat):
                print(f"== {name} ({i + 1}/{repeat})", flush=True)
                try:
                    runs.append(run_once(name, template))
                except (subprocess.CalledProcessError, OSError, ValueError) as exc:
                    error = str(exc)
                    print(f"bench: {name} failed: {exc}", flush=True)
                    failed = True
                    break
            lines += table_rows(module.ROWS, runs, error)
            summary = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())
            notes += [*([""] if notes else []), f"**{name}**: {summary}", ""]
            for i, run in enumerate(runs, 1):
                notes += [f"- run {i}: {note}" for note in run["notes"]]
            if error:
                notes.append(f"- failed: {error}")
    finally:
        database_drop(template)
    header = ["Figure", "Herald", "Reference (same run)", "Ratio", "Target", "Met"]
    table = markdown(header, lines)
    minutes = (time.monotonic() - started) / 60
    print("\n" + table + "\n", flush=True)
    command = "make bench"
    names = ("BENCH_SCALE", "BENCH_REPEAT", "BENCH_ONLY")
    settings = [f"{k}={shlex.quote(os.environ[k])}" for k in names if os.environ.get(k)]
    if settings:
        command = " ".join(settings) + " " + command
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        "\n".join(
            [
                "# Benchmark results",
                "",
                f"`{command}` on {info['date']}, {minutes:.0f} minutes; "
                f"median of {repeat} run(s), sizes x {scale():g}.",
                "",
                f"- CPU: {info['cpu']}; RAM {info['ram']}; {info['os']}",
                f"- Python {info['python']}, PostgreSQL {info['postgresql']}; {info['load']}",
                "",
                table,
                "",
                "Ratio = Herald / reference. How to read this: bench/README.md.",
                "",
                "## Runs",
                "",
                *notes,
                "",
            ]
        )
    )
    print(f"bench: written to {RESULTS}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
