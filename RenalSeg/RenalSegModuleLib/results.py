"""The results table: the engine's measurements (``RenalSegLib.measure``) as a vtkMRMLTableNode."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

# (table column, unit, key in a RenalSegLib.measure row, decimals of a number column or None for text)
COLUMNS = (("Structure", "", "structure", None), ("Volume", "mL", "volume_ml", 1), ("Max diameter", "mm", "max_diameter_mm", 1),
           ("Mean", "HU", "hu_mean", 1), ("Kidney", "", "kidney", None), ("Pole", "", "pole", None),
           ("Network P", "", "lesion_probability", 2))


def measure_rows(kits: sitk.Image, ct: sitk.Image, lesion_probability: sitk.Image | None = None, **options) -> list[dict]:
    """The table's rows for a KiTS label map: ``RenalSegLib.measure.measure`` (``options``: its ``cancel`` and ``cache``),
    and none for an empty map (no kidney found, or every segment erased), which ``measure`` refuses."""
    from RenalSegLib.measure import measure

    if not sitk.GetArrayViewFromImage(kits).any():
        return []
    return measure(kits, ct, lesion_probability=lesion_probability, **options)


def fill_table(table_node, rows: Sequence[dict]) -> None:
    """Replace the content of a vtkMRMLTableNode with the measurement rows (numbers rounded as ``COLUMNS`` says)."""
    import vtk

    table = vtk.vtkTable()
    columns = []
    for title, _, key, decimals in COLUMNS:
        column = vtk.vtkStringArray() if decimals is None else vtk.vtkDoubleArray()
        column.SetName(title)
        table.AddColumn(column)
        columns.append((column, key, decimals))
    for row in rows:
        for column, key, decimals in columns:
            value = row.get(key)
            if decimals is None:
                column.InsertNextValue("" if value is None else str(value))
            else:
                column.InsertNextValue(np.nan if value is None else round(float(value), decimals))
    was_modifying = table_node.StartModify()
    table_node.SetAndObserveTable(table)
    for title, unit, _, _ in COLUMNS:
        if unit:
            table_node.SetColumnUnitLabel(title, unit)
    table_node.SetUseColumnTitleAsColumnHeader(True)
    table_node.EndModify(was_modifying)
