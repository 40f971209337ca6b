"""The TensorRT target: ONNX to engines through TensorRT or TensorRT-RTX."""
