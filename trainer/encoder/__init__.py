"""The encoder: model dirs, torch and ONNX backends, ONNX export, user pooling, trigram sketch."""
