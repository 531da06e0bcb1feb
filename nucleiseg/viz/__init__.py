"""Figures: prediction overlays (the paper's Figures 2 and 3) and learning curves."""
