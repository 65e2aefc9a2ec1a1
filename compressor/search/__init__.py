"""Many runs of one recipe: Hydra multirun sweeps with their summary and Pareto plot (`sweep`), and
the budget search over stage hyperparameters measured on the final engine (`budget`). Imports `run`,
`recipe`, `report` and below."""
