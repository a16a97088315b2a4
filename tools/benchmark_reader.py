#!/usr/bin/env python
"""Time mgmt_nb's DICOM reader against SimpleITK, and a preprocessing cache miss against a cache hit.

The script writes one synthetic axial series (an ellipsoid "head" with a gradient, no real anatomy)
with `mgmt_nb.data.write_dicom_series`, one file per slice, into a temporary folder. Then it times
(a) `read_volume` on the folder, (b) SimpleITK's ImageSeriesReader including GetGDCMSeriesFileNames,
(c) `read_volume` plus `preprocess_volume`, which is what a cache miss costs, and (d)
`mgmt_nb.dataloader.load_cached_volume` of the file that `cached_volume` wrote, which is what a
cache hit costs. Each time is the median of --repeats runs after one warm-up run, so the files are
in the OS page cache.

Example: python tools/benchmark_reader.py --slices 60 --size 256 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 1.")
    return int(text)


def parse_shape(text: str) -> tuple[int, int, int]:
    "Parse XxYxZ into three positive voxel counts."
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"shape {text!r} must be XxYxZ with 3 positive integers, e.g. 256x256x64.")
    return tuple(int(part) for part in parts)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=positive_int, default=60, help="slices (files) in the series (default: 60)")
    parser.add_argument("--size", type=positive_int, default=256, help="rows and columns of each slice, pixels (default: 256)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed runs per step after one warm-up; the median is reported (default: 5)")
    parser.add_argument("--target", type=parse_shape, default=(256, 256, 64),
                        help="preprocess_volume output shape XxYxZ in voxels (default: 256x256x64)")
    return parser.parse_args(argv)


def synthetic_volume(size: int, slices: int):
    "Return a synthetic RAS+ Volume: a bright ellipsoid with a gradient on a dark background, 0.9 mm pixels and 2.5 mm slices."
    from mgmt_nb.data import Volume

    x, y, z = np.meshgrid(
        np.linspace(-1, 1, size, dtype=np.float32),
        np.linspace(-1, 1, size, dtype=np.float32),
        np.linspace(-1, 1, slices, dtype=np.float32),
        indexing="ij",
    )
    inside = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.95) ** 2 < 1
    data = np.where(inside, 400 + 200 * x + 100 * y + 50 * z, 5.0).astype(np.float32)
    spacing = (0.9, 0.9, 2.5)  # mm
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-(count - 1) * step / 2 for count, step in zip(data.shape, spacing)]  # centred on the origin
    return Volume(data, affine, source="synthetic benchmark volume")


def median_ms(function, repeats: int) -> float:
    "Run `function` once as a warm-up, then `repeats` times; return the median wall time in milliseconds."
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def read_with_simpleitk(folder: Path) -> np.ndarray:
    "Read a series folder with SimpleITK; returns the array indexed (z, y, x)."
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def main(argv=None) -> int:
    args = parse_args(argv)
    import SimpleITK as sitk

    from mgmt_nb import data as data_module
    from mgmt_nb.data import preprocess_volume, read_volume, write_dicom_series
    from mgmt_nb.dataloader import cached_volume, load_cached_volume

    with tempfile.TemporaryDirectory(prefix="benchmark_reader_") as temporary:
        root = Path(temporary)
        folder = root / "series"
        write_dicom_series(synthetic_volume(args.size, args.slices), folder, plane="axial",
                           header={"SeriesDescription": "synthetic benchmark series"})
        files = sorted(folder.iterdir())
        megabytes = sum(path.stat().st_size for path in files) / 2**20

        volume = read_volume(folder)
        reference = read_with_simpleitk(folder)
        if volume.data.size != reference.size:
            print(f"error: read_volume returned shape {volume.shape} but SimpleITK {reference.shape[::-1]}, "
                  "so the two readers disagree on the series. Run tests/test_reader_reference.py before timing.", file=sys.stderr)
            return 1

        cache_file = cached_volume(folder, args.target, cache_root=root / "cache")
        times = {
            "a": median_ms(lambda: read_volume(folder), args.repeats),
            "b": median_ms(lambda: read_with_simpleitk(folder), args.repeats),
            "c": median_ms(lambda: preprocess_volume(read_volume(folder), size=args.target), args.repeats),
            "d": median_ms(lambda: load_cached_volume(cache_file), args.repeats),
        }

    target = "x".join(str(size) for size in args.target)
    rows = [
        ("(a) mgmt_nb read_volume(folder)", times["a"]),
        ("(b) SimpleITK ImageSeriesReader, with GetGDCMSeriesFileNames", times["b"]),
        (f"(c) read_volume + preprocess_volume to {target} (cache miss)", times["c"]),
        (f"(d) load_cached_volume of the cached {target} {cache_file.suffix} file (cache hit)", times["d"]),
    ]
    command = shlex.join(["python", "tools/benchmark_reader.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"Synthetic data: one axial series of {args.slices} files of {args.size}x{args.size} uint16 pixels "
          f"({megabytes:.1f} MiB), written by write_dicom_series; no real scan.")
    print(f"Command: `{command}`")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (os.cpu_count), Python {platform.python_version()}, "
          f"SimpleITK {sitk.Version.VersionString()}, threads for compressed DICOM {getattr(data_module, 'READ_WORKERS', 1)}")
    print(f"Median of {args.repeats} runs after one warm-up; files in the OS page cache.")
    print()
    print("| step | median ms |")
    print("|---|---:|")
    for label, milliseconds in rows:
        print(f"| {label} | {milliseconds:.1f} |")
    print()
    print(f"(a)/(b) = {times['a'] / times['b']:.2f} (below 1: mgmt_nb reads faster than SimpleITK)")
    print(f"(c)/(d) = {times['c'] / times['d']:.0f} (how many times a cache hit is cheaper than a miss)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
