"""What a run writes for people: report.json, report.md, report.png, the terminal table, the
per-layer and sensitivity sections (`writer`), and TensorBoard events (`tensorboard`). Imports
`compressor.core` only: it reads the report dict, never the model."""
