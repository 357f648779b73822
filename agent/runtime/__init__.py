"""Runners: one activate / infer / deactivate lifecycle per backend (onnxruntime CPU, TensorRT + pycuda)."""
