"""Running a plan: the pipeline (`runner`: baseline, stages, engines, checks, gates, report) and
model checkpoints as safetensors with their architecture (`checkpoint`), and the machine's facts
every report records and `compressor env` prints (`environment`). Imports everything below it:
`recipe`, `models`, `data`, `measure`, `report`, `core` (stages and targets come through the plan)."""
