"""Small synthetic CT phantoms with known anatomy, built in physical (LPS) space.

Because the shapes are defined in millimetres around the image centre, the same patient anatomy
comes out of any direction matrix: a flipped or oblique image still has the right kidney on the
patient's right (LPS -x). Tests use them wherever real data is not needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

# Offsets (mm, LPS) from the image centre and semi-axes (mm) of the phantom's structures.
RIGHT_KIDNEY = dict(center=(-55.0, 20.0, 0.0), axes=(22.0, 18.0, 40.0))
LEFT_KIDNEY = dict(center=(55.0, 20.0, 5.0), axes=(22.0, 18.0, 40.0))
TUMOR = dict(center=(-70.0, 20.0, 15.0), axes=(12.0, 12.0, 12.0))  # on the right kidney, lateral
CYST = dict(center=(55.0, 20.0, -20.0), axes=(8.0, 8.0, 8.0))  # inside the left kidney, lower part
HU = dict(air=-1000, fat=-100, soft=45, kidney=180, tumor=120, cyst=5)


@dataclass
class Phantom:
    ct: sitk.Image
    labels: sitk.Image


def blank_image(size=(96, 96, 64), spacing=(2.0, 2.0, 2.5), direction=None, origin=(0.0, 0.0, 0.0), pixel=sitk.sitkInt16) -> sitk.Image:
    image = sitk.Image([int(s) for s in size], pixel)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    if direction is not None:
        image.SetDirection([float(d) for d in np.asarray(direction).flatten()])
    return image


def physical_grid(image: sitk.Image) -> np.ndarray:
    """LPS coordinates of every voxel, shape (k, j, i, 3)."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in reversed(size)), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1)
    matrix = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    return ijk @ matrix.T + np.array(image.GetOrigin())


def image_center(image: sitk.Image) -> np.ndarray:
    return np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))


def ellipsoid(points: np.ndarray, center, axes) -> np.ndarray:
    return (((points - np.asarray(center)) / np.asarray(axes)) ** 2).sum(-1) <= 1.0


def oblique_direction(angle_deg: float = 20.0, flip_lr: bool = False) -> np.ndarray:
    """A rotation about the LPS z axis (an oblique acquisition), optionally mirrored in x."""
    a = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    if flip_lr:
        rotation = rotation @ np.diag([-1.0, 1.0, 1.0])
    return rotation


def kidney_phantom(size=(96, 96, 64), spacing=(2.0, 2.0, 2.5), direction=None, origin=(0.0, 0.0, 0.0), noise_hu: float = 0.0, seed: int = 0, scale: float = 1.0) -> Phantom:
    """CT (int16 HU) and KiTS labels: body, two kidneys, a tumor on the right kidney, a cyst in the left.

    ``scale`` shrinks (< 1) or grows the anatomy, so that a small image still holds the whole body.
    """
    ct = blank_image(size, spacing, direction, origin)
    points = (physical_grid(ct) - image_center(ct)) / scale
    values = np.full(points.shape[:3], HU["air"], np.float32)
    labels = np.zeros(points.shape[:3], np.uint8)
    body = ellipsoid(points[..., :2], (0, 0), (140, 100))
    values[body] = HU["fat"]
    values[ellipsoid(points[..., :2], (0, 0), (125, 85))] = HU["soft"]
    for organ in (RIGHT_KIDNEY, LEFT_KIDNEY):
        mask = ellipsoid(points, **organ)
        values[mask], labels[mask] = HU["kidney"], 1
    for lesion, label in ((TUMOR, 2), (CYST, 3)):
        mask = ellipsoid(points, **lesion)
        values[mask], labels[mask] = HU[lesion is TUMOR and "tumor" or "cyst"], label
    if noise_hu:
        values += np.random.default_rng(seed).normal(0, noise_hu, values.shape).astype(np.float32)
    ct_image = sitk.GetImageFromArray(np.round(values).astype(np.int16))
    ct_image.CopyInformation(ct)
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(ct)
    return Phantom(ct_image, label_image)
