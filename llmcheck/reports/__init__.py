"""Pure functions over result records: no torch, no pytest."""
