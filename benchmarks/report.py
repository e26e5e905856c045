"""Targets, the Markdown report and the PNG chart, from the runner's result dict."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["GOALS", "Goals", "chart", "markdown", "targets"]


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
    # issue 5: tooz's etcd3+http driver is the best other Python etcd lock that runs here
    # (python-etcd3 does not import with protobuf >= 4).
    "etcd": Goals(
        uncontended=1.3, throughput_vs={"tooz-etcd3gw": 5.0}, flat=("commands_per_grant",)
    ),
    "zookeeper": Goals(uncontended=1.3, throughput_vs={"kazoo": 1.0}),  # issue 6
    "postgres": Goals(uncontended=1.3, handoff_us=1000.0, fairness=0.5, procs=("8",)),  # issue 11
    # issue 7: the floor is tenure's own single-instance acquire+release on one of the masters.
    "redlock": Goals(uncontended=1.5),
}  # fmt: skip
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
            met, margin = None, "not measured"
        out.append(
            {"backend": backend, "what": what, "goal": goal, "value": value, "met": met,
             "margin": margin}
        )  # fmt: skip

    for name, section in result["backends"].items():
        summary = section.get("summary", {})
        tenure = _tenure_key(section)
        if tenure is None:
            continue
        unc = summary.get("uncontended", {}).get(tenure, {})
        con = summary.get("contended", {}).get(tenure, {})
        procs = [str(p) for p in result["config"]["processes"]]
        for key, row in sorted(summary.get("contended", {}).items()):
            worst = max((_max(row[p], "overlaps") for p in row), default=math.nan)
            if key == tenure or worst > 0:
                label = section["libraries"][key]["label"]
                add(name, f"{label}: overlaps at the protected counter (all runs)", "= 0",
                    worst, worst == 0, f"{worst:.0f} overlaps")  # fmt: skip
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
    lines += [
        "### Uncontended acquire + release, one process",
        "",
        "| library | p50 | p99 | floor p50 alongside | p50 / floor | p99 / floor "
        "| client CPU | floor client CPU alongside |",
        "|---|---|---|---|---|---|---|---|",
        f"| floor: {section['floor_label']} (all samples) | {_cell(summary['floor'], 'p50_us')} | "
        f"{_cell(summary['floor'], 'p99_us')} | | 1.00 | 1.00 | | |",
    ]
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
    return lines


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
