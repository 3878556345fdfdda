"""Stage 6, compiled engines (pure, no Dagster): ONNX export with a stable identity, parity against the registered
PyTorch model, CPU latency, TensorRT engine builds (where ``tensorrt`` imports) and Qualcomm AI Hub jobs."""
