"""Benchmark the operator against kmock's Kubernetes emulator.

Measures, with ``quanttrain operator`` as a separate process:

* start time: from starting the process until its watch on MLTrainingJobs arrives;
* latency: from creating one MLTrainingJob until its Job exists (median, p95),
  one resource at a time;
* burst: 500 MLTrainingJobs created at once, until every one has its Job;
* memory: the operator's peak resident set size (VmHWM) after the burst.

Run: ``.venv/bin/python benchmarks/bench_operator.py [--latency-jobs 50] [--burst-jobs 500]``.
The emulator runs in this process, so its own cost is part of every number.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kmock

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT / "tests"))

from kube_emulator import JOBS, MLTJ, ClusterEmulator, JobController  # noqa: E402
from operator_fixtures import NAMESPACE, job_spec, resource, write_kubeconfig  # noqa: E402

class BenchEmulator(ClusterEmulator):
    keep_history = False


# Targets for the operator, from the product's requirements.
TARGETS = {"latency_median_s": 0.5, "burst_s": 30.0, "peak_rss_mb": 150.0, "start_s": 2.0}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


async def start_operator(emulator: ClusterEmulator, workdir: Path) -> tuple[asyncio.subprocess.Process, float]:
    kubeconfig = workdir / "kubeconfig"
    write_kubeconfig(kubeconfig, str(emulator.url).rstrip("/"))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "QUANTTRAIN_TRAINER_IMAGE": "quanttrain-trainer:bench"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quanttrain.operator.cli", "operator", f"--namespace={NAMESPACE}", "--log-json",
        env=env, stdout=subprocess.DEVNULL, stderr=(workdir / "operator.log").open("w"),
    )
    await emulator.wait_for(lambda: emulator.watched(MLTJ), timeout=60, what="the operator's watch")
    return process, time.perf_counter() - started


async def measure_latency(emulator: ClusterEmulator, controller: JobController, count: int) -> list[float]:
    latencies = []
    for number in range(count):
        name = f"latency-{number}"
        started = time.perf_counter()
        await controller.create(MLTJ, resource(name, job_spec()))
        await emulator.wait_for(lambda: emulator.created_count(JOBS, NAMESPACE, name), timeout=60, what=f"Job {name}")
        latencies.append(time.perf_counter() - started)
    return latencies


async def measure_burst(emulator: ClusterEmulator, controller: JobController, count: int) -> float:
    names = [f"burst-{number}" for number in range(count)]
    started = time.perf_counter()
    await asyncio.gather(*(controller.create(MLTJ, resource(name, job_spec())) for name in names))
    await emulator.wait_for(
        lambda: all(emulator.created_count(JOBS, NAMESPACE, name) for name in names), timeout=300, what="every burst Job",
    )
    return time.perf_counter() - started


async def run(latency_jobs: int, burst_jobs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as workdir:
        async with BenchEmulator() as emulator, kmock.Server(emulator):
            controller = JobController(emulator, NAMESPACE)
            process, start_s = await start_operator(emulator, Path(workdir))
            try:
                latencies = await measure_latency(emulator, controller, latency_jobs)
                operator_cpu = cpu_seconds(process.pid)
                own_cpu = time.process_time()
                burst_s = await measure_burst(emulator, controller, burst_jobs)
                operator_cpu = cpu_seconds(process.pid) - operator_cpu
                own_cpu = time.process_time() - own_cpu
                rss = peak_rss_mb(process.pid)
            finally:
                process.terminate()
                await process.wait()
    ordered = sorted(latencies)
    return {
        "start_s": start_s,
        "latency_median_s": statistics.median(ordered),
        "latency_p95_s": ordered[max(0, round(0.95 * len(ordered)) - 1)],
        "burst_s": burst_s,
        "burst_operator_cpu_s": operator_cpu,
        "burst_emulator_cpu_s": own_cpu,
        "peak_rss_mb": rss,
    }


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-jobs", type=int, default=50, help="MLTrainingJobs created one at a time")
    parser.add_argument("--burst-jobs", type=int, default=500, help="MLTrainingJobs created at once")
    args = parser.parse_args()
    results = asyncio.run(run(args.latency_jobs, args.burst_jobs))

    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    for key, value in results.items():
        target = TARGETS.get(key)
        verdict = "" if target is None else f"  (target {target:g}: {'met' if value <= target else 'MISSED'})"
        print(f"{key}: {value:.3f}{verdict}")
    missed = [key for key, target in TARGETS.items() if results[key] > target]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
