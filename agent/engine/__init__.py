"""Engines: build specs and cache keys, manifests, the engine cache, compatibility verdicts, TensorRT log
diagnosis, and the builds themselves (TensorRT, thin and lazy; onnxruntime, the same path on the CPU)."""
