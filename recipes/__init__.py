# Packaged recipes (installed as the `compressor.recipes` package data).
