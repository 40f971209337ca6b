"""The ONNX target: direct lowering of the IR, op by op."""
