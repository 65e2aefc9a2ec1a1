"""The `compressor` command: run, validate, bench, generate, report here; ls, show and env in
`listing`; every command's usage text and the exit codes in `usage`.

`run` validates the whole recipe first (every problem at once, no folder written), then
hands the command line to Hydra, so everything Hydra offers keeps working (`-m`, `--cfg`,
`--info`, `-cn/-cp/-cd`, `hydra/launcher=...`)."""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import stat
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.types import RunMode
from rich.console import Console
from rich.markup import escape

from compressor.core import distributed, untrusted
from compressor.errors import Problem, UserError
from compressor.cli.listing import cmd_env, cmd_ls, cmd_show, plain_console
from compressor.cli.usage import EXIT_ERROR, EXIT_GATE, EXIT_INVALID, EXIT_OK, HELP, USAGE
from compressor.search.sweep import SWEEP_DIRS, engine_values

HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--experimental-rerun"}
HYDRA_INFO_FLAGS = {"--cfg", "-c", "--info", "-i", "--hydra-help", "--shell-completion", "-sc"}  # --help: ours
err = Console(stderr=True, highlight=False)


def print_problems(problems: list[Problem]) -> None:
    for p in problems:
        err.print(f"[red]error:[/] {escape(str(p))}", markup=True, soft_wrap=True)  # a message may hold [brackets]


def split_args(argv: list[str]):
    """-> (recipe argument or None, Hydra arguments, plain overrides)."""
    recipe = None
    if argv and not argv[0].startswith(("-", "~", "+")) and "=" not in argv[0]:  # `~model` is an override
        recipe, argv = argv[0], argv[1:]
    overrides, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in HYDRA_VALUE_FLAGS:
            skip = True
        elif not a.startswith("-"):
            overrides.append(a)
    return recipe, argv, overrides


def hydra_argv(hydra_args: list[str], extra: list[str]) -> list[str]:
    """Hydra's parser takes the overrides as one positional list, so they go together (ours
    added), flags after; -cp is ours to resolve and goes."""
    overrides, flags, i = [], [], 0
    while i < len(hydra_args):
        a = hydra_args[i]
        if a in HYDRA_VALUE_FLAGS:
            if a not in ("-cp", "--config-path"):
                flags += hydra_args[i:i + 2]
            i += 2
            continue
        (flags if a.startswith("-") else overrides).append(a)
        i += 1
    return overrides + extra + flags


def _flag(argv: list[str], *names: str) -> str | None:
    for i, a in enumerate(argv[:-1]):
        if a in names:
            return argv[i + 1]
    return None


def resolve_ref(recipe: str | None, argv: list[str]):
    from compressor.recipe.compose import RecipeRef, locate

    name, path = _flag(argv, "-cn", "--config-name"), _flag(argv, "-cp", "--config-path")
    if name or path:
        ref = locate(recipe if not name else None)
        return RecipeRef(name or ref.name, str(Path(path).resolve()) if path else ref.source)
    return locate(recipe)


def resumed_run(run_dir: str):
    """The recipe and overrides a run folder was made with (Hydra's .hydra/ record)."""
    import yaml

    from compressor.recipe.compose import RecipeRef

    folder = Path(run_dir).expanduser().resolve()
    hydra_yaml, overrides_yaml = folder / ".hydra" / "hydra.yaml", folder / ".hydra" / "overrides.yaml"
    if not hydra_yaml.is_file() or not overrides_yaml.is_file():
        raise UserError(f"{run_dir} is not a run folder (no .hydra/hydra.yaml)", key="resume")
    try:
        hydra_cfg = yaml.safe_load(hydra_yaml.read_text())["hydra"]
        main = [c for c in hydra_cfg["runtime"]["config_sources"] if c["provider"] == "main"][0]
        name = hydra_cfg["job"]["config_name"]
        overrides = yaml.safe_load(overrides_yaml.read_text()) or []
    except (KeyError, IndexError, TypeError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{run_dir}/.hydra/ is damaged ({type(e).__name__}): it does not say which recipe and "
                        "overrides made the run", key="resume") from e
    if not isinstance(overrides, list):
        raise UserError(f"{overrides_yaml} is not a list of overrides", key="resume")
    source = f"pkg://{main['path']}" if main["schema"] == "pkg" else main["path"]
    return folder, RecipeRef(name, source), [str(o) for o in overrides]


