"""RenalSeg's Slicer-side logic: MRML nodes in and out of the engine, without Qt, testable on slicer-core."""
