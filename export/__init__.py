"""ONNX export (through Hugging Face Optimum) and the ONNX Runtime benchmark.

Filled by the export/bench issue; the foundation only reserves the package so the layout
(score -> prune -> verify -> export -> bench) is fixed from the start.
"""