@dataclass
class HydraTask:
    """What Hydra runs per job. A module-level class, not a closure, so launchers that send
    jobs to other processes (joblib, Ray, submitit) can pickle it."""
    recipe_name: str
    resume_dir: Path | None = None
    plan: Any = None  # a single run's plan, already checked before Hydra started: not made twice
    statuses: list[str] = field(default_factory=list)  # one per job Hydra ran in this process

    def __call__(self, cfg):
        from hydra.core.hydra_config import HydraConfig

        from compressor.recipe.plan import make_plan
        from compressor.run.runner import run

        out_dir = Path(HydraConfig.get().runtime.output_dir)
        log = logging.getLogger("compressor")
        console = Console(quiet=not distributed.is_main())
        try:
            if cfg.search.kind == "budget":
                from compressor.search.budget import budget_search

                report = budget_search(cfg, self.recipe_name, out_dir, console)
            else:
                report = run(self.plan or make_plan(cfg, self.recipe_name), out_dir, console, self.resume_dir)
        except UserError as e:
            print_problems(e.problems)
            self.statuses.append("invalid")
            return None
        except Exception as e:  # not a user mistake: full trace in the log, one line here
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            log.error("run failed:\n%s", traceback.format_exc())
            first = (str(e).strip().splitlines() or [""])[0][:300]
            line = f"{type(e).__name__}: {first} (trace in {out_dir / 'compressor.log'})"
            err.print(f"[red]error:[/] {escape(line)}")
            self.statuses.append("error")
            return None
        if not distributed.is_main():  # a torchrun helper process: it trained its share, rank 0 reports
            self.statuses.append("ok")
            return None
        self.statuses.append(report["status"])
        values = engine_values(report, cfg.eval.metric)
        wanted = [values[k] for k in cfg.search.objectives]  # a sweeper (optuna) optimises these
        if not wanted:
            return values
        return None if None in wanted else wanted[0] if len(wanted) == 1 else wanted


def cmd_run(argv: list[str]) -> int:
    import hydra

    from compressor.recipe.compose import register_nodes, search_path_override
    from compressor.recipe.load import check

    resume = [a for a in argv if a.startswith("resume=")]
    if resume:  # the same recipe and overrides, into the same folder
        if len(argv) > 1:
            raise UserError("resume=<run dir> takes the recipe and overrides from the run folder: give nothing else",
                            key="resume")
        resume_dir, ref, overrides = resumed_run(resume[0].split("=", 1)[1])
        hydra_args = overrides + [f"hydra.run.dir='{resume_dir}'"]
    else:
        recipe, hydra_args, overrides = split_args(argv)
        ref, resume_dir = resolve_ref(recipe, hydra_args), None
    multirun = "-m" in hydra_args or "--multirun" in hydra_args
    plans = check(ref, overrides, multirun) if not any(a in HYDRA_INFO_FLAGS for a in hydra_args) else []
    # a recipe may ask for a sweep itself (hydra.mode: MULTIRUN, as hparams_search=optuna_* does):
    # then each job makes its own plan from the values the sweeper gives it
    multirun = multirun or any(p.hydra_mode == RunMode.MULTIRUN for p in plans)
    task = HydraTask(ref.name, resume_dir, plans[0] if plans and not multirun else None)
    scratch = None
    if not distributed.is_main():  # under torchrun only rank 0 writes: the others get a folder that is removed
        scratch = tempfile.mkdtemp(prefix="compressor-rank")
        hydra_args = [a for a in hydra_args if not a.startswith("hydra.run.dir=")] + \
            [f"hydra.run.dir='{scratch}'", "hydra.output_subdir=null"]
    extra = [o for o in search_path_override(ref) if not any(a.startswith("hydra.searchpath") for a in hydra_args)]
    sys.argv = ["compressor"] + hydra_argv(hydra_args, extra)
    register_nodes()
    SWEEP_DIRS.clear()
    try:
        with _mode_known(plans):
            hydra.main(version_base="1.3", config_path=ref.source, config_name=ref.name)(task)()
    except ValueError as e:  # Hydra's own argument checks (`-m` with `--cfg`): a user mistake, one line
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise UserError(f"hydra: {e}", key="command line") from e
    finally:
        distributed.shutdown()
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    statuses = task.statuses
    if SWEEP_DIRS and distributed.is_main():  # the jobs may have run elsewhere: their reports say how they ended
        statuses = [r["status"] for d in SWEEP_DIRS for r in _sweep_summary(d)]
    if not statuses:
        return EXIT_OK  # --cfg / --info / --help
    if "error" in statuses:
        return EXIT_ERROR
    if "invalid" in statuses:
        return EXIT_INVALID
    return EXIT_GATE if "failed_gate" in statuses else EXIT_OK


