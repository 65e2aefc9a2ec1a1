"""The ground floor: the plugin contract types (`interfaces`: Context, DataSplits, Stage, Target,
Engine), recipe-parameter parsing (`params`), atomic writes, resumable state, path and pickle
safety, `pip:` paths, torch.distributed helpers. Imports only `compressor.errors`."""
