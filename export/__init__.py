"""ONNX export (through Hugging Face Optimum, with our own parity check) and the ONNX Runtime benchmark.

``convert.export_model`` -> ``parity.check_parity``; ``bench.bench_models`` measures each model in a
fresh ``_bench_worker`` process; ``runtime`` owns ONNX Runtime install/provider checks, ``layout``
how an export folder is stored.
"""