@contextlib.contextmanager
def _mode_known(plans: list):
    """Hydra composes the recipe once more only to read hydra.mode (`Hydra.get_mode`, a quarter of
    a second); `check` has composed it already, so its answer is given instead."""
    from hydra._internal.hydra import Hydra

    if not plans:
        yield
        return
    original = Hydra.get_mode
    Hydra.get_mode = lambda self, config_name, overrides: plans[0].hydra_mode
    try:
        yield
    finally:
        Hydra.get_mode = original


def _sweep_summary(sweep_dir: Path) -> list[dict]:
    """Write the sweep's summary files and say in the terminal which jobs did not end ok."""
    from compressor.search.sweep import write_summary

    rows = write_summary(sweep_dir)
    if rows:
        err.print(f"sweep: {sweep_dir / 'summary.md'} ({sum(r['status'] == 'ok' for r in rows)} of {len(rows)} jobs ok)")
    for r in rows:
        if r["status"] != "ok":
            err.print(f"  job {r['job']}: {r['status']} ({escape(r['overrides'] or 'no overrides')}): see {sweep_dir / r['job']}")
    return rows


def cmd_validate(argv: list[str]) -> int:
    from compressor.recipe.load import check

    recipe, hydra_args, overrides = split_args(argv)
    ref = resolve_ref(recipe, hydra_args)
    plans = check(ref, overrides, "-m" in hydra_args or "--multirun" in hydra_args)
    plan = plans[0]
    out = Console(highlight=False)
    out.print(f"[green]valid:[/] recipe '{plan.recipe}'" + (f" ({len(plans)} sweep variants checked)" if len(plans) > 1 else ""))
    out.print(f"  model   {plan.model['kind']}  data {plan.data['kind']}")
    for i, s in enumerate(plan.steps, 1):
        out.print(f"  run     {i}. {s.slot} ({s.kind})")
    for s in plan.skipped:
        out.print(f"  skip    {s} (not in pipeline)")
    for t in plan.targets:
        out.print(f"  target  {t.kind} ({plan.precision})")
    gates = [f"{plan.eval.metric} drop <= {plan.eval.max_drop}" if plan.eval.max_drop is not None else None,
             f"speedup >= {plan.eval.min_speedup}" if plan.eval.min_speedup is not None else None]
    out.print(f"  gates   {', '.join(g for g in gates if g) or 'parity only'}")
    return EXIT_OK


def cmd_bench(argv: list[str]) -> int:
    from compressor.api import bench_engine

    if not argv:
        raise UserError("give the path of a built engine (a file, or a run folder)", key="bench")
    result = bench_engine(argv[0], batch=int(_flag(argv, "--batch") or 32))
    rows = [("provider", result["provider"]), ("precision", result["precision"]),
            ("p50 ms (b=1)", f"{result['latency_ms']['p50']:.3f}"), ("p90 ms (b=1)", f"{result['latency_ms']['p90']:.3f}"),
            (f"throughput/s (b={result['batch']})", f"{result['throughput']:.1f}")]
    col = max(len(label) for label, _ in rows)  # one line each: fits 80 columns, where a 5-column table wraps
    plain_console().print("\n".join([f"bench {result['path']}"] + [f"  {label.ljust(col)}  {value}" for label, value in rows]))
    return EXIT_OK


