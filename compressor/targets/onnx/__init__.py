"""ONNX export of float and compressed models: `export` (torch.onnx, Q/DQ, the weight layouts the
runtimes' integer kernels want), `dynamic` (dynamic INT8 MatMuls with per-token scales, int8
embeddings), `weight_only` (weight-only INT4/INT8 as MatMulNBits), and `match` (which graph node runs
which layer). Imports `modules` and `core`."""
