"""Side-by-side benchmark against the Node/Fastify peer (`../shared/peer`), one scenario a run.

Copies the peer to a temporary folder (the shared one may be read-only), runs its
`setup.sh`, then its `compare.sh` with this service as B, and prints the throughput and
p99 ratios B/A from the same run. Results are saved under benchmarks/runs/.

    python benchmarks/compare.py [--scenario overhead] [--rounds 3] [--duration 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "benchmarks" / "runs"
SCENARIOS = {
    # name: (fake Plivo latency in ms, connections)
    "overhead": (0, 50),
    "concurrency": (100, 200),
}


def peer_dir() -> Path:
    return Path(os.environ.get("PEER_DIR", ROOT.parent / "shared" / "peer")).resolve()


def prepare_peer(workdir: Path) -> Path:
    """A writable copy of the peer with its dependencies installed (idempotent)."""
    target = workdir / "peer"
    if not (target / "compare.sh").exists():
        shutil.copytree(peer_dir(), target, dirs_exist_ok=True)
        for path in target.rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)
    subprocess.run([str(target / "setup.sh"), "--quiet"], check=True)
    return target


def service_command(extra_env: dict[str, str]) -> str:
    env = " ".join(f"{k}={v}" for k, v in extra_env.items())
    return f"exec env {env} {sys.executable} -m app"


def run_compare(peer: Path, scenario: str, rounds: int, duration: int, env: dict[str, str]) -> dict:
    latency, connections = SCENARIOS[scenario]
    port = 3102
    command = [
        str(peer / "compare.sh"),
        "--latency-ms",
        str(latency),
        "--connections",
        str(connections),
        "--duration",
        str(duration),
        "--rounds",
        str(rounds),
        "--label-b",
        "mms-gateway",
        "--b-health",
        f"http://127.0.0.1:{port}/health",
        service_command(env),
        f"http://127.0.0.1:{port}/api/mms/send",
    ]
    summary: dict = {}
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("SUMMARY_JSON "):
                summary = json.loads(line.removeprefix("SUMMARY_JSON "))
            else:
                print(line, end="", flush=True)
    if proc.returncode != 0 or not summary:
        raise SystemExit(f"compare.sh failed (exit {proc.returncode})")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="overhead")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mms-bench"))
    args = parser.parse_args()

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    peer = prepare_peer(workdir)
    data = workdir / "data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir()
    env = {
        "LOG_FORMAT": "json",
        "DATABASE_URL": f"sqlite+aiosqlite:///{data}/bench.db",
        "PLIVO_MAX_CONCURRENCY": "100",
    }
    summary = run_compare(peer, args.scenario, args.rounds, args.duration, env)
    RUNS.mkdir(parents=True, exist_ok=True)
    out = RUNS / f"{time.strftime('%Y%m%d-%H%M%S')}-{args.scenario}.json"
    out.write_text(json.dumps(summary, indent=2))
    a, b, ratio = summary["A"], summary["B"], summary["ratio_B_over_A"]
    print()
    print(
        f"scenario {args.scenario}: peer {a['median_rps']:.0f} req/s p99 {a['median_p99_ms']} ms;"
        f" mms-gateway {b['median_rps']:.0f} req/s p99 {b['median_p99_ms']} ms"
    )
    print(
        f"ratio mms-gateway/peer: throughput {ratio['rps']}x, p99 {ratio['p99']}x, "
        f"CPU per request {ratio['cpu_per_req']}x, RSS {ratio['rss']}x  (saved to {out})"
    )


if __name__ == "__main__":
    main()
