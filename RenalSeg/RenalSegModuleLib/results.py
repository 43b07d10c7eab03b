"""The results table: the engine's measurements (``RenalSegLib.measure``) as a vtkMRMLTableNode."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# (table column, unit, key in a RenalSegLib.measure row)
COLUMNS = (("Structure", "", "structure"), ("Volume", "mL", "volume_ml"), ("Max diameter", "mm", "max_diameter_mm"),
           ("Mean", "HU", "hu_mean"), ("Kidney", "", "kidney"), ("Pole", "", "pole"))


def fill_table(table_node, rows: Sequence[dict]) -> None:
    """Replace the content of a vtkMRMLTableNode with the measurement rows (numbers rounded to 0.1)."""
    import vtk

    table = vtk.vtkTable()
    columns = []
    for title, unit, key in COLUMNS:
        numeric = unit != ""
        column = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
        column.SetName(title)
        table.AddColumn(column)
        columns.append((column, key, numeric))
    for row in rows:
        for column, key, numeric in columns:
            value = row.get(key)
            if numeric:
                column.InsertNextValue(np.nan if value is None else round(float(value), 1))
            else:
                column.InsertNextValue("" if value is None else str(value))
    was_modifying = table_node.StartModify()
    table_node.SetAndObserveTable(table)
    for title, unit, _ in COLUMNS:
        if unit:
            table_node.SetColumnUnitLabel(title, unit)
    table_node.SetUseColumnTitleAsColumnHeader(True)
    table_node.EndModify(was_modifying)
