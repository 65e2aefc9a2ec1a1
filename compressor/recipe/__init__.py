"""From YAML to a validated plan: the recipe schema and Hydra composition (`compose`), checking and
planning every section before any work (`plan`), and the one entry that does both (`load`). Imports
the registry and `compressor.core`; never a stage or target module (it reads them through the
registry)."""
