"""Whole-slide images: reading at the model's resolution, tissue, seams, QuPath outputs."""
