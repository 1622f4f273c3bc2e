"""Peer benchmark: the same throughput / priority / delay protocol against Conveyor and its peers.

    python3 bench/peers/run.py [--peers celery,rq,...] [--phases throughput,priority,delay,rate]
                               [--tasks 20000] [--rates 0.5,50] [--rate-seconds 40] [--json out.json] [--md out.md]

Each peer runs in its own virtualenv (bench/peers/.venvs/<peer>, created on first use from
requirements-<peer>.txt); Conveyor runs from the project's .venv. Redis peers use Redis db 14 (flushed
before every phase), PostgreSQL peers a database ``peers`` (dropped and created before every phase).
See README.md beside this file for the protocol and each peer's settings. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VENVS = HERE / ".venvs"
PG = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q"]
CONVEYOR_PG_URL = "postgresql://postgres@127.0.0.1:5432/test?schema=conveyor_peers"

# name -> (store, extra environment); order is the table's order
PEERS: dict[str, tuple[str, dict[str, str]]] = {
    "conveyor-redis": ("redis", {"CONVEYOR_URL": "redis://127.0.0.1:6379/13"}),
    "celery": ("redis", {}),
    "dramatiq": ("redis", {}),
    "huey": ("redis", {}),
    "arq": ("redis", {}),
    "saq": ("redis", {}),
    "taskiq": ("redis", {}),
    "rq": ("redis", {}),
    "conveyor-postgres": ("postgres", {"CONVEYOR_URL": CONVEYOR_PG_URL}),
    "procrastinate": ("postgres", {}),
    "pgqueuer": ("postgres", {}),
    "conveyor-sqlite": ("sqlite", {"CONVEYOR_URL": "sqlite:////tmp/peers-conveyor.db"}),
    # Conveyor with a sync task on the worker's default settings, beside the sync peers
    "conveyor-redis-sync": (
        "redis",
        {"CONVEYOR_URL": "redis://127.0.0.1:6379/13", "CONVEYOR_PEER_MODE": "sync"},
    ),
    "conveyor-postgres-sync": ("postgres", {"CONVEYOR_URL": CONVEYOR_PG_URL, "CONVEYOR_PEER_MODE": "sync"}),
    # extra rows: the same peers with their documented poll interval lowered from its default
    "arq-poll50ms": ("redis", {"ARQ_POLL_DELAY": "0.05"}),
    "procrastinate-poll100ms": ("postgres", {"PROCRASTINATE_POLL": "0.1"}),
}
DEFAULT_PEERS = list(PEERS)
# peers whose task is a plain function run on threads or processes; the others' is `async def`
SYNC_PEERS = {"celery", "dramatiq", "huey", "rq"}
PHASES = ["throughput", "priority", "delay", "rate"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def python_for(peer: str) -> Path:
    """The peer's interpreter, creating its virtualenv from its pinned requirements on first use."""
    if peer.startswith("conveyor"):
        python = ROOT / ".venv" / "bin" / "python"
        if not python.exists():
            subprocess.run(["make", "-C", str(ROOT), ".venv/.installed"], check=True)
        return python
    peer = peer.split("-", 1)[0]  # variants (arq-poll50ms) share the peer's venv
    venv = VENVS / peer
    requirements = (HERE / f"requirements-{peer}.txt").read_text()
    stamp = venv / ".requirements"
    if not stamp.exists() or stamp.read_text() != requirements:
        log(f"{peer}: creating {venv.relative_to(ROOT)}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", "-r", str(HERE / f"requirements-{peer}.txt")],
            check=True,
        )
        stamp.write_text(requirements)
    return venv / "bin" / "python"


def psql(db: str, sql: str) -> None:
    subprocess.run([*PG, "-d", db, "-c", sql], check=True, capture_output=True)


def reset_store(peer: str) -> None:
    """A fresh store for one phase (Redis db 14 is flushed by the harness itself)."""
    if peer.startswith("conveyor-sqlite"):
        for suffix in ("", "-wal", "-shm"):
            Path(f"/tmp/peers-conveyor.db{suffix}").unlink(missing_ok=True)
    elif peer.startswith("conveyor-postgres"):
        psql("test", "DROP SCHEMA IF EXISTS conveyor_peers CASCADE")
    elif PEERS[peer][0] == "postgres":
        psql("test", "DROP DATABASE IF EXISTS peers WITH (FORCE)")
        psql("test", "CREATE DATABASE peers")


