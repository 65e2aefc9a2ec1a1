"""The ground floor: the plugin contract types (`interfaces`: Context, DataSplits, Stage, Target,
Engine), recipe-parameter parsing (`params`), atomic writes, resumable state, path and pickle
safety, `pip:` paths, the format of a user's file (`files`), torch.distributed helpers, other
libraries' output into the run's log (`quiet`), sub-step progress (`progress`). Imports only
`compressor.errors`."""