def cmd_generate(argv: list[str]) -> int:
    import time

    from compressor.api import generate

    if not argv or argv[0].startswith("-"):
        raise UserError("give the path of a built language-model engine (its folder, or a run folder)", key="generate")
    prompt = _flag(argv, "--prompt")
    if prompt is None:
        raise UserError("give a prompt: --prompt \"...\"", key="generate")

    def number(flag: str, default, kind):
        value = _flag(argv, flag)
        try:
            return kind(value) if value is not None else default
        except ValueError:
            raise UserError(f"{flag} must be a number, got {value!r}", key="generate") from None

    t, pieces = time.perf_counter(), 0
    for piece in generate(argv[0], prompt, number("--max-new-tokens", 128, int), "--sample" in argv,
                          number("--temperature", 1.0, float), number("--top-p", 1.0, float),
                          number("--seed", 0, int), chat="--no-chat" not in argv):
        sys.stdout.write(piece)
        sys.stdout.flush()
        pieces += 1
    err.print(f"\n[dim]{pieces} pieces in {time.perf_counter() - t:.2f} s[/]")
    return EXIT_OK


def cmd_report(argv: list[str]) -> int:
    from compressor.api import rebuild_report

    if not argv:
        raise UserError("give a run folder (outputs/<recipe>/<time>) or a sweep folder", key="report")
    folder = Path(argv[0])
    if not (folder / "report.json").is_file() and any(folder.glob("*/report.json")):  # a sweep
        from compressor.search.sweep import write_summary

        rows = write_summary(folder)
        Console().print(f"sweep: {folder / 'summary.md'} ({len(rows)} jobs)")
        return EXIT_OK
    rebuild_report(folder, Console())
    return EXIT_OK


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "ls": cmd_ls, "show": cmd_show, "env": cmd_env,
            "bench": cmd_bench, "generate": cmd_generate, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(HELP.get(argv[1], USAGE) if argv[1:] else USAGE)  # `compressor help run` too
        return EXIT_OK if argv else EXIT_INVALID
    command, rest = argv[0], argv[1:]
    if not os.environ.get("MPLCONFIGDIR"):  # matplotlib's font cache would go to ~/.cache: a run writes only its folder
        os.environ["MPLCONFIGDIR"] = _matplotlib_cache()
    # a command-line flag only: no recipe, override or environment variable can allow full pickles
    untrusted.trust_pickle = "--trust-pickle" in rest
    rest = [a for a in rest if a != "--trust-pickle"]
    if untrusted.trust_pickle:
        err.print("[yellow]warning:[/] --trust-pickle: .pt/.pth/.pt2 files load as full pickles, which can run "
                  "any code they hold; use it only for files you trust")
    from compressor.core import quiet

    # -v: other libraries' messages on the terminal too (a run always writes them to its compressor.log)
    quiet.verbose = "-v" in rest or "--verbose" in rest
    rest = [a for a in rest if a not in ("-v", "--verbose")]
    if command not in COMMANDS:
        from compressor.errors import did_you_mean

        print_problems([Problem("command", f"unknown command '{command}'{did_you_mean(command, COMMANDS)}; "
                                           f"commands: {', '.join(COMMANDS)}")])
        return EXIT_INVALID
    if any(a in ("-h", "--help") for a in rest) and _flag(rest, "--prompt") not in ("-h", "--help"):
        print(HELP[command])  # run's too: Hydra's own help is --hydra-help
        return EXIT_OK
    try:
        code = COMMANDS[command](rest)
    except UserError as e:
        print_problems(e.problems)
        code = EXIT_INVALID
    except KeyboardInterrupt:
        err.print("interrupted")
        code = 130
    return code


def _matplotlib_cache() -> str:
    """matplotlib's font cache, kept between runs in the temp folder (building it again costs half a
    second of every run) and private to this user; a fresh one, removed at exit, where that folder
    is not this user's alone (or there are no user ids: Windows)."""
    path = Path(tempfile.gettempdir()) / f"compressor-matplotlib-{os.getuid() if hasattr(os, 'getuid') else 'x'}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
        if hasattr(os, "getuid") and stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077:
            return str(path)
    except OSError:
        pass
    fresh = tempfile.mkdtemp(prefix="compressor-matplotlib-")
    atexit.register(shutil.rmtree, fresh, ignore_errors=True)
    return fresh


def entry() -> None:
    sys.exit(main())
