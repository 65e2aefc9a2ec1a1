"""Recipes shipped by compressor-tensorrt (entry point group `compressor.recipes`)."""
