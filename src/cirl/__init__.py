"""cirl: crack segmentation with clustering-inspired representation learning (CVPR 2024)."""

__version__ = "0.1.0"
