"""Accuracy bound: the Dice per HEC a perfect network would reach on the fine stage's grid (or another).

Each reference label map goes onto an isotropic grid and back as the network's probabilities do in
inference (``evaluation.grid_ceiling``); the printed Dice is what the grid alone loses.
Run: python Testing/benchmarks/grid_ceiling.py REF_DIR [--spacing 1.5 1.0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from RenalSegLib.evaluation import HEC_NAMES, grid_ceiling, label_files
from RenalSegLib.training import STAGES
from RenalSegLib.volume import read_labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("references", help="folder of KiTS label maps")
    parser.add_argument("--spacing", type=float, nargs="+", default=[STAGES["fine"].spacing_mm], help="grid spacings (mm)")
    args = parser.parse_args()
    files = label_files(Path(args.references), "reference")
    means = {}
    for spacing in args.spacing:
        rows = []
        for case, path in files.items():
            rows.append(grid_ceiling(read_labels(path), spacing))
            print(f"{spacing:.2f} mm  {case}  " + "  ".join(f"{hec} {rows[-1][hec]:.3f}" for hec in HEC_NAMES), flush=True)
        means[spacing] = {hec: float(np.mean([row[hec] for row in rows])) for hec in HEC_NAMES}
    for spacing, mean in means.items():
        print(f"mean on a {spacing:.2f} mm grid ({len(files)} cases): " + "  ".join(f"{hec} {value:.3f}" for hec, value in mean.items()))


if __name__ == "__main__":
    main()
