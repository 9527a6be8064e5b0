"""The run's document as a markdown table and PNG charts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

LABELS = {"hub": "hub", "hub-cluster": "hub, 2 processes on a 3-master Redis Cluster",
          "forwarder": "PSUBSCRIBE forwarder (ceiling)", "socketio": "python-socketio",
          "broadcaster": "encode/broadcaster", "seed004": "seed 004 pattern (floor)"}
P99_MS = 50.0


def _num(value: Any, digits: int = 0, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}{unit}"
    return str(value)


def _cell(section: Any, render: Any) -> str:
    """A scenario's cell: its value, or why it has none."""
    if isinstance(section, str):
        return section
    if isinstance(section, dict) and "error" in section:
        return f"error: {section['error']}"
    if section is None:
        return "not run"
    try:
        return str(render(section))
    except (KeyError, TypeError, IndexError, ValueError):
        return "-"


def kept_rate(steps: list[dict[str, Any]]) -> int | None:
    kept = [s["rate"] for s in steps if s.get("kept")]
    return max(kept) if kept else None


def _step_at(steps: list[dict[str, Any]], rate: int) -> dict[str, Any] | None:
    return next((s for s in steps if s.get("rate") == rate), None)


def _idle_at(rows: list[dict[str, Any]], level: int) -> str:
    row = next((r for r in rows if r.get("wanted") == level), None)
    if row is None:
        return "-"
    if "error" in row:
        return str(row["error"])
    text = f"{row['rss_per_conn_kib']:.1f}"
    if row["connections"] < level:
        text += f" ({row['connections']} of {level})"
    return text


def _fanout(section: dict[str, Any], size: str) -> str:
    entry = section.get(size)
    if entry is None:
        return "-"
    if "error" in entry:
        return f"error: {entry['error']}"
    text = _num(entry.get("median_last_ms"), 0, " ms")
    if entry.get("lost"):
        text += f" ({entry['lost']} lost)"
    return text


def _durable(section: dict[str, Any], batch: str) -> str:
    entry = section.get(batch)
    if entry is None:
        return "-"
    if "error" in entry:
        return f"error: {entry['error']}"
    bad = sum(entry.get(k, 0) for k in ("lost", "duplicate", "out_of_order", "misrouted"))
    text = f"{entry['stored_per_s']:,.0f}/s (p99 {entry['p99_ms']:.0f} ms)"
    return text + (f" ({bad} bad)" if bad else "")


def postgres_settings(settings: dict[str, str]) -> str:
    return ", ".join(f"{name} {value}" for name, value in settings.items())


def label(key: str, section: dict[str, Any]) -> str:
    workers = section.get("workers") or 1
    return LABELS.get(key, key) + (f", {workers} workers (gunicorn)" if workers > 1 else "")


