"""Start-up time and peak memory of the local control plane (hack/localcluster.py).

    .venv/bin/python benchmarks/control_plane/bench_cluster.py [--runs 5]

Each run starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on loopback,
waits until the fake nodes are Ready and the default ServiceAccount exists (what the tests need),
reads every process's peak resident memory (VmHWM), and stops everything.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import localcluster


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    started = time.monotonic()
    bin_dir = localcluster.ensure_binaries()
    print(f"binaries ready in {time.monotonic() - started:.1f}s (cached in {bin_dir})")
    startups, peaks = [], []
    for run in range(args.runs):
        plane = localcluster.LocalControlPlane(bin_dir, Path(tempfile.mkdtemp(prefix="bench-cluster-")))
        started = time.monotonic()
        plane.start()
        startups.append(time.monotonic() - started)
        per_process = {name: peak_rss_mb(p.pid) for name, p in plane.processes.items()}
        peaks.append(sum(per_process.values()))
        plane.stop()
        detail = ", ".join(f"{name} {mb:.0f}" for name, mb in per_process.items())
        print(f"run {run + 1}: up in {startups[-1]:.1f}s; peak RSS {peaks[-1]:.0f} MB ({detail})")
    print(
        f"start-up: median {statistics.median(startups):.1f}s, max {max(startups):.1f}s (target <= 15 s); "
        f"peak memory: median {statistics.median(peaks):.0f} MB, max {max(peaks):.0f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