def harness(peer: str, phase: str, *args: str, timeout: float = 1800) -> dict[str, Any]:
    env = os.environ | PEERS[peer][1]
    # a fresh Conveyor queue per phase: Redis db 13 is shared and never flushed here
    env["PEER_QUEUE"] = f"peersbench-{phase}-{int(time.time() * 1000)}"
    cmd = [str(python_for(peer)), str(HERE / "harness.py"), peer, phase, *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        # SIGTERM lets the harness stop its workers' process groups before it exits
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    if proc.returncode != 0:
        tail = (err or out).strip().splitlines()[-3:]
        raise RuntimeError(" | ".join(tail) or f"exit code {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def run_peer(
    peer: str, tasks: int, samples: int, phases: list[str], rates: list[float], rate_seconds: float
) -> dict[str, Any]:
    store = PEERS[peer][0]
    result: dict[str, Any] = {"peer": peer, "store": store, "errors": {}}
    if peer.startswith("conveyor-redis"):
        check = subprocess.run(
            [str(python_for(peer)), "-c", "import conveyor.brokers.redis"],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            result["errors"]["install"] = (
                "conveyor.brokers.redis does not import: " + check.stderr.strip()[-200:]
            )
            return result
    try:
        result["info"] = harness(peer, "info", timeout=600)
    except Exception as exc:  # a peer that fails to install is reported, not fatal
        result["errors"]["install"] = str(exc)
        return result
    for phase in phases:
        if phase in ("priority", "delay", "rate") and not result["info"].get(phase):
            continue
        if phase == "rate":
            run_rates(peer, result, rates, rate_seconds)
            continue
        args = ["--tasks", str(tasks), "--samples", str(samples)]
        if phase == "priority":
            # a backlog that lasts well past the 4 s of high arrivals at this peer's own drain rate
            rate = result.get("throughput", {}).get("drain_steady_per_s", 5000)
            args += ["--backlog", str(max(2000, min(100_000, int(rate * 8))))]
        log(f"{peer}: {phase}")
        try:
            reset_store(peer)
            result[phase] = harness(peer, phase, *args)
            log(f"{peer}: {phase} {json.dumps(result[phase])}")
        except Exception as exc:
            result["errors"][phase] = str(exc)
            log(f"{peer}: {phase} FAILED: {exc}")
    return result


def run_rates(peer: str, result: dict[str, Any], rates: list[float], seconds: float) -> None:
    """The rate phase once per rate, each on a fresh store: ``result["rate"]`` is a list."""
    result["rate"] = []
    for rate in rates:
        log(f"{peer}: rate {rate:g}/s")
        try:
            reset_store(peer)
            args = ["--rate", f"{rate:g}", "--tasks", str(max(2, round(rate * seconds)))]
            result["rate"].append(harness(peer, "rate", *args))
            log(f"{peer}: rate {json.dumps(result['rate'][-1])}")
        except Exception as exc:
            result["errors"][f"rate {rate:g}/s"] = str(exc)
            log(f"{peer}: rate {rate:g}/s FAILED: {exc}")


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.1f}x" if a / b >= 10 else f"{a / b:.2f}x"


def enqueue_rates(t: dict[str, Any]) -> tuple[float | None, float | None]:
    """(one by one, batched) tasks/s; older result files have only the overall figure."""
    if "enqueue_one_by_one_per_s" in t:
        return t["enqueue_one_by_one_per_s"], t["enqueue_batched_per_s"]
    if str(t.get("enqueue_mode", "")).startswith("batched"):
        return None, t["enqueue_per_s"]
    return t["enqueue_per_s"], None


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| peer | store | enqueue/s one by one / batched | drain/s (steady) | e2e/s | "
        "high p50 / p99 ms (backlog drain/s) | delay late p50 / p99 / max ms | early |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        t, p, d = r.get("throughput"), r.get("priority"), r.get("delay")
        if not t:
            why = "; ".join(f"{k}: {v}" for k, v in r["errors"].items())[:160]
            lines.append(f"| {r['peer']} | {r['store']} | failed: {why} | | | | | |")
            continue
        one, batch = enqueue_rates(t)
        if p:
            high = (
                f"{fmt(p['high_p50_ms'], 1)} / {fmt(p['high_p99_ms'], 1)} "
                f"({fmt(p['backlog_drain_per_s_meanwhile'])}/s)"
            )
            if p["backlog_left_after_last_high"] <= 0:
                high += " (backlog ran out)"
        else:
            high = "failed" if "priority" in r["errors"] else "no priorities"
        if d:
            late = f"{fmt(d['late_p50_ms'], 1)} / {fmt(d['late_p99_ms'], 1)} / {fmt(d['late_max_ms'], 1)}"
            early = str(d["early"])
        else:
            late, early = ("failed" if "delay" in r["errors"] else "no delayed tasks"), "-"
        lines.append(
            f"| {r['peer']} | {r['store']} | {fmt(one)} / {fmt(batch)} | "
            f"{fmt(t['drain_per_s'])} ({fmt(t['drain_steady_per_s'])}) | {fmt(t['e2e_per_s'])} | {high} | "
            f"{late} | {early} |"
        )
    return "\n".join(lines)


def rate_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| peer | store | rate limit | requested/s | achieved/s (÷ requested) | max starts in 1 s | started / queued |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for x in r.get("rate") or []:
            lines.append(
                f"| {r['peer']} | {r['store']} | {r['info']['rate']} | {fmt(x['requested_per_s'], 1)} | "
                f"{fmt(x['achieved_per_s'], 2)} ({x['achieved_over_requested']:.2f}) | {x['max_in_1s']} | "
                f"{x['started']} / {x['tasks']} |"
            )
        for phase, error in r["errors"].items():
            if phase.startswith("rate"):
                lines.append(f"| {r['peer']} | {r['store']} | {phase} failed: {error[:120]} | | | | |")
    return "\n".join(lines)


def best(t: dict[str, Any]) -> float | None:
    one, batch = enqueue_rates(t)
    return max(x for x in (one, batch, 0.0) if x is not None) or None


def ratios(results: list[dict[str, Any]]) -> str:
    # like with like: each peer beside the Conveyor row of its store whose task is of its kind
    conveyor = {
        (r["store"], r["peer"].endswith("-sync")): r
        for r in results
        if r["peer"].startswith("conveyor") and r.get("throughput")
    }
    lines = [
        "| peer | store | beside | Conveyor enqueue ÷ peer, one by one | Conveyor enqueue ÷ peer, each at best | "
        "Conveyor drain ÷ peer | Conveyor e2e ÷ peer | peer high p99 ÷ Conveyor | peer lateness p99 ÷ Conveyor |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        sync = r["peer"].split("-")[0] in SYNC_PEERS
        c = conveyor.get((r["store"], sync)) or conveyor.get((r["store"], not sync))
        if r["peer"].startswith("conveyor") or not r.get("throughput") or not c:
            continue
        t, ct = r["throughput"], c["throughput"]
        hp = ratio((r.get("priority") or {}).get("high_p99_ms"), (c.get("priority") or {}).get("high_p99_ms"))
        dl = ratio((r.get("delay") or {}).get("late_p99_ms"), (c.get("delay") or {}).get("late_p99_ms"))
        lines.append(
            f"| {r['peer']} | {r['store']} | {c['peer']} | {ratio(enqueue_rates(ct)[0], enqueue_rates(t)[0])} | "
            f"{ratio(best(ct), best(t))} | "
            f"{ratio(ct['drain_per_s'], t['drain_per_s'])} | {ratio(ct['e2e_per_s'], t['e2e_per_s'])} | "
            f"{hp} | {dl} |"
        )
    return "\n".join(lines)


def report(results: list[dict[str, Any]], started: str, tasks: int) -> str:
    text = ""
    classic = ("throughput", "priority", "delay", "install")
    if any(r.get(p) or p in r["errors"] for r in results for p in classic):
        text += (
            f"Peer benchmark, {started}, N={tasks} no-op tasks, 2 worker processes, "
            f"{os.cpu_count()} CPUs, stores on this host. drain/s includes worker start-up; (steady) excludes it. "
            f"Priority: start delay of 200 high tasks arriving every 20 ms behind a draining low backlog "
            f"(its drain rate meanwhile in brackets). Delay: lateness of 200 tasks due 1-3 s ahead.\n\n"
            f"{table(results)}\n\nRatios (same store, same run; each peer beside the Conveyor row of its kind, sync or async):\n\n{ratios(results)}\n"
        )
    if any(r.get("rate") or any(p.startswith("rate") for p in r["errors"]) for r in results):
        text += (
            f"{chr(10) if text else ''}Rate limits, {started}: a backlog of tasks declared with each peer's rate limit, "
            f"drained by 2 worker processes (for at most twice the time the limit needs, plus 30 s); achieved = "
            f"(started - 1) / (last start - first start), starts as each task body recorded them.\n\n{rate_table(results)}\n"
        )
    return text


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the running phase stops its workers
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--peers", default=",".join(DEFAULT_PEERS), help="comma-separated, from: " + ", ".join(PEERS)
    )
    parser.add_argument(
        "--phases", default=",".join(PHASES), help="comma-separated, from: " + ", ".join(PHASES)
    )
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--rates", default="0.5,50", help="the rate phase's limits, tasks/s, comma-separated")
    parser.add_argument(
        "--rate-seconds", type=float, default=40.0, help="the rate phase's backlog, in seconds of --rate"
    )
    parser.add_argument("--samples", type=int, default=200, help="high-priority and delayed tasks per test")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--md", default=None, help="write the tables here (Markdown; default: beside --json)")
    parser.add_argument("--render", default=None, help="only print the tables of an earlier --json file")
    args = parser.parse_args()
    if args.json and not args.md:
        args.md = str(Path(args.json).with_suffix(".md"))
    if args.render:
        data = json.loads(Path(args.render).read_text())
        print(report(data["results"], data["started"], data["tasks"]))
        return
    names = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in names if p not in PEERS]
    if unknown:
        parser.error(f"unknown peers: {', '.join(unknown)}")
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if unknown := [p for p in phases if p not in PHASES]:
        parser.error(f"unknown phases: {', '.join(unknown)}")
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    results = []
    for peer in names:
        log(f"{peer}: start")
        rates = [float(x) for x in args.rates.split(",") if x.strip()]
        results.append(run_peer(peer, args.tasks, args.samples, phases, rates, args.rate_seconds))
        if args.json:  # keep what we have if a later peer hangs
            Path(args.json).write_text(
                json.dumps({"started": started, "tasks": args.tasks, "results": results}, indent=2)
            )
    text = report(results, started, args.tasks)
    print(text)
    if args.md:
        Path(args.md).write_text(text)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"started": started, "tasks": args.tasks, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
