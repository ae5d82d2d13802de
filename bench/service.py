"""The service's overhead, measured against the library in the same run.

    python bench/service.py                       # embedded default (SQLite + filesystem broker)
    python bench/service.py --postgres-redis      # PostgreSQL and Redis on 127.0.0.1

Reported: a post-training job's wall time through the service (upload, submit, poll until it
succeeds) against the same compression called directly; the latency of GET /v1/jobs/{id} with
50 clients each polling as `pqz submit --wait` does (the job's new events, then the job, every
0.5 s), and separately the requests per second the API answers when 50 clients poll in a tight
loop (a saturation test: no client does that); and the API process's resident-memory growth
while a 1 GB upload streams in, from /proc/PID/smaps_rollup (all of RSS, and its anonymous part,
which excludes mapped files). Targets: at most 3 s more per job, p95 under 50 ms, growth under
64 MB. The load average is printed: other work on the machine moves every figure.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import torch

from compression import QuantConfig, build_model, load_checkpoint, quantize_, save_pqz

PQZ = str(Path(sys.executable).parent / "pqz")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(home: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str, str]:
    port = free_port()
    process = subprocess.Popen(
        [PQZ, "serve", "--port", str(port)], env={**env, "PQZ_HOME": str(home)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    key = None
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("first API key"):
            key = line.split(":", 1)[1].strip()
        if "Uvicorn running" in line:
            break
    if key is None:
        subprocess.run(
            [PQZ, "keys", "create", "bench", "--json"],
            env={**env, "PQZ_HOME": str(home)},
            check=True,
        )
        raise SystemExit("the database already had keys: use a fresh one")
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # type: ignore[union-attr]
    return process, f"http://127.0.0.1:{port}", key


def memory_bytes(pid: int) -> tuple[int, int]:
    """(resident, anonymous) bytes of a process: anonymous memory is what the process itself
    allocated; the rest of RSS is mapped files (libraries, SQLite's shared-memory index)."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        values[name] = int(value.split()[0]) * 1024
    return values["Rss"], values["Anonymous"]


def load_average() -> str:
    return " / ".join(Path("/proc/loadavg").read_text().split()[:3])


def job_overhead(url: str, key: str, checkpoint: Path, repeats: int) -> tuple[float, float]:
    """Median seconds: direct compression, and the same through the service."""
    direct = []
    for _ in range(repeats):
        started = time.perf_counter()
        model = load_checkpoint(checkpoint, "lenet-300-100")
        quantize_(model, QuantConfig())
        save_pqz(
            model, checkpoint.with_suffix(".pqz"), architecture="lenet-300-100", num_classes=10
        )
        direct.append(time.perf_counter() - started)
    served = []
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for _ in range(repeats):
            started = time.perf_counter()
            file_id = client.post(
                "/v1/files", params={"filename": "m.pt"}, content=checkpoint.read_bytes()
            ).json()["id"]
            job_id = client.post(
                "/v1/jobs", json={"checkpoint_file": file_id, "spec": {"arch": "lenet-300-100"}}
            ).json()["id"]
            job = client.get(f"/v1/jobs/{job_id}").json()
            while job["status"] not in ("succeeded", "failed"):
                time.sleep(0.05)
                job = client.get(f"/v1/jobs/{job_id}").json()
            assert job["status"] == "succeeded", job["error"]
            client.get(f"/v1/jobs/{job_id}/artifact").raise_for_status()
            served.append(time.perf_counter() - started)
    return statistics.median(direct), statistics.median(served)


def _polled_job(url: str, headers: dict[str, str]) -> str:
    with httpx.Client(base_url=url, headers=headers) as client:
        job_id: str = client.get("/v1/jobs", params={"limit": 1}).json()["data"][0]["id"]
    return job_id


def poll_latency(url: str, key: str, clients: int, duration_s: float) -> list[float]:
    """Seconds per GET /v1/jobs/{id} while `clients` follow a job as `pqz submit --wait` does:
    the new events, then the job, then 0.5 s of sleep. Clients start at random moments."""
    headers = {"Authorization": f"Bearer {key}"}
    job_id = _polled_job(url, headers)
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + duration_s

    def follow(delay: float) -> None:
        time.sleep(delay)
        cursor = 0
        with httpx.Client(base_url=url, headers=headers) as client:
            while time.monotonic() < stop:
                events = client.get(f"/v1/jobs/{job_id}/events", params={"after": cursor})
                for event in events.raise_for_status().json()["data"]:
                    cursor = event["id"]
                started = time.perf_counter()
                client.get(f"/v1/jobs/{job_id}").raise_for_status()
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                time.sleep(0.5)  # cli/client.py `_follow`

    threads = [
        threading.Thread(target=follow, args=(random.uniform(0, 0.5),)) for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(latencies)


def saturation(url: str, key: str, clients: int, duration_s: float) -> tuple[float, list[float]]:
    """(requests per second, sorted latencies) with `clients` sending GET /v1/jobs/{id} back to
    back: what one API process answers when nothing else limits it."""
    headers = {"Authorization": f"Bearer {key}"}
    job_id = _polled_job(url, headers)
    latencies: list[float] = []
    lock = threading.Lock()
    ready, go = threading.Barrier(clients + 1), threading.Event()
    window = [0.0, 0.0]  # start, end: set once every client is connected

    def hammer() -> None:
        with httpx.Client(base_url=url, headers=headers) as client:
            client.get(f"/v1/jobs/{job_id}").raise_for_status()  # connected before the clock
            ready.wait()
            go.wait()
            mine = []
            while time.perf_counter() < window[1]:
                started = time.perf_counter()
                client.get(f"/v1/jobs/{job_id}").raise_for_status()
                mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=hammer) for _ in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    window[0] = time.perf_counter()
    window[1] = window[0] + duration_s
    go.set()
    for thread in threads:
        thread.join()
    return len(latencies) / (time.perf_counter() - window[0]), sorted(latencies)


def percentile_ms(sorted_seconds: list[float], fraction: float) -> float:
    return sorted_seconds[min(len(sorted_seconds) - 1, int(len(sorted_seconds) * fraction))] * 1000


def upload_memory(
    url: str, key: str, pid: int, size: int
) -> tuple[tuple[int, int], tuple[int, int], float]:
    """((RSS, anonymous) before, (RSS, anonymous) peaks during, seconds) for a `size`-byte
    streamed upload."""
    before = memory_bytes(pid)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            now = memory_bytes(pid)
            peak = (max(peak[0], now[0]), max(peak[1], now[1]))
            time.sleep(0.02)

    def body() -> Iterator[bytes]:
        block = secrets.token_bytes(1 << 20)
        for _ in range(size >> 20):
            yield block

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    response = httpx.post(
        f"{url}/v1/files", params={"filename": "big.bin"}, content=body(),
        headers={"Authorization": f"Bearer {key}"}, timeout=600,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    response.raise_for_status()
    return before, peak, seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres-redis", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--upload-mb", type=int, default=1024)
    parser.add_argument("--poll-s", type=float, default=20.0, help="Duration of the poll test.")
    parser.add_argument("--saturation-s", type=float, default=5.0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PQZ_")}
    env["PQZ_MAX_UPLOAD_BYTES"] = str((args.upload_mb + 1) << 20)
    mode = "embedded (SQLite + filesystem broker)"
    database = None
    if args.postgres_redis:
        import psycopg

        database = f"pqz_bench_{secrets.token_hex(4)}"
        with psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/test", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{database}"')
        env["PQZ_DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
        env["PQZ_BROKER_URL"] = "redis://127.0.0.1:6379/14"
        mode = "PostgreSQL + Redis"
    with tempfile.TemporaryDirectory() as work:
        checkpoint = Path(work) / "lenet.pt"
        buffer = io.BytesIO()
        torch.save(build_model("lenet-300-100").state_dict(), buffer)
        checkpoint.write_bytes(buffer.getvalue())
        server, url, key = start(Path(work) / "home", env)
        loads = [load_average()]
        try:
            direct, served = job_overhead(url, key, checkpoint, args.repeats)
            polls = poll_latency(url, key, clients=50, duration_s=args.poll_s)
            per_s, tight = saturation(url, key, clients=50, duration_s=args.saturation_s)
            before, peak, seconds = upload_memory(url, key, server.pid, args.upload_mb << 20)
        finally:
            loads.append(load_average())
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    if database is not None:
        with psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/test", autocommit=True
        ) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    p50, p95 = percentile_ms(polls, 0.5), percentile_ms(polls, 0.95)
    mb = 1 << 20
    growth, anonymous = (peak[0] - before[0]) / mb, (peak[1] - before[1]) / mb
    print(f"\n{mode}, 2 threads; load average {loads[0]} at the start, {loads[1]} at the end")
    print("| measure | value | target |")
    print("|---|---|---|")
    print(
        f"| post-training LeNet-300-100 job, direct (median of {args.repeats}) | {direct:.2f} s | |"
    )
    print(f"| the same through the service: upload, submit, poll, download | {served:.2f} s | |")
    overhead = served - direct
    print(
        f"| service overhead per job | {overhead:+.2f} s ({served / direct:.1f}x) | at most +3 s: {'met' if overhead <= 3 else 'not met'} |"
    )
    print(
        f"| GET /v1/jobs/{{id}}, 50 clients following a job every 0.5 s ({len(polls)} polls): p50 / p95 | {p50:.1f} / {p95:.1f} ms | p95 < 50 ms: {'met' if p95 < 50 else 'not met'} |"
    )
    print(
        f"| GET /v1/jobs/{{id}}, 50 clients in a tight loop for {args.saturation_s:.0f} s: throughput (p50 / p95) | {per_s:.0f} requests/s ({percentile_ms(tight, 0.5):.0f} / {percentile_ms(tight, 0.95):.0f} ms) | |"
    )
    print(f"| API memory during a {args.upload_mb} MB upload: RSS before / peak / growth | "
          f"{before[0] / mb:.0f} / {peak[0] / mb:.0f} / {growth:+.1f} MB ({seconds:.1f} s) | growth < 64 MB: {'met' if growth < 64 else 'not met'} |")  # fmt: skip
    print(f"| of which anonymous (not mapped files): before / peak / growth | "
          f"{before[1] / mb:.0f} / {peak[1] / mb:.0f} / {anonymous:+.1f} MB | |")  # fmt: skip


if __name__ == "__main__":
    main()
