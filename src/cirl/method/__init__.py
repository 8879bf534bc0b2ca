"""CIRL itself: losses, phase-I/II training, ambiguous-pixel selection, evaluation and its
metrics, the training arithmetic, and the recipe that chains them."""
