#!/usr/bin/env python3
"""`just bench telemetry`: what exporting traces adds to `just bench e2e`'s orchestration overhead.

Runs the e2e benchmark binary BENCH again and again, alternating between no OTLP endpoint and
`OTEL_EXPORTER_OTLP_ENDPOINT` naming a real OTLP/gRPC receiver (tests/scripts/otlp_receiver.py,
started here on a free port), in the order none, otlp, otlp, none, ... so that neither mode always
runs first or on a warmer machine. Each run prints every release's overhead
(`overhead samples (ms, ...)`); the comparison pools them per mode:

- per pair of neighbouring runs (one of each mode), the ratio of their overhead p50s
  (exporting / none); their geometric mean is the cost of exporting, and a 95% interval of it
  comes from resampling the pairs (a bootstrap). Pairs take turns at which mode runs first, so a
  machine that slows down (or speeds up) through the series biases half the pairs one way and
  half the other, and the mean cancels it;
- the median of all releases' overheads per mode, and the median of the runs' p50s, as
  `just bench e2e` reports one run.

The target (issue 21) is met when the interval's upper end is at most 1.05: exporting adds at
most 5% to the overhead p50, at 95% confidence. Exits 0 either way; the verdict is printed.

Usage: bench_telemetry.py BENCH [PAIRS]  (PAIRS, default 6: runs per mode)
"""

import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time

RECEIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "otlp_receiver.py")
SAMPLES = re.compile(r"overhead samples \(ms, in release order\): ([0-9 ]+)")
P50 = re.compile(r"orchestration overhead\s+p50 (\d+) ms")
TARGET = 1.05
RESAMPLES = 4000


def load():
    with open("/proc/loadavg", encoding="ascii") as f:
        return f.read().split()[0]


def run(bench, endpoint):
    """One run of the e2e benchmark: its overhead samples and its printed p50."""
    env = dict(os.environ)
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        env.pop(name, None)
    if endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    out = subprocess.run([bench, "--bench"], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"the e2e benchmark failed (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")
    samples = SAMPLES.search(out.stdout)
    p50 = P50.search(out.stdout)
    if not samples or not p50:
        sys.exit(f"no overhead samples in the e2e benchmark's output:\n{out.stdout}")
    return [int(s) for s in samples.group(1).split()], int(p50.group(1))


def paired_interval(ratios):
    """Geometric mean of the pairs' ratios and its 95% bootstrap interval."""
    logs = [math.log(r) for r in ratios]
    rng = random.Random(21)
    means = sorted(
        statistics.fmean(rng.choices(logs, k=len(logs))) for _ in range(RESAMPLES)
    )
    low, high = means[int(0.025 * RESAMPLES)], means[int(0.975 * RESAMPLES) - 1]
    return math.exp(statistics.fmean(logs)), math.exp(low), math.exp(high)


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    bench = sys.argv[1]
    pairs = int(sys.argv[2]) if len(sys.argv) == 3 else 6
    with tempfile.TemporaryDirectory() as tmp:
        spans = os.path.join(tmp, "spans.jsonl")
        receiver = subprocess.Popen(
            [sys.executable, RECEIVER, spans, "0"], stdout=subprocess.PIPE, text=True
        )
        try:
            line = receiver.stdout.readline().split()
            if len(line) != 2 or line[0] != "listening":
                sys.exit(f"the OTLP receiver did not start: {line}")
            endpoint = f"http://127.0.0.1:{line[1]}"
            runs = {"none": [], "otlp": []}
            p50s = {"none": [], "otlp": []}
            order = []
            for pair in range(pairs):
                order += ["none", "otlp"] if pair % 2 == 0 else ["otlp", "none"]
            for i, mode in enumerate(order, 1):
                before, started = load(), time.monotonic()
                samples, p50 = run(bench, endpoint if mode == "otlp" else None)
                runs[mode].append(samples)
                p50s[mode].append(p50)
                print(
                    f"run {i:>2}/{len(order)} {mode:<4} p50 {p50:>4} ms  "
                    f"({len(samples)} releases, {time.monotonic() - started:.0f} s, load {before} → {load()})",
                    flush=True,
                )
        finally:
            receiver.terminate()
            receiver.wait()
        with open(spans, encoding="utf-8") as f:
            received = sum(1 for _ in f)
    if received == 0:
        sys.exit("no span reached the OTLP receiver: the exporting runs exported nothing")
    pooled = {mode: statistics.median([s for run in runs[mode] for s in run]) for mode in runs}
    ratios = [otlp / none for none, otlp in zip(p50s["none"], p50s["otlp"])]
    ratio, low, high = paired_interval(ratios)
    print(f"telemetry: {pairs} pairs of runs alternated, {received} spans received by the OTLP receiver")
    for mode, label in (("none", "no endpoint"), ("otlp", "exporting")):
        print(
            f"  {label:<12} runs' p50s {' '.join(map(str, p50s[mode]))} (median {statistics.median(p50s[mode]):.0f} ms); "
            f"median of all releases {pooled[mode]:.0f} ms"
        )
    print(f"  pairs' ratios (exporting / none): {' '.join(f'{r:.3f}' for r in ratios)}")
    print(f"  exporting / none: {ratio:.3f} ({(ratio - 1) * 100:+.1f}%), 95% interval {low:.3f}–{high:.3f}")
    verdict = "met" if high <= TARGET else "not shown"
    print(f"  target ≤ 5% of the overhead p50: {verdict} (the interval's upper end {high:.3f} against {TARGET})")


if __name__ == "__main__":
    main()
