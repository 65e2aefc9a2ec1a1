"""Stages that train: fine-tuning on labels, distillation (logits, outputs, hints, mixup) and a smaller
student distilled from the model. Their settings are composed from `compressor.training.settings`;
they train with `compressor.training.loop`. Imports `training`, `models` (teachers and students by
spec), `measure`, `core`."""
