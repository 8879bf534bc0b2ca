"""Serving a trained model: ONNX export (no std head), inference engines and the gate that
admits faster ones, ``predict`` on photos and crack measurement."""
