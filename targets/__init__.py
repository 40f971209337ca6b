"""Lowerings of the compiler IR to PyTorch source, ONNX models and TensorRT engines."""
