"""The training loop (`loop.fit`: optimizer, schedule, AMP, accumulation, early stopping, resumable
state, DDP) and the settings every training stage shares (`settings`). Used by the training stages
and by the packaged models that train themselves on first use. Imports `compressor.core` only."""
