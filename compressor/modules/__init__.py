"""The torch modules a compressed model is made of: fake-quantized wrappers (`quant`: INT8, dynamic,
weight-only, embeddings) and factorized layer pairs (`factorized`). Stages create them, targets export
them, checkpoints rebuild them and measurements size them, so they sit below all of those. Imports
only `compressor.core` and `compressor.errors`."""
