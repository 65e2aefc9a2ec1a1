"""Measurements the report is made of: model statistics (`stats`: parameters, MACs, bytes, latency,
evaluation), the registered task metrics (`metrics`), and engine-vs-PyTorch parity (`parity`).
Imports `compressor.modules`, the registry and `compressor.core`."""
