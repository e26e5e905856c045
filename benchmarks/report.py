"""Targets, the Markdown report and the PNG chart, from the runner's result dict."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AIO_GOALS",
    "GOALS",
    "PRIMITIVE_GOALS",
    "AioGoals",
    "Goals",
    "PrimitiveGoals",
    "chart",
    "markdown",
    "targets",
]


@dataclass(frozen=True)
class Goals:
    """One backend's performance targets (from its issue), checked on the medians of the rounds.

    ``throughput_vs``: peer library key -> least ratio of tenure's acquisitions/s to the peer's,
    per process count. ``flat``: per-grant counters that must stay flat as waiters grow.
    ``procs``: the process counts handoff and fairness are checked at (None: every one run).
    """

    uncontended: float | None = None  # most p50 / floor p50
    handoff_us: float | None = None  # most handoff p50
    fairness: float | None = None  # least min/max grants per worker
    throughput_vs: dict[str, float] = field(default_factory=dict)
    flat: tuple[str, ...] = ()
    renewal: bool = False  # one round trip renews 1,000 locks
    procs: tuple[str, ...] | None = None


GOALS = {
    "redis": Goals(  # issue 4
        uncontended=1.3, handoff_us=1000.0, fairness=0.5,
        throughput_vs={"python-redis-lock": 2.0, "redis-py": 10.0},
        flat=("requests_per_grant", "commands_per_grant"), renewal=True,
    ),
    # issue 5: 5x tooz's etcd3+http driver; issue 26: 3x python-etcd3 (benchmarks/_etcd3.py).
    "etcd": Goals(
        uncontended=1.3, throughput_vs={"tooz-etcd3gw": 5.0, "python-etcd3": 3.0},
        flat=("commands_per_grant",),
    ),
    "zookeeper": Goals(uncontended=1.3, throughput_vs={"kazoo": 1.0}),  # issue 6
    "postgres": Goals(uncontended=1.3, handoff_us=1000.0, fairness=0.5, procs=("8",)),  # issue 11
    # issue 7: the floor is tenure's own single-instance acquire+release on one of the masters.
    "redlock": Goals(uncontended=1.5),
}  # fmt: skip


@dataclass(frozen=True)
class PrimitiveGoals:
    """The rwlock and semaphore targets (issues [rwlock], [semaphore]), every backend, each a
    ratio to tenure's plain lock on the same backend in the same round."""

    read_uncontended: float = 1.15  # most read p50 / lock p50
    readers_vs_lock: float = 3.0  # least readers-only acq/s / lock acq/s
    sem1_uncontended: float = 1.15  # most limit-1 permit p50 / lock p50
    sem1_slowdown: float = 1.15  # most lock acq/s / limit-1 semaphore acq/s
    sem4_vs_lock: float = 2.5  # least limit-4 semaphore acq/s / lock acq/s


PRIMITIVE_GOALS = PrimitiveGoals()


@dataclass(frozen=True)
class AioGoals:
    """The asyncio targets (issue 26), every backend with a ``tenure aio`` row: against the
    asyncio floor timed in the same event loop (the sync floor where the backend has no asyncio
    client), and against the sync twin's throughput in the same round."""

    uncontended: float = 1.25  # most aio p50 / asyncio floor p50
    throughput_vs_sync: float = 0.85  # least aio acq/s / sync acq/s, per process count


AIO_GOALS = AioGoals()
NOT_SUPPORTED = "n/a (not supported)"
FLAT_MAX_SPREAD = 1.25  # per-grant counters: largest / smallest across 2..32 processes
_FLAT_LABELS = {
    "requests_per_grant": "client requests (round trips) per grant",
    "commands_per_grant": "server commands per grant, script-internal included",
}
_FLAT_LABELS_ETCD = {
    "commands_per_grant": "server requests per grant (unary calls + watch messages)"
}


def _med(summary: dict[str, Any], key: str) -> float:
    item = summary.get(key)
    return float(item["median"]) if isinstance(item, dict) and "median" in item else math.nan


