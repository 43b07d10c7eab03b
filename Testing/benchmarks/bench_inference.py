"""Benchmark: one-click auto segmentation of a KiTS-size CT (512x512x300, 0.8x0.8x1.5 mm), file in to labels out.

Prints wall time per stage (median of --repeats runs), peak RSS, and the ratio against the baseline run
in the same process: the same fine network slid over the whole CT at full resolution (nnU-Net-style,
128^3 windows, 50 % overlap). Budget (2 CPU cores): median <= 20 s, peak RSS <= 3 GB.
The CT is the bundled sample (synthetic, from a real KiTS23 label map) resampled onto the KiTS-size grid.
Run: python Testing/benchmarks/bench_inference.py [--repeats 3] [--no-baseline] [--device cpu]
(the same as `renalseg bench`).
"""

import sys

from RenalSegLib.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
