"""The data stage: raw-dataset importers, image decoding, tiling, splitting and the manifest."""