def markdown(document: dict[str, Any]) -> str:
    env = document["environment"]
    results = document["results"]
    params = env["params"]
    idle_levels = params["idle_levels"]
    sizes = [str(s) for s in params["fanout_sizes"]]
    shared = set(env["pinning"]["server_cpus"]) & set(env["pinning"]["loadgen_and_redis_cpus"])
    workers = env.get("workers", 1)
    lines = [
        f"Run of {env['date']} ({env['mode']}), commit {env['commit']}, {env['machine']['cpu']}, "
        f"{env['machine']['cores']} cores, load average at start "
        f"{tuple(round(x, 1) for x in env['machine']['load_average_at_start'])}; "
        f"server{f' ({workers} workers)' if workers > 1 else ''} pinned to CPU "
        f"{env['pinning']['server_cpus']}, "
        f"load generator and redis-server to {env['pinning']['loadgen_and_redis_cpus']}"
        f"{' (shared with the server)' if shared else ''}. Python {env['python']}, redis-server "
        f"{env['redis_server']}, PostgreSQL {env['postgresql']}. Whole run: {document['seconds']:.0f} s.",
        "",
        *([f"PostgreSQL settings: {postgres_settings(env['postgresql_settings'])}.", ""]
          if env.get("postgresql_settings") else []),
        "| | " + " | ".join(f"idle KiB/conn @{n:,}" for n in idle_levels)
        + f" | unicast kept (p99 ≤ {P99_MS:.0f} ms, none lost) | p50 / p99 @ 20k/s | CPU µs/event @ 20k/s"
        + "".join(f" | fan-out {int(s):,}" for s in sizes)
        + " | durable publish, batch 1 / 100 / 1,000 | chat 100 members | reconnect storm"
        + " | server's core taken by other processes (ladder mean) |",
        "|---" * (1 + len(idle_levels) + 3 + len(sizes) + 4) + "|",
    ]
    for key, section in results.items():
        idle = section.get("idle", [])
        steps = section.get("unicast")
        cells = [f"**{label(key, section)}**"]
        cells += [_idle_at(idle, level) for level in idle_levels]
        cells.append(_cell(steps, lambda s: _num(kept_rate(s), 0, "/s") if kept_rate(s) else "none"))
        cells.append(_cell(steps, lambda s: _pair(_step_at(s, 20000))))
        cells.append(_cell(steps, lambda s: _num((_step_at(s, 20000) or {}).get("server_us_per_event"), 0)))
        for size in sizes:
            fan = _fanout(section.get("fanout", {}), size)
            api = section.get("api_fanout")
            if isinstance(api, dict) and size in api:
                fan += f"; via API {_fanout(api, size)}"
            cells.append(fan)
        durable = section.get("durable")
        cells.append(_cell(durable, lambda d: " / ".join(_durable(d, b) for b in ("1", "100", "1000"))))
        cells.append(_cell(section.get("chat"), _chat))
        cells.append(_cell(section.get("storm"), _storm))
        cells.append(_cell(steps, _noise))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Unicast ladder, p50 / p99 ms per offered rate, the server's CPU (all its processes) "
              "and its CPU µs per delivered event (✗ = not kept: loss, p99 over "
              f"{P99_MS:.0f} ms, or the load generator could not offer the rate):", ""]
    rates = sorted({s["rate"] for sec in results.values() for s in (sec.get("unicast") or [])
                    if isinstance(sec.get("unicast"), list)})
    lines.append("| rate/s | " + " | ".join(label(k, s) for k, s in results.items()) + " |")
    lines.append("|---" * (1 + len(results)) + "|")
    for rate in rates:
        row = [f"{rate:,}"]
        for section in results.values():
            steps = section.get("unicast")
            step = _step_at(steps, rate) if isinstance(steps, list) else None
            if step is None:
                row.append("")
                continue
            text = (_pair(step) + f", {step['server_cpu_pct']:.0f}% CPU, "
                    f"{step['server_us_per_event']:.0f} µs/ev")
            if not step["kept"]:
                reasons = []
                if step["lost"]:
                    reasons.append(f"{step['lost']} lost")
                if step["late_or_duplicate"] or step["misrouted"]:
                    reasons.append(f"{step['late_or_duplicate']} dup/ooo, {step['misrouted']} misrouted")
                if step.get("loadgen_limited"):
                    reasons.append(f"offered only {step['sent_per_s']:,.0f}/s")
                text += " ✗" + (f" ({'; '.join(reasons)})" if reasons else "")
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _noise(steps: list[dict[str, Any]]) -> str:
    return _num(sum(s["others_on_server_core_pct"] for s in steps) / len(steps), 0, "%")


def _pair(step: dict[str, Any] | None) -> str:
    if step is None:
        return "-"
    return f"{step['p50_ms']:.1f} / {step['p99_ms']:.1f}"


def _chat(chat: dict[str, Any]) -> str:
    if "n/a" in chat:
        return str(chat["n/a"])
    fixed, closed = chat.get("fixed", {}), chat.get("closed", {})
    return (f"{closed.get('messages_per_s', 0):,.0f} msg/s max (p99 {closed.get('p99_ms', 0):.0f} ms); "
            f"at {fixed.get('messages_per_s', 0):.0f} msg/s p50 {fixed.get('p50_ms', 0):.0f} / "
            f"p99 {fixed.get('p99_ms', 0):.0f} ms")


def _storm(storm: dict[str, Any]) -> str:
    bad = sum(storm.get(k, 0) for k in ("lost", "duplicate", "out_of_order", "misrouted"))
    return (f"{storm['clients']:,} clients, {storm['missed_events']:,} missed: caught up in "
            f"{_num(storm.get('caught_up_s'), 2, ' s')}, {storm['recovered']:,} recovered, "
            f"{'nothing lost' if not bad else f'{bad} bad'}")


def charts(document: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = document["results"]
    written = []
    figure, axis = plt.subplots(figsize=(9, 5.5))
    for key, section in results.items():
        steps = section.get("unicast")
        if not isinstance(steps, list) or not steps:
            continue
        rates = [s["sent_per_s"] for s in steps]
        line = axis.plot(rates, [s["p99_ms"] for s in steps], marker="o", label=f"{label(key, section)} p99")
        axis.plot(rates, [s["p50_ms"] for s in steps], marker=".", linestyle="--",
                  color=line[0].get_color(), alpha=0.7, label=f"{label(key, section)} p50")
    axis.axhline(P99_MS, color="grey", linewidth=0.8, linestyle=":")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("events/s offered to 1,000 connected users (unicast)")
    axis.set_ylabel("delivery latency, ms")
    axis.set_title("Latency by rate")
    axis.legend(fontsize=7, ncol=2)
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    path = out / "latency_by_rate.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(path)

    figure, axis = plt.subplots(figsize=(9, 5.5))
    for key, section in results.items():
        idle = section.get("idle")
        if not isinstance(idle, list) or not idle:
            continue
        idle = [r for r in idle if "rss_mb" in r]
        axis.plot([r["connections"] for r in idle], [r["rss_mb"] for r in idle], marker="o",
                  label=label(key, section))
    axis.set_xlabel("idle authenticated connections")
    axis.set_ylabel("server RSS, MiB")
    axis.set_title("Memory by connections")
    axis.legend(fontsize=8)
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    path = out / "memory_by_connections.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(path)
    return written
