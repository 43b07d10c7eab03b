"""RenalSeg's segment terminology: the ``Resources/RenalSeg.term.json`` file, generated from ``labels.SEGMENTS``.

The file follows the dcmqi segment-context schema that Slicer's Terminologies module loads, so the
segments carry standard SNOMED-CT codes and Slicer shows them in its terminology selector. Regenerate it
with ``python -m RenalSegModuleLib.terminology`` after changing ``labels.SEGMENTS``; a test checks they agree.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from RenalSegLib.labels import ANATOMIC_CONTEXT as ANATOMIC_CONTEXT_NAME
from RenalSegLib.labels import SEGMENTS, Code, Segment
from RenalSegLib.labels import TERMINOLOGY_CONTEXT as CONTEXT_NAME
TERMINOLOGY_PATH = Path(__file__).resolve().parents[1] / "Resources" / "RenalSeg.term.json"
SCHEMA = "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#"


@dataclass(frozen=True)
class SegmentStyle:
    """What a RenalSeg segment looks like in Slicer: name, colour (0-1 RGB) and terminology tag."""

    name: str
    color: tuple[float, float, float]
    terminology: str


def _coded(code: Code) -> dict:
    return {"CodingSchemeDesignator": code.scheme, "CodeValue": code.value, "CodeMeaning": code.meaning}


def terminology_document(segments: tuple[Segment, ...] = SEGMENTS) -> dict:
    """The segment-context JSON document describing ``segments`` (categories -> types -> modifiers)."""
    categories: dict[Code, dict] = {}
    for segment in segments:
        category = categories.setdefault(segment.category, {**_coded(segment.category), "showAnatomy": "false", "Type": []})
        if segment.region.value:  # lesions name their organ: let Slicer's selector show the anatomic region
            category["showAnatomy"] = "true"
        entry = {**_coded(segment.type), "recommendedDisplayRGBValue": list(segment.color_uint8), "3dSlicerLabel": segment.name}
        if segment.type_modifier.value:
            existing = next((t for t in category["Type"] if t["CodeValue"] == segment.type.value), None)
            if existing is None:
                existing = {**_coded(segment.type), "recommendedDisplayRGBValue": list(segment.color_uint8), "Modifier": []}
                category["Type"].append(existing)
            existing["Modifier"].append({**_coded(segment.type_modifier), "recommendedDisplayRGBValue": list(segment.color_uint8),
                                         "3dSlicerLabel": segment.name})
        else:
            category["Type"].append(entry)
    return {"SegmentationCategoryTypeContextName": CONTEXT_NAME, "@schema": SCHEMA,
            "SegmentationCodes": {"Category": list(categories.values())}}


def write_terminology(path: str | os.PathLike = TERMINOLOGY_PATH) -> Path:
    """Write the terminology file for ``labels.SEGMENTS``."""
    path = Path(path)
    path.write_text(json.dumps(terminology_document(), indent=2) + "\n", encoding="utf-8")
    return path


def _tag(category: dict, type_: dict, modifier: dict | None, region: Code) -> str:
    def coded(entry: dict | None) -> str:
        return "^".join((entry["CodingSchemeDesignator"], entry["CodeValue"], entry["CodeMeaning"])) if entry else "^^"

    return "~".join([CONTEXT_NAME, coded(category), coded(type_), coded(modifier), ANATOMIC_CONTEXT_NAME,
                     coded(_coded(region)) if region.value else "^^", "^^"])


def load_segment_styles(path: str | os.PathLike = TERMINOLOGY_PATH) -> dict[str, SegmentStyle]:
    """Read the terminology file into {segment name: style}, in ``labels.SEGMENTS`` order.

    The anatomic region (kidney, for the lesions) is not part of the segment-context schema, so it
    comes from ``labels.SEGMENTS``.
    """
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    regions = {segment.name: segment.region for segment in SEGMENTS}
    found: dict[str, SegmentStyle] = {}
    for category in document["SegmentationCodes"]["Category"]:
        for type_ in category["Type"]:
            for modifier in type_.get("Modifier") or [None]:
                entry = modifier or type_
                name = entry["3dSlicerLabel"]
                color = tuple(c / 255.0 for c in entry["recommendedDisplayRGBValue"])
                found[name] = SegmentStyle(name, color, _tag(category, type_, modifier, regions.get(name, Code("", "", ""))))
    return {segment.name: found[segment.name] for segment in SEGMENTS if segment.name in found}


def register_terminology(terminologies_logic, path: str | os.PathLike = TERMINOLOGY_PATH) -> bool:
    """Load the file into Slicer's Terminologies logic (once), so Slicer's terminology selector knows the codes."""
    if terminologies_logic is None:
        return False
    if CONTEXT_NAME in _loaded_names(terminologies_logic):
        return True
    return bool(terminologies_logic.LoadTerminologyFromFile(str(path)))


def _loaded_names(terminologies_logic) -> list[str]:
    import vtk

    names = vtk.vtkStringArray()
    terminologies_logic.GetLoadedTerminologyNames(names)
    return [names.GetValue(n) for n in range(names.GetNumberOfValues())]


if __name__ == "__main__":
    print(write_terminology())
