#!/usr/bin/env python
"""Time training steps of mgmt_nb classifiers on random volumes, one backbone per fresh process.

Each backbone is built with `mgmt_nb.model.build_model` (no pretrained weights) and compiled with
`mgmt_nb.model.compile_model`. build_model gives EfficientNets mgmt_nb's FastDepthwiseConv3D;
`--depthwise library` switches that off to time the library's per-channel layer. The script reports the
first `train_on_batch` (graph tracing included), the median of the later steps, the peak resident
memory of the process and the parameter count. A separate process per backbone keeps the memory
peaks apart.

Example (CPU): python tools/benchmark_backbones.py --backbones efficientnetb0 efficientnetb1 --size 64x64x32 --batch 2 --steps 5 --out benchmark.csv
Example (GPU): python tools/benchmark_backbones.py --backbones efficientnetb0 efficientnetb1 --size 256x256x64 --batch 8
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

RESULT_PREFIX = "BENCHMARK_RESULT "  # marks the worker's result line on its stdout
COLUMNS = (
    "backbone", "depthwise", "input_shape", "batch", "device", "params", "build_s",
    "first_step_s", "step_median_s", "peak_rss_mib", "gpu_peak_mib", "status",
)
DEPTHWISE_FAMILIES = ("efficientnet", "mobilenet")  # backbones of classification_models_3D with DepthwiseConv3D


def parse_size(text: str) -> tuple:
    "Parse HxWxD into a tuple of 3 positive ints (height, width, depth) in voxels."
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"size {text!r} must be HxWxD with 3 positive integers, e.g. 64x64x32.")
    return tuple(int(part) for part in parts)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 1.")
    return int(text)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["efficientnetb0", "efficientnetb1"],
                        help="backbone names accepted by mgmt_nb.model.build_model (default: efficientnetb0 efficientnetb1)")
    parser.add_argument("--size", type=parse_size, default=(64, 64, 32),
                        help="input size HxWxD in voxels, one channel (default: 64x64x32)")
    parser.add_argument("--batch", type=positive_int, default=2, help="volumes per training step (default: 2)")
    parser.add_argument("--steps", type=positive_int, default=5,
                        help="timed training steps after the first one, whose median is reported (default: 5)")
    parser.add_argument("--out", help="CSV file to write the table to (default: print only)")
    parser.add_argument("--depthwise", choices=("fast", "library"), default="fast",
                        help="depthwise layer for EfficientNet and MobileNet: mgmt_nb's FastDepthwiseConv3D "
                             "or the library's per-channel DepthwiseConv3D (default: fast)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="train under the Keras mixed_float16 policy (float16 compute, float32 weights)")
    parser.add_argument("--timeout", type=positive_int, default=3600,
                        help="seconds after which one backbone's process is stopped (default: 3600)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: benchmark this one backbone in this process
    return parser.parse_args(argv)


def describe_device(tf) -> str:
    "Return the name of the first GPU TensorFlow sees, or the CPU and its core count."
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU {details.get('device_name', gpus[0].name)} ({len(gpus)} visible)"
    return f"CPU ({os.cpu_count()} cores)"


def run_worker(args: argparse.Namespace) -> dict:
    "Build, compile and train one backbone in this process and return its row of the table."
    import resource
    import contextlib
    import numpy as np
    import keras
    import tensorflow as tf
    from mgmt_nb.model import build_model, compile_model

    arch = args.worker
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    uses_depthwise = arch.startswith(DEPTHWISE_FAMILIES)
    depthwise = args.depthwise if uses_depthwise else "none"
    input_shape = (*args.size, 1)

    keras.utils.set_random_seed(0)
    started = time.perf_counter()
    if depthwise == "library":
        import mgmt_nb.model

        mgmt_nb.model.fast_depthwise = contextlib.nullcontext  # build_model then keeps the library's layer
    model = build_model(arch, input_shape=input_shape)
    compile_model(model)
    build_s = time.perf_counter() - started

    rng = np.random.default_rng(0)
    volumes = rng.random((args.batch, *input_shape), dtype=np.float32)
    targets = (np.arange(args.batch) % 2).astype(np.float32).reshape(-1, 1)

    started = time.perf_counter()
    model.train_on_batch(volumes, targets)
    first_step_s = time.perf_counter() - started
    step_times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        model.train_on_batch(volumes, targets)
        step_times.append(time.perf_counter() - started)

    gpu_peak_mib = ""
    if tf.config.list_physical_devices("GPU"):
        gpu_peak_mib = round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20)
    return {
        "backbone": arch,
        "depthwise": depthwise,
        "input_shape": "x".join(str(size) for size in input_shape),
        "batch": args.batch,
        "device": describe_device(tf),
        "params": model.count_params(),
        "build_s": round(build_s, 2),
        "first_step_s": round(first_step_s, 2),
        "step_median_s": round(float(np.median(step_times)), 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # Linux reports KiB
        "gpu_peak_mib": gpu_peak_mib,
        "status": "ok" + (" (mixed_float16)" if args.mixed_precision else ""),
    }


def worker_command(args: argparse.Namespace, arch: str) -> list:
    command = [
        sys.executable, os.path.abspath(__file__), "--worker", arch,
        "--size", "x".join(str(size) for size in args.size), "--batch", str(args.batch),
        "--steps", str(args.steps), "--depthwise", args.depthwise,
    ]
    return command + (["--mixed-precision"] if args.mixed_precision else [])


def run_backbone(args: argparse.Namespace, arch: str) -> dict:
    "Run one backbone in a fresh Python process and return its row, with the failure in `status`."
    failed = dict.fromkeys(COLUMNS, "")
    failed.update(backbone=arch, input_shape="x".join(str(size) for size in (*args.size, 1)), batch=args.batch)
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    try:
        finished = subprocess.run(
            worker_command(args, arch), capture_output=True, text=True, timeout=args.timeout, env=environment
        )
    except subprocess.TimeoutExpired:
        failed["status"] = f"timed out after {args.timeout} s"
        return failed
    for line in reversed(finished.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    last_error = (finished.stderr.strip().splitlines() or ["no output"])[-1]
    failed["status"] = f"failed (exit code {finished.returncode}): {last_error}"
    return failed


def format_table(rows: list) -> str:
    widths = {column: max(len(column), *(len(str(row[column])) for row in rows)) for column in COLUMNS}
    lines = ["  ".join(column.ljust(widths[column]) for column in COLUMNS).rstrip()]
    lines += ["  ".join(str(row[column]).ljust(widths[column]) for column in COLUMNS).rstrip() for row in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(run_worker(args)), flush=True)
        return 0

    rows = []
    for arch in args.backbones:
        print(f"benchmarking {arch} ...", file=sys.stderr, flush=True)
        rows.append(run_backbone(args, arch))
    print(format_table(rows))
    if args.out:
        with open(args.out, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(row["status"].startswith("ok") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
