"""The service's overhead, measured against the library in the same run.

    python bench/service.py                       # embedded default (SQLite + filesystem broker)
    python bench/service.py --postgres-redis      # PostgreSQL and Redis on 127.0.0.1

Reported: a post-training job's wall time through the service (upload, submit, poll until it
succeeds) against the same compression called directly; the latency of GET /v1/jobs/{id} with
50 concurrent clients; and the API process's resident-memory growth while a 1 GB upload streams
in. Targets: at most 3 s more per job, p95 under 50 ms, growth under 64 MB.
"""

from __future__ import annotations

import argparse
import io
import os
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


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


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


def poll_latency(url: str, key: str, clients: int, requests: int) -> list[float]:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers) as client:
        job_id = client.get("/v1/jobs", params={"limit": 1}).json()["data"][0]["id"]
    latencies: list[float] = []
    lock = threading.Lock()

    def poll() -> None:
        with httpx.Client(base_url=url, headers=headers) as client:
            for _ in range(requests):
                started = time.perf_counter()
                client.get(f"/v1/jobs/{job_id}").raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=poll) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(latencies)


def upload_memory(url: str, key: str, pid: int, size: int) -> tuple[int, int, float]:
    """(RSS before, peak RSS during, seconds) for a `size`-byte streamed upload."""
    before = rss_bytes(pid)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(pid))
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
        try:
            direct, served = job_overhead(url, key, checkpoint, args.repeats)
            latencies = poll_latency(url, key, clients=50, requests=20)
            before, peak, seconds = upload_memory(url, key, server.pid, args.upload_mb << 20)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    if database is not None:
        with psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/test", autocommit=True
        ) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    p50 = latencies[len(latencies) // 2] * 1000
    p95 = latencies[int(len(latencies) * 0.95)] * 1000
    growth = (peak - before) / (1 << 20)
    print(f"\n{mode}, 2 threads")
    print("| measure | value | target |")
    print("|---|---|---|")
    print(
        f"| post-training LeNet-300-100 job, direct (median of {args.repeats}) | {direct:.2f} s | |"
    )
    print(f"| the same through the service: upload, submit, poll, download | {served:.2f} s | |")
    print(
        f"| service overhead per job | {served - direct:+.2f} s ({served / direct:.1f}x) | at most +3 s |"
    )
    print(
        f"| GET /v1/jobs/{{id}}, 50 concurrent clients x 20: p50 / p95 | {p50:.1f} / {p95:.1f} ms | p95 < 50 ms |"
    )
    print(f"| API resident memory during a {args.upload_mb} MB upload: before / peak / growth | "
          f"{before / (1 << 20):.0f} / {peak / (1 << 20):.0f} / {growth:+.1f} MB ({seconds:.1f} s) | growth < 64 MB |")  # fmt: skip


if __name__ == "__main__":
    main()
