"""RenalSegInteractive's Slicer-side logic: clicks in, refined segments out, without Qt."""