def _tenure_key(section: dict[str, Any]) -> str | None:
    return next((k for k, v in section["libraries"].items() if v["tenure"]), None)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: what, the goal, the measured median, met (None: not measured), margin."""
    out: list[dict[str, Any]] = []

    def add(
        backend: str, what: str, goal: str, value: float, met: bool | None, margin: str
    ) -> None:
        if math.isnan(value):
            met, margin = None, margin if margin.startswith(NOT_SUPPORTED) else "not measured"
        out.append(
            {"backend": backend, "what": what, "goal": goal, "value": value, "met": met,
             "margin": margin}
        )  # fmt: skip

    for name, section in result["backends"].items():
        summary = section.get("summary", {})
        _primitive_targets(name, section, add)
        tenure = _tenure_key(section)
        if tenure is None or "uncontended" not in summary:
            continue
        unc = summary.get("uncontended", {}).get(tenure, {})
        con = summary.get("contended", {}).get(tenure, {})
        procs = [str(p) for p in result["config"]["processes"]]
        for key, row in sorted(summary.get("contended", {}).items()):
            worst = max((_max(row[p], "overlaps") for p in row), default=math.nan)
            if key == tenure or section["libraries"][key].get("twin") or worst > 0:
                label = section["libraries"][key]["label"]
                add(name, f"{label}: overlaps at the protected counter (all runs)", "= 0",
                    worst, worst == 0, f"{worst:.0f} overlaps")  # fmt: skip
        for key, lib in section["libraries"].items():
            if lib.get("twin"):
                _aio_targets(name, section, key, procs, add)
        goals = GOALS.get(name)
        if goals is None:
            continue
        if goals.uncontended is not None:
            ratio, most = _med(unc, "vs_floor_p50"), goals.uncontended
            add(name, "uncontended acquire+release p50 / floor p50", f"<= {most}x", ratio,
                ratio <= most, _margin(ratio, most, lower_is_better=True, unit="x"))  # fmt: skip
        for p in procs:
            row = con.get(p, {})
            checked = goals.procs is None or p in goals.procs
            if goals.handoff_us is not None and checked:
                handoff, most = _med(row, "handoff_p50_us"), goals.handoff_us
                add(name, f"handoff p50, {p} processes", f"< {most:.0f} µs", handoff,
                    handoff < most,
                    _margin(handoff, most, lower_is_better=True, unit=" µs"))  # fmt: skip
            if goals.fairness is not None and checked:
                fairness, least = _med(row, "fairness"), goals.fairness
                add(name, f"fairness (min/max grants), {p} processes", f">= {least}",
                    fairness, fairness >= least,
                    _margin(fairness, least, lower_is_better=False, unit=""))  # fmt: skip
            for peer, goal in goals.throughput_vs.items():
                r = _med(summary.get("ratios", {}).get(peer, {}).get(p, {}), "throughput")
                label = section["libraries"].get(peer, {}).get("label", peer)
                add(name, f"throughput vs {label}, {p} processes", f">= {goal:g}x", r,
                    r >= goal, _margin(r, goal, lower_is_better=False, unit="x"))  # fmt: skip
        labels = _FLAT_LABELS_ETCD if name == "etcd" else _FLAT_LABELS
        for metric in goals.flat:
            sweep = {p: _med(row, metric) for p, row in con.items()}
            sweep = {p: v for p, v in sweep.items() if not math.isnan(v)}
            if len(sweep) >= 2:
                spread = max(sweep.values()) / min(sweep.values())
                shown = ", ".join(f"{p}: {v:.2f}" for p, v in sorted(sweep.items(), key=_num))
                add(name, f"{labels[metric]}, flat as waiters grow ({shown} by processes)",
                    f"max/min <= {FLAT_MAX_SPREAD}", spread, spread <= FLAT_MAX_SPREAD,
                    f"max/min = {spread:.2f}")  # fmt: skip
        renewal = summary.get("renewal", {})
        if goals.renewal and renewal:
            trips = renewal["round_trips_max"]["max"]
            scripts = renewal["server_scripts_max"]["max"]
            add(name, f"round trips to renew {int(_med(renewal, 'locks'))} locks of one session "
                f"(client requests; server EVALSHA calls: {scripts:.0f})",
                "= 1", trips, trips == 1 and scripts == 1,
                f"{trips:.0f} (largest over all renewals)")  # fmt: skip
    return out


def _aio_targets(name: str, section: dict[str, Any], key: str, procs: list[str], add: Any) -> None:
    """An asyncio row against its asyncio floor (same loop) and its sync twin (same round)."""
    g, summary, lib = AIO_GOALS, section["summary"], section["libraries"][key]
    row = summary["uncontended"].get(key, {})
    if summary.get("afloor"):
        ratio, floor = _med(row, "vs_afloor_p50"), "asyncio floor p50 (same event loop)"
    else:
        ratio, floor = _med(row, "vs_floor_p50"), "sync floor p50 (no asyncio floor here)"
    add(name, f"{lib['label']}: uncontended p50 / {floor}", f"<= {g.uncontended}x", ratio,
        ratio <= g.uncontended,
        _margin(ratio, g.uncontended, lower_is_better=True, unit="x"))  # fmt: skip
    twin = section["libraries"].get(lib["twin"], {}).get("label", lib["twin"])
    for p in procs:
        r = _med(summary.get("twins", {}).get(key, {}).get(p, {}), "throughput")
        add(name, f"{lib['label']}: acq/s / {twin}'s (same round), {p} processes",
            f">= {g.throughput_vs_sync:g}x", r, r >= g.throughput_vs_sync,
            _margin(r, g.throughput_vs_sync, lower_is_better=False, unit="x"))  # fmt: skip


def _primitive_targets(name: str, section: dict[str, Any], add: Any) -> None:
    """The [rwlock] and [semaphore] targets of tenure on this backend (see PrimitiveGoals)."""
    prim, summary = section.get("primitives"), section.get("summary", {}).get("primitives")
    if not prim or not summary:
        return
    g = PRIMITIVE_GOALS
    unc, con, ratios = summary["uncontended"], summary["contended"], summary["ratios"]
    procs = _procs_of(prim)
    mine = {k: s for k, s in prim["scenarios"].items() if s["tenure"]}

    def find(kind: str, procs: int, limit: int = 0) -> str:
        for key, s in mine.items():
            if s["kind"] == kind and s["readers"] + s["writers"] == procs and s["limit"] == limit:
                return str(key)
        return ""

    def why(*rows: dict[str, Any]) -> str:
        for row in rows:
            if "unsupported" in row:
                return f"{NOT_SUPPORTED}: {row['unsupported']}"
        return ""

    def ratio_target(what: str, goal: float, value: float, na: str, *, lower: bool) -> None:
        met = value <= goal if lower else value >= goal
        add(name, what, f"{'<=' if lower else '>='} {goal:g}x", value, met,
            na or _margin(value, goal, lower_is_better=lower, unit="x"))  # fmt: skip

    lock = con.get(find("lock", procs), {})
    for role, goal, label in (
        ("tenure:read", g.read_uncontended, "rwlock read"),
        ("tenure:permit1", g.sem1_uncontended, "semaphore limit=1"),
    ):
        row = unc.get(role, {})
        ratio_target(f"{label}: uncontended acquire+release p50 / tenure lock p50 (same child)",
                     goal, _med(row, "vs_lock_p50"), why(row), lower=True)  # fmt: skip
    key = find("read", procs)
    ratio_target(f"rwlock readers only, {procs} processes: acq/s / tenure lock's",
                 g.readers_vs_lock, _med(ratios.get(key, {}), "vs_lock"),
                 why(con.get(key, {}), lock), lower=False)  # fmt: skip
    key = find("sem", procs, 1)
    ratio = _med(ratios.get(key, {}), "vs_lock")
    ratio_target(f"semaphore limit=1, {procs} processes: tenure lock acq/s / semaphore's",
                 g.sem1_slowdown, 1 / ratio if ratio else math.nan, why(con.get(key, {}), lock),
                 lower=True)  # fmt: skip
    key = find("sem", procs, 4)
    ratio_target(f"semaphore limit=4, {procs} processes: acq/s / tenure lock's",
                 g.sem4_vs_lock, _med(ratios.get(key, {}), "vs_lock"),
                 why(con.get(key, {}), lock), lower=False)  # fmt: skip
    sweep = sorted(((s["readers"], k) for k, s in mine.items() if s["kind"] == "rw"))
    for readers, key in sweep:
        row = con.get(key, {})
        timeouts, granted = _max(row, "write_timeouts"), _med(row, "write_grants")
        detail = (
            f"writer wait p50 {_fmt(_med(row, 'write_wait_p50_us'))} / p99 "
            f"{_fmt(_med(row, 'write_wait_p99_us'))} / max {_fmt(_max(row, 'write_wait_max_us'))} "
            f"µs; writer {_fmt(_med(row, 'write_acq_per_s'))}/s"
        )
        add(name, f"rwlock writer among {readers} readers: not starved (granted, 0 timeouts)",
            "= 0 timeouts", timeouts, timeouts == 0 and granted > 0,
            why(row) or detail)  # fmt: skip
    flat = GOALS[name].flat if name in GOALS else ()
    labels = _FLAT_LABELS_ETCD if name == "etcd" else _FLAT_LABELS
    sems = sorted(
        (s["readers"], k) for k, s in mine.items() if s["kind"] == "sem" and s["limit"] == 4
    )
    for what, runs in (("rwlock, 1 writer + N readers", sweep), ("semaphore limit=4", sems)):
        for metric in flat:
            points = {n: _med(con.get(k, {}), metric) for n, k in runs}
            points = {n: v for n, v in points.items() if not math.isnan(v)}
            if len(points) >= 2:
                spread = max(points.values()) / min(points.values())
                shown = ", ".join(f"{n}: {v:.2f}" for n, v in sorted(points.items()))
                add(name, f"{what}: {labels[metric]}, flat as waiters grow ({shown})",
                    f"max/min <= {FLAT_MAX_SPREAD}", spread, spread <= FLAT_MAX_SPREAD,
                    f"max/min = {spread:.2f}")  # fmt: skip
    worst = max((_max(con.get(k, {}), "overlaps") for k in mine), default=math.nan)
    add(name, "tenure rwlock/semaphore: promise broken (writer not alone, more than limit)",
        "= 0", worst, worst == 0, f"{worst:.0f} in all runs")  # fmt: skip
    for key, s in prim["scenarios"].items():
        bad = _max(con.get(key, {}), "overlaps")
        if not s["tenure"] and bad > 0:
            add(name, f"{s['label']}: promise broken", "= 0", bad, False, f"{bad:.0f}")


def _procs_of(prim: dict[str, Any]) -> int:
    """The process count of the runs compared with tenure's lock (its lock scenario's)."""
    for s in prim["scenarios"].values():
        if s["kind"] == "lock":
            return int(s["readers"] + s["writers"])
    return 8


def _num(item: tuple[str, float]) -> int:
    return int(item[0])


def _max(row: dict[str, Any], key: str) -> float:
    item = row.get(key)
    return float(item["max"]) if isinstance(item, dict) else math.nan


def _margin(value: float, goal: float, *, lower_is_better: bool, unit: str) -> str:
    if math.isnan(value) or goal == 0:
        return ""
    better = goal / value if lower_is_better else value / goal
    if better >= 1:
        return f"met with {better:.2f}x headroom ({value:.2f}{unit} vs {goal:g}{unit})"
    short = (value - goal) / goal * 100 if lower_is_better else (goal - value) / goal * 100
    return f"missed by {abs(short):.0f}% ({value:.2f}{unit} vs {goal:g}{unit})"


# Markdown.


def _fmt(value: float, digits: int = 0) -> str:
    if math.isnan(value):
        return "-"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _cell(summary: dict[str, Any], key: str, digits: int = 0, pct: bool = False) -> str:
    item = summary.get(key)
    if not isinstance(item, dict):
        return "-"
    scale = 100.0 if pct else 1.0
    med, lo, hi = (float(item[k]) * scale for k in ("median", "min", "max"))
    text = _fmt(med, digits) + (" %" if pct else "")
    if hi > lo and not math.isclose(lo, hi, rel_tol=1e-9):
        text += f" <sub>{_fmt(lo, digits)}\u2013{_fmt(hi, digits)}</sub>"
    return text


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    cfg = result["config"]
    lines = [
        "# tenure benchmarks",
        "",
        f"Measured {m['date']} on {m['nproc']} vCPU ({m['cpu_model']}), Linux {m['kernel']}, "
        f"Python {m['python']}, redis-server {m['redis_server']}, tenure at {m['git']}. "
        f"{'Quick' if cfg['quick'] else 'Full'} run: {cfg['rounds']} round(s), contended runs of "
        f"{cfg['contended_seconds']:g} s, {cfg['uncontended_iterations']} uncontended samples, "
        f"acquire timeout {cfg['acquire_timeout_s']:g} s; {result['elapsed_s']:.0f} s in all. "
        f"{m['spinners']['count']} SCHED_IDLE spinners "
        f"({'active' if m['spinners']['sched_idle'] else 'NOT idle-class'}); servers, workers "
        "and spinners in one process group." + _load_note(m),
        "",
        "Values are medians over the rounds, with the spread (min\u2013max) in small type. "
        "Latencies in µs. Compare libraries only within this run.",
        "",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + ".",
        "",
        "## Targets",
        "",
        "| backend | target | goal | measured | met | margin |",
        "|---|---|---|---|---|---|",
    ]
    for t in result["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(
            f"| {t['backend']} | {t['what']} | {t['goal']} | {_fmt(t['value'], 2)} | {met} | "
            f"{t['margin']} |"
        )
    for name, section in result["backends"].items():
        lines += ["", *_backend_md(name, section, cfg)]
    lines.append("")
    return "\n".join(lines)


def _load_note(m: dict[str, Any]) -> str:
    busy = m.get("busy_before_start")
    if not isinstance(busy, float) or math.isnan(busy):
        return ""
    return (
        f" CPUs busy before the run started (someone else's load): {busy:.0%}; load average "
        f"{' '.join(m.get('loadavg_at_start', []))}."
    )


def _backend_md(name: str, section: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    summary = section.get("summary", {})
    libs = section["libraries"]
    info = ", ".join(f"{k}: {v}" for k, v in section["info"].items() if k != "server_pgids")
    lines = [f"## {name}", "", f"{info}. tenure's waiters are woken by: {section['wakeup']}.", ""]
    for key, why in section.get("skipped", {}).items():
        lines.append(f"- skipped {key}: {why}")
    if "uncontended" not in summary:  # --primitives: only those rows
        return [*lines, *_primitives_md(section)]
    lines += [
        "### Uncontended acquire + release, one process",
        "",
        "| library | p50 | p99 | floor p50 alongside | p50 / floor | p99 / floor "
        "| client CPU | floor client CPU alongside |",
        "|---|---|---|---|---|---|---|---|",
        f"| floor: {section['floor_label']} (all samples) | {_cell(summary['floor'], 'p50_us')} | "
        f"{_cell(summary['floor'], 'p99_us')} | | 1.00 | 1.00 | | |",
    ]
    if summary.get("afloor"):
        lines.append(
            f"| asyncio floor: {section['afloor_label']} (all samples) | "
            f"{_cell(summary['afloor'], 'p50_us')} | {_cell(summary['afloor'], 'p99_us')} | "
            "| | | | |"
        )
    for key, lib in libs.items():
        row = summary["uncontended"].get(key, {})
        if "errors" in row and "p50_us" not in row:
            lines.append(f"| {lib['label']} | failed: {row['errors'][0]} | | | | | | |")
            continue
        lines.append(
            f"| {lib['label']} | {_cell(row, 'p50_us')} | {_cell(row, 'p99_us')} | "
            f"{_cell(row, 'floor_p50_us')} | {_cell(row, 'vs_floor_p50', 2)} | "
            f"{_cell(row, 'vs_floor_p99', 2)} | {_cell(row, 'cpu_us')} | "
            f"{_cell(row, 'floor_cpu_us')} |"
        )
    for procs in [str(p) for p in cfg["processes"]]:
        lines += _contended_md(section, procs)
    lines += _aio_md(section, cfg)
    tenure = _tenure_key(section)
    con = summary.get("contended", {}).get(tenure or "", {})
    if any("commands_per_grant" in row for row in con.values()):
        lines += [
            "",
            "### Server commands per grant as waiters grow (tenure, INFO commandstats)",
            "",
            "| processes | client requests / grant | server commands / grant | per command "
            "(last round, calls / grant; script-internal included) |",
            "|---|---|---|---|",
        ]
        for procs, row in sorted(con.items(), key=lambda kv: int(kv[0])):
            grants = row.get("grants_last_round", 0)
            moved = row.get("commands_last_round", {})
            detail = ", ".join(f"{c} {n / grants:.2f}" for c, n in moved.items()) if grants else ""
            lines.append(
                f"| {procs} | {_cell(row, 'requests_per_grant', 2)} | "
                f"{_cell(row, 'commands_per_grant', 2)} | {detail} |"
            )
    renewal = summary.get("renewal")
    if renewal:
        cmds = ", ".join(f"{c} {n}" for c, n in renewal.get("commands_last_round", {}).items())
        lines += [
            "",
            "### Renewal of one session's locks",
            "",
            "| locks held | client requests per renewal | server commands (script-internal "
            "included) | renewal p50 | renewal p99 |",
            "|---|---|---|---|---|",
            f"| {_fmt(_med(renewal, 'locks'))} | {_fmt(renewal['round_trips_max']['max'])} | "
            f"{cmds} | {_cell(renewal, 'latency_p50_us')} | {_cell(renewal, 'latency_p99_us')} |",
        ]
    return [*lines, *_primitives_md(section)]


def _aio_md(section: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """The asyncio rows: against the asyncio floor and against the sync twin."""
    summary, libs = section["summary"], section["libraries"]
    rows = [(k, lib) for k, lib in libs.items() if lib.get("twin")]
    if not rows:
        return []
    g = AIO_GOALS
    has_afloor = bool(summary.get("afloor"))
    floor = (
        f"asyncio floor: {section.get('afloor_label', '')}"
        if has_afloor
        else f"no asyncio floor ({section.get('afloor_label') or 'none'})"
    )
    lines = [
        "",
        "### asyncio rows: against the asyncio floor and the sync twin",
        "",
        "Each process runs one event loop: the uncontended samples are timed inside one "
        "`asyncio.run` (chunks of 50 of the asyncio floor, `await acquire()` + `await release()`, "
        f"and the sync floor, interleaved), and each contended worker runs its whole loop inside "
        f"one `asyncio.run`. {floor}.",
        "",
        "| row | p50 | p99 | asyncio floor p50 alongside | p50 / asyncio floor "
        f"(goal <= {g.uncontended:g}) | sync floor p50 alongside | p50 / sync floor | client CPU "
        "| asyncio floor client CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, lib in rows:
        for k, label in (
            (key, lib["label"]),
            (lib["twin"], libs.get(lib["twin"], {}).get("label")),
        ):
            row = summary["uncontended"].get(k, {})
            if label is None or "p50_us" not in row:
                continue
            lines.append(
                f"| {label} | {_cell(row, 'p50_us')} | {_cell(row, 'p99_us')} | "
                f"{_cell(row, 'afloor_p50_us')} | {_cell(row, 'vs_afloor_p50', 2)} | "
                f"{_cell(row, 'floor_p50_us')} | {_cell(row, 'vs_floor_p50', 2)} | "
                f"{_cell(row, 'cpu_us')} | {_cell(row, 'afloor_cpu_us')} |"
            )
    lines += [
        "",
        "| row | processes | acq/s | sync twin acq/s | acq/s / twin's (same round; goal >= "
        f"{g.throughput_vs_sync:g}) | fairness | twin fairness | handoff p50 | twin handoff p50 "
        "| client CPU/grant | twin client CPU/grant |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    con = summary.get("contended", {})
    for key, lib in rows:
        for p in [str(p) for p in cfg["processes"]]:
            mine, twin = con.get(key, {}).get(p, {}), con.get(lib["twin"], {}).get(p, {})
            if not mine and not twin:
                continue
            ratio = summary.get("twins", {}).get(key, {}).get(p, {})
            cells = [lib["label"], p, _cell(mine, "acq_per_s"), _cell(twin, "acq_per_s")]
            cells.append(_cell(ratio, "throughput", 2))
            for metric, digits in (
                ("fairness", 2), ("handoff_p50_us", 0), ("client_cpu_us_per_grant", 0),
            ):  # fmt: skip
                cells += [_cell(mine, metric, digits), _cell(twin, metric, digits)]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _primitives_md(section: dict[str, Any]) -> list[str]:
    """The rwlock and semaphore tables of one backend."""
    prim, summary = section.get("primitives"), section.get("summary", {}).get("primitives")
    if not prim or not summary:
        return []
    roles, scen = prim["roles"], prim["scenarios"]
    unc, con, ratios = summary["uncontended"], summary["contended"], summary["ratios"]
    base = next((s["label"] + f" x{_procs_of(prim)}" for s in scen.values() if s["kind"] == "lock"),
                "tenure lock")  # fmt: skip
    lines = ["", "### rwlock and semaphore", ""]
    for key, why in {**prim.get("unsupported", {}), **prim.get("failed", {})}.items():
        kind = NOT_SUPPORTED if key in prim.get("unsupported", {}) else "probe failed"
        lines.append(f"- {roles.get(key, key)}: {kind}: {why}")
    lines += [
        *([""] if lines[-1] else []),
        "Uncontended acquire + release, one process, each interleaved with tenure's plain lock "
        "in the same child (the ratio is to that lock):",
        "",
        "| primitive | p50 | p99 | tenure lock p50 alongside | p50 / lock | p99 / lock "
        "| client CPU | lock client CPU alongside |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in prim["uncontended"]:
        row = unc.get(key, {})
        label = roles.get(key, key)
        if "p50_us" not in row:
            lines.append(f"| {label} | {_not_measured(row)} | | | | | | |")
            continue
        lines.append(
            f"| {label} | {_cell(row, 'p50_us')} | {_cell(row, 'p99_us')} | "
            f"{_cell(row, 'lock_p50_us')} | {_cell(row, 'vs_lock_p50', 2)} | "
            f"{_cell(row, 'vs_lock_p99', 2)} | {_cell(row, 'cpu_us')} | "
            f"{_cell(row, 'lock_cpu_us')} |"
        )
    counted = any("commands_per_grant" in row for row in con.values())
    head = (
        f"| run | processes | acq/s | vs {base} (same round) | handoff p50 (one holder) | "
        "wait p50 (readers / permits) | wait p99 | fairness | most inside at once | "
        "promise broken | timeouts | errors | client CPU/grant |"
        + (" server CPU/grant | requests/grant | server cmds/grant |" if counted else "")
    )
    lines += [
        "",
        "Contended, one name: throughput, and what the holders saw. *Promise broken*: a writer "
        "not alone, a reader beside a writer, more permit holders than the limit (must be 0); "
        "*most inside*: the most holders seen at once. Wait: acquire called → returned.",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    notes: list[str] = []
    for key, s in scen.items():
        row = con.get(key, {})
        who = f"{s['label']} ({_who(s)})"
        if "acq_per_s" not in row:
            lines.append(f"| {who} | | {_not_measured(row)} |" + " |" * (head.count("|") - 4))
            continue
        shared = "read" if s["kind"] in ("read", "rw") else "permit"
        cells = [
            who,
            _fmt(s["readers"] + s["writers"]),
            _cell(row, "acq_per_s"),
            _cell(ratios.get(key, {}), "vs_lock", 2),
            _cell(row, "handoff_p50_us"),
            _cell(row, f"{shared}_wait_p50_us"),
            _cell(row, f"{shared}_wait_p99_us"),
            _cell(row, "fairness", 2),
            _cell(row, "max_inside"),
            _cell(row, "overlaps"),
            _cell(row, "timeouts"),
            _cell(row, "errors"),
            _cell(row, "client_cpu_us_per_grant"),
        ]
        if counted:
            cells += [
                _cell(row, "server_cpu_us_per_grant"),
                _cell(row, "requests_per_grant", 2),
                _cell(row, "commands_per_grant", 2),
            ]
        lines.append("| " + " | ".join(cells) + " |")
        notes += [f"- {s['label']}: {e}" for e in row.get("first_errors", [])]
        notes += [f"- {s['label']}: {e}" for e in row.get("failed_runs", [])]
    mixed = [(k, s) for k, s in scen.items() if s["kind"] == "rw"]
    if mixed:
        lines += [
            "",
            "A writer among readers (both loop acquire → release): the writer's wait must stay "
            "bounded as readers grow (arrival order: readers that come after a waiting writer "
            "queue behind it).",
            "",
            "| run | readers | writer acq/s | writer wait p50 | p99 | max | writer timeouts | "
            "reader acq/s | reader wait p50 | p99 |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, s in sorted(mixed, key=lambda ks: (ks[1]["library"], ks[1]["readers"])):
            row = con.get(key, {})
            if "acq_per_s" not in row:
                lines.append(f"| {s['label']} | {s['readers']} | {_not_measured(row)} |"
                             + " |" * 7)  # fmt: skip
                continue
            lines.append(
                f"| {s['label']} | {s['readers']} | {_cell(row, 'write_acq_per_s')} | "
                f"{_cell(row, 'write_wait_p50_us')} | {_cell(row, 'write_wait_p99_us')} | "
                f"{_fmt(_max(row, 'write_wait_max_us'))} | {_cell(row, 'write_timeouts')} | "
                f"{_cell(row, 'read_acq_per_s')} | {_cell(row, 'read_wait_p50_us')} | "
                f"{_cell(row, 'read_wait_p99_us')} |"
            )
    return lines + (["", *notes] if notes else [])


def _who(scenario: dict[str, Any]) -> str:
    if scenario["kind"] == "rw":
        return f"{scenario['writers']} writer + {scenario['readers']} readers"
    if scenario["kind"] == "read":
        return f"{scenario['readers']} readers"
    return f"{scenario['readers'] + scenario['writers']} processes"


def _not_measured(row: dict[str, Any]) -> str:
    if "unsupported" in row:
        return NOT_SUPPORTED
    if row.get("failed_runs"):
        return f"failed: {row['failed_runs'][0]}"
    return "-"


def _contended_md(section: dict[str, Any], procs: str) -> list[str]:
    summary = section.get("summary", {})
    has_cmds = any(
        "commands_per_grant" in rows.get(procs, {})
        for rows in summary.get("contended", {}).values()
    )
    head = (
        "| library | acq/s | handoff p50 | handoff p99 | fairness | self-reacquire | overlaps | "
        "timeouts | errors | client CPU/grant |"
        + (" server CPU/grant | requests/grant | server cmds/grant |" if has_cmds else "")
    )
    lines = [
        "",
        f"### Contended: {procs} processes on one name",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    notes = []
    for key, lib in section["libraries"].items():
        row = summary.get("contended", {}).get(key, {}).get(procs)
        if row is None:
            continue
        if "acq_per_s" not in row:
            lines.append(f"| {lib['label']} | failed |" + " |" * (head.count("|") - 3))
            continue
        cells = [
            lib["label"],
            _cell(row, "acq_per_s"),
            _cell(row, "handoff_p50_us"),
            _cell(row, "handoff_p99_us"),
            _cell(row, "fairness", 2),
            _cell(row, "self_reacquire", 0, pct=True),
            _cell(row, "overlaps"),
            _cell(row, "timeouts"),
            _cell(row, "errors"),
            _cell(row, "client_cpu_us_per_grant"),
        ]
        if has_cmds:
            cells += [
                _cell(row, "server_cpu_us_per_grant"),
                _cell(row, "requests_per_grant", 2),
                _cell(row, "commands_per_grant", 2),
            ]
        lines.append("| " + " | ".join(cells) + " |")
        for err in row.get("first_errors", []) + row.get("failed_runs", []):
            notes.append(f"- {lib['label']}: {err}")
    return lines + (["", *notes] if notes else [])


# Chart.


def chart(result: dict[str, Any], path: Path) -> Path | None:
    """Handoff p50 and throughput per library, 8 and 32 processes; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    procs = [str(p) for p in result["config"]["processes"]]
    labels: list[str] = []
    handoff: dict[str, list[float]] = {p: [] for p in procs}
    rate: dict[str, list[float]] = {p: [] for p in procs}
    for name, section in result["backends"].items():
        con = section.get("summary", {}).get("contended", {})
        for key, lib in section["libraries"].items():
            if key not in con:
                continue
            labels.append(f"{name}: {lib['label']}")
            for p in procs:
                row = con[key].get(p, {})
                handoff[p].append(_med(row, "handoff_p50_us"))
                rate[p].append(_med(row, "acq_per_s"))
    if not labels:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.45 * len(labels) + 2.0), sharey=True)
    height = 0.8 / len(procs)
    ys = list(range(len(labels)))
    for i, p in enumerate(procs):
        offs = [y + (i - (len(procs) - 1) / 2) * height for y in ys]
        axes[0].barh(offs, [0 if math.isnan(v) else v for v in handoff[p]], height,
                     label=f"{p} processes")  # fmt: skip
        axes[1].barh(offs, [0 if math.isnan(v) else v for v in rate[p]], height,
                     label=f"{p} processes")  # fmt: skip
    axes[0].set_xscale("log")
    axes[0].set_xlabel("handoff p50, µs (log; lower is better; line: 1 ms)")
    axes[0].axvline(1000.0, color="grey", linestyle="--", linewidth=0.8)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("acquisitions / s (log; higher is better)")
    axes[0].set_yticks(ys, labels)
    axes[0].invert_yaxis()
    for i, p in enumerate(procs):  # fairness next to each throughput bar
        con_rows = [
            (name, key)
            for name, section in result["backends"].items()
            for key in section["libraries"]
            if key in section.get("summary", {}).get("contended", {})
        ]
        for y, (name, key) in enumerate(con_rows):
            row = result["backends"][name]["summary"]["contended"][key].get(p, {})
            fair, value = _med(row, "fairness"), rate[p][y]
            if not (math.isnan(fair) or math.isnan(value)):
                off = y + (i - (len(procs) - 1) / 2) * height
                axes[1].text(value, off, f" fair {fair:.2f}", va="center", fontsize=7)
    handles, names = axes[1].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(procs))
    m = result["machine"]
    fig.suptitle(
        f"tenure vs peers, contended, one name — {m['nproc']} vCPU {m['cpu_model']}, "
        f"{m['date'][:10]}, medians of {result['config']['rounds']} round(s)"
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
