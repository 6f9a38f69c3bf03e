"""The table: medians per runtime, per-round ratios to runc (and crun), and each target's verdict."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bench.scenarios import Samples


@dataclass(frozen=True)
class Target:
    samples_key: str
    limit: float  # the largest acceptable ratio; any failed ocirt call misses the target too
    # What ocirt is divided by: runc, or the interpreter's floor (`python3 -IS -c 'import os'` timed in
    # the same rounds, scenarios.FLOOR_ARGV).
    against: str = "runc"


# Issue 18's targets, and issue 19's for the API.
TARGETS = (
    Target("run", 1.0), Target("run100", 1.0), Target("create", 1.0), Target("start", 1.25, "floor"),
    Target("state", 1.25, "floor"), Target("kill", 1.25, "floor"), Target("delete", 1.25, "floor"),
    Target("parallel", 1.0), Target("memory", 1.1), Target("api100", 0.5),
)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def round_ratios(samples: Samples, numerator: str, denominator: str) -> list[float]:
    """One ratio per round in which both runtimes succeeded."""
    a = samples.values.get(numerator, [])
    b = samples.values.get(denominator, [])
    return [x / y for x, y in zip(a, b, strict=False) if x is not None and y is not None and y > 0]


def quartiles(values: list[float]) -> tuple[float, float] | None:
    if len(values) < 4:
        return None
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.1f}"
    if unit == "s":
        return f"{value:.2f}"
    return f"{value:.1f}"


def build_rows(results: dict[str, Samples], runtimes: list[str]) -> list[dict]:
    rows = []
    limits = {t.samples_key: t for t in TARGETS}
    for key, samples in results.items():
        row: dict = {"key": key, "metric": f"{samples.name} [{samples.unit}]", "unit": samples.unit,
                     "medians": {}, "failures": dict(samples.failures), "errors": dict(samples.errors)}
        for name in runtimes:
            row["medians"][name] = median([v for v in samples.values.get(name, []) if v is not None])
        if "floor" in samples.values:
            row["medians"]["floor"] = median([v for v in samples.values["floor"] if v is not None])
        for other in ("runc", "crun", "floor"):
            if "ocirt" in runtimes and (other in runtimes or other in samples.values):
                ratios = round_ratios(samples, "ocirt", other)
                row[f"ratio_{other}"] = median(ratios)
                row[f"iqr_{other}"] = quartiles(ratios)
        target = limits.get(key)
        if target is not None:
            row["target"] = target.limit
            row["against"] = target.against
            ratio = row.get(f"ratio_{target.against}")
            failed = samples.failures.get("ocirt", 0)
            if ratio is None:
                present = target.against in runtimes or target.against in samples.values
                row["verdict"] = "n/a" if "ocirt" not in runtimes or not present else "MISS"
            else:
                row["verdict"] = "ok" if ratio <= target.limit and not failed else "MISS"
        rows.append(row)
    return rows


def render(rows: list[dict], runtimes: list[str]) -> str:
    has_floor = any("floor" in row["medians"] for row in rows)
    header = ["metric", *runtimes] + (["floor"] if has_floor else [])
    has_runc = "ocirt" in runtimes and "runc" in runtimes
    has_crun = "ocirt" in runtimes and "crun" in runtimes
    if has_runc:
        header += ["ocirt/runc", "(IQR)"]
    if has_floor:
        header += ["ocirt/floor"]
    header += ["target", "verdict"]
    if has_crun:
        header += ["ocirt/crun"]
    table = [header]
    for row in rows:
        line = [row["metric"]]
        for name in runtimes:
            cell = _fmt(row["medians"].get(name), row["unit"])
            failures = row["failures"].get(name, 0)
            line.append(f"{cell} ({failures} failed)" if failures else cell)
        if has_floor:
            line.append(_fmt(row["medians"].get("floor"), row["unit"]))
        if has_runc:
            ratio = row.get("ratio_runc")
            iqr = row.get("iqr_runc")
            line += [f"{ratio:.2f}" if ratio is not None else "-", f"{iqr[0]:.2f}-{iqr[1]:.2f}" if iqr else ""]
        if has_floor:
            ratio = row.get("ratio_floor")
            line.append(f"{ratio:.2f}" if ratio is not None else "")
        line += [f"<= {row['target']:.2f} x {row['against']}" if "target" in row else "", row.get("verdict", "")]
        if has_crun:
            ratio = row.get("ratio_crun")
            line.append(f"{ratio:.2f}" if ratio is not None else "-")
        table.append(line)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    out = []
    for n, line in enumerate(table):
        out.append("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                             for i, cell in enumerate(line)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    errors = [f"  {row['metric']}: {name}: {err}" for row in rows for name, err in row["errors"].items()]
    if errors:
        out.append("first error of each failing runtime:")
        out += errors
    return "\n".join(out)
