"""What `compressor --help` and `compressor COMMAND --help` print, and the exit codes."""

EXIT_OK, EXIT_ERROR, EXIT_INVALID, EXIT_GATE = 0, 1, 2, 3
USAGE = """usage: compressor COMMAND ...     (compressor COMMAND --help: its options)
  run [RECIPE] [overrides] [-m]  run a recipe (default: the digits recipe)
  run resume=RUN_DIR             continue a killed run in its folder
  validate [RECIPE] [overrides]  compose and check everything, run nothing
  ls [KIND [NAME]]               what is registered (stages, targets, models,
                                 datasets, metrics, recipes); NAME: in full
  show NAME                      one stage, target, model, ..., recipe in full
  env [--json]                   this machine: CPU, GPU, runtimes, what runs
  bench PATH                     latency/throughput of a built engine
  generate PATH --prompt TEXT    stream a language-model engine's answer
  report PATH                    table and plots of a run folder, or a sweep's
  -v, --verbose                  other libraries' messages on the terminal too
  --trust-pickle                 (run, validate, bench) allow full pickles in
                                 .pt/.pth/.pt2 files
exit codes: 0 ok, 1 error, 2 invalid recipe, 3 a gate failed"""
HELP = {
    "run": """usage: compressor run [RECIPE] [overrides ...] [-m] [-v] [--trust-pickle]
       compressor run resume=RUN_DIR

Check the whole recipe first (every problem at once, nothing written), then
run it: baseline -> stages -> engines -> checks -> gates, into
outputs/<recipe>/<time>/.

  RECIPE            a packaged recipe (compressor ls recipes) or a .yaml file;
                    default: the embedded digits recipe
  overrides         stages.prune.ratio=0.3       change a parameter
                    target=openvino              swap a component
                    +stage@stages.ft=finetune    add a slot (~ removes one)
                    'pipeline=[prune,ft]'        the slots that run, in order
  -m, --multirun    a sweep: one job per value (stages.prune.ratio=0.3,0.5)
  resume=RUN_DIR    continue a killed run in its folder (nothing else given)
  -v, --verbose     other libraries' messages on the terminal too
  --trust-pickle    allow full pickles in .pt/.pth/.pt2 files you trust

Hydra's flags pass through: --cfg job [--resolve], --info, -cn/-cp/-cd,
hydra/launcher=..., and --hydra-help for Hydra's own help.
exit codes: 0 ok, 1 error, 2 invalid recipe, 3 a gate failed""",
    "validate": """usage: compressor validate [RECIPE] [overrides ...] [-m] [--trust-pickle]

Compose the recipe and check everything a run would check (keys, types, values,
stages against the target, what is installed); run nothing, write nothing. Says
what will run and what is skipped.

  RECIPE, overrides, -m, -cn/-cp   as for compressor run (run --help)
exit codes: 0 valid, 2 invalid (every problem, one line each)""",
    "ls": """usage: compressor ls [KIND [NAME]]

  (nothing)     everything registered, one line each, grouped by kind
  KIND          one kind: stages, targets, models, datasets, metrics or recipes
  KIND NAME     one of them in full: its doc, every parameter (type, default,
                help) and an example recipe that uses it
compressor show NAME does the same as ls KIND NAME without naming the kind.""",
    "show": """usage: compressor show NAME

One stage, target, model, dataset, metric or recipe in full, as compressor ls
KIND NAME shows it: the kind is found from the name.
exit codes: 0 ok, 2 unknown or ambiguous name""",
    "env": """usage: compressor env [--json]

This machine as the project sees it: the CPU and its INT8 instruction sets,
GPUs, Python, torch, the runtimes and extras installed; and what follows: what
INT8 reduce_range: auto resolves to, which targets build and run here. Every
run records the same facts in its report.json (environment).

  --json        the facts as JSON""",
    "bench": """usage: compressor bench PATH [--batch N] [--trust-pickle]

Latency (batch 1: p50, p90) and throughput (batch N, default 32) of a built
engine: its file (model.onnx, model.xml, model.pt2, ...) or a run folder.""",
    "generate": """usage: compressor generate PATH --prompt TEXT [options]

Stream a language-model engine's answer (the model's chat template applied).

  PATH                 a built language-model engine's folder, or its run
  --prompt TEXT        the prompt
  --max-new-tokens N   at most N new tokens (default 128)
  --sample             sample instead of greedy decoding, with:
  --temperature T      default 1.0
  --top-p P            default 1.0
  --seed S             default 0
  --no-chat            the prompt as it is, no chat template""",
    "report": """usage: compressor report PATH

Write report.md and its plots again from a run folder's report.json
(outputs/<recipe>/<time>), or summary.csv/.md and pareto.png for a sweep folder
(outputs/multirun/<time>).""",
}
