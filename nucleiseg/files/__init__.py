"""Writing files safely: every output is written to a temporary name and renamed."""
