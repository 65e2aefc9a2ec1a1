"""The first hour of a new user: `ls`, `show`, `env` and every command's `--help`, read in an
80-column terminal; and the example recipe `ls KIND NAME` prints, checked by `validate`."""
import dataclasses
import json
import platform
import subprocess
import sys

import pytest

from compressor.cli import main
from compressor.core.params import keys, schema
from compressor.recipe.compose import recipe_names
from compressor.registry import ALL, METRICS, STAGES, TARGETS, Entry

KINDS = list(ALL) + ["recipes"]
COMMANDS = ["run", "validate", "ls", "show", "env", "bench", "generate", "report"]


@pytest.fixture
def cli80(tmp_path, monkeypatch, capsys):
    """compressor.cli.main in an 80-column terminal; returns (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")

    def call(*args):
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


def too_wide(text: str, width: int = 80) -> list[str]:
    return [line for line in text.splitlines() if len(line) > width]


def rows(text: str) -> dict[str, str]:
    """Listing lines (indented) by their first word, the name."""
    return {line.split()[0]: line for line in text.splitlines() if line.startswith("  ") and line.strip()}


def names(kind: str) -> list[str]:
    return recipe_names() if kind == "recipes" else ALL[kind].names()


def test_ls_fits_80_columns_one_whole_name_per_line(cli80):
    code, out, _ = cli80("ls")
    assert code == 0 and not too_wide(out)
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert sorted(listed) == sorted(n for kind in KINDS for n in names(kind))  # each once, whole
    for kind in KINDS:
        code, out, _ = cli80("ls", kind)
        assert code == 0 and not too_wide(out), too_wide(out)
        assert out.splitlines()[0].startswith(kind)  # the kind's heading
        assert [line.split()[0] for line in out.splitlines() if line.startswith("  ")] == names(kind)


def test_ls_summary_is_the_docs_first_sentence_cut_to_fit(cli80):
    code, out, _ = cli80("ls", "stages")
    listed = rows(out)
    assert listed["quantize_fp16"].split(None, 1)[1] == "FP16 weights and compute."  # short: whole
    for name in STAGES.names():
        summary = listed[name].split(None, 1)[1]
        doc = " ".join(STAGES.get(name).obj.__doc__.split())
        assert doc.startswith(summary.rstrip("…")), (name, summary)
    code, out, _ = cli80("ls", "recipes")
    assert "The embedded default: a CNN trained on" in rows(out)["default"]


def test_ls_narrow_terminal_keeps_names_whole(cli80, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    code, out, _ = cli80("ls", "stages")
    assert code == 0 and not too_wide(out, 60)
    assert list(rows(out)) == STAGES.names()


def test_ls_targets_says_what_is_missing_compactly(cli80, monkeypatch):
    from compressor.run.environment import missing

    code, out, _ = cli80("ls", "targets")
    for name in TARGETS.names():
        line = rows(out)[name]
        assert line.endswith("ready") == (not missing(TARGETS.get(name))), line
    real = __import__("importlib").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "litert_torch" else real(name, *a))
    code, out, _ = cli80("ls", "targets")
    assert code == 0 and not too_wide(out)
    assert rows(out)["litert"].endswith("needs compressor[litert]")


def test_ls_kind_name_lists_every_parameter_with_type_default_and_help(cli80):
    code, out, _ = cli80("ls", "stages", "prune_structured")
    assert code == 0 and not too_wide(out)
    assert out.startswith("stage prune_structured  (from compressor)")
    assert "Channel/filter pruning on a dependency graph" in out
    lines = out.splitlines()
    params = STAGES.get("prune_structured").params
    for f in dataclasses.fields(schema(params)):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        line = next((l for l in lines if l.startswith(f"  {f.name}: ")), None)
        assert line is not None and line.endswith(f" = {shown}"), (f.name, line)
    # the `# comment` beside a field is its help, on the lines below it
    ratio = lines.index(next(l for l in lines if l.startswith("  ratio: ")))
    assert lines[ratio + 1].strip() == "fraction of channels (and heads' dims) removed per prunable group"


def test_help_comes_from_comments_beside_above_and_in_settings(cli80):
    _, out, _ = cli80("ls", "targets", "litert")
    assert "auto: what the pipeline leaves" in out
    _, out, _ = cli80("ls", "stages", "quantize_int8")  # a block of comment lines above the field
    assert "7-bit weights in the layers an x86 CPU without VNNI" in out
    _, out, _ = cli80("ls", "stages", "distill")  # a key of the flat TrainSettings
    assert "batches per optimizer step (gradient accumulation)" in " ".join(out.split())


def test_keys_without_source_or_with_metadata_help():
    made = dataclasses.make_dataclass("Made", [("x", int, dataclasses.field(default=1, metadata={"help": "the x"})),
                                               ("y", str, dataclasses.field(default="a"))])
    assert keys(made) == [("x", "int", 1, "the x"), ("y", "str", "a", "")]  # no source: no crash
    assert keys(None) == []


def test_show_finds_the_kind(cli80):
    code, out, _ = cli80("show", "prune_structured")
    assert code == 0
    assert out == cli80("ls", "stages", "prune_structured")[1]
    code, out, _ = cli80("show", "default")  # a recipe: its file
    assert code == 0 and "- /stage@stages.prune: prune_structured" in out


@pytest.mark.parametrize("args, words", [
    (("show", "prune_structure"), "did you mean 'prune_structured'"),
    (("show", "no_such_thing_at_all"), "unknown name 'no_such_thing_at_all'"),
    (("ls", "stages", "prune_structure"), "did you mean 'prune_structured'"),
    (("show",), "give one name"),
])
def test_show_unknown_is_one_line_exit_2(cli80, args, words):
    code, out, err = cli80(*args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err


def test_show_ambiguous_name_says_which_to_ask(cli80, monkeypatch):
    METRICS.names()
    monkeypatch.setitem(METRICS.entries, "finetune", Entry("finetune", lambda *a: 0.0, None, "test"))
    code, _, err = cli80("show", "finetune")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "compressor ls stages finetune or compressor ls metrics finetune" in err


def example(cli80, kind: str, name: str) -> str:
    code, out, _ = cli80("ls", kind, name)
    assert code == 0 and not too_wide(out), too_wide(out)
    return out[out.index("# example"):]


# what an example cannot fill in: values only the user has, and a runtime this machine lacks
NEEDS_A_VALUE = {"student": "stages.student.model", "huggingface": "model.path", "onnx": "model.path",
                 "hf_dataset": "data.", "imagefolder": "data.root", "tensors": "data.path", "text": "data.",
                 "torchvision_dataset": "data."}


@pytest.mark.parametrize("kind", list(ALL))
def test_every_example_recipe_validates(cli80, tmp_path, kind):
    from compressor.run.environment import missing

    for name in ALL[kind].names():
        path = tmp_path / f"{kind}_{name}.yaml"
        path.write_text(example(cli80, kind, name))
        code, out, err = cli80("validate", str(path))
        if name in NEEDS_A_VALUE:
            assert code == 2 and all(f"error: {NEEDS_A_VALUE[name]}" in l for l in err.strip().splitlines()), err
        elif kind == "targets" and missing(TARGETS.get(name)):
            assert code == 2 and err.startswith("error: target: "), err
        else:
            assert code == 0, (name, err)
            if kind == "stages":
                assert f"1. {name} ({name})" in out
            elif kind == "targets":
                assert f"target  {name} (" in out
            elif kind == "metrics":
                assert f"gates   {name} " in out


def test_example_of_prune_structured_is_the_default_recipe_with_it(cli80, tmp_path):
    text = example(cli80, "stages", "prune_structured")
    assert "pipeline: [prune_structured]" in text and "    kind: prune_structured" in text
    (tmp_path / "mine.yaml").write_text(text)
    code, out, err = cli80("validate", "./mine.yaml", "stages.prune_structured.ratio=0.3")
    assert code == 0, err
    assert "1. prune_structured (prune_structured)" in out and "skip    quantize (not in pipeline)" in out


@pytest.mark.parametrize("command", [""] + COMMANDS)
def test_every_command_has_help(cli80, tmp_path, command):
    for flag in ("--help", "-h"):
        code, out, err = cli80(*([command] if command else []), flag)
        assert code == 0 and err == "" and not too_wide(out), too_wide(out)
        assert out.startswith(f"usage: compressor {command}".rstrip())
    assert not (tmp_path / "outputs").exists()  # run --help ran nothing


def test_top_level_help_lists_every_command(cli80):
    code, out, _ = cli80("--help")
    for command in COMMANDS:
        assert f"\n  {command} " in out, command
    assert "ls [KIND [NAME]]" in out


def test_run_help_is_ours_and_hydra_flags_still_pass(cli80):
    code, out, _ = cli80("run", "--help")
    for words in ("RECIPE", "overrides", "-m, --multirun", "resume=RUN_DIR", "-v, --verbose", "--trust-pickle",
                  "--cfg job", "--info", "--hydra-help"):
        assert words in out, words
    code, out, _ = cli80("help", "run")
    assert code == 0 and out.startswith("usage: compressor run")


def cpu_needs_reduce_range(facts: dict) -> bool:
    return facts["cpu"]["arch"].lower() in ("x86_64", "amd64", "i686", "x86") and \
        not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(facts["cpu"]["flags"])


def test_env_json_facts_and_decisions(cli80):
    code, out, _ = cli80("env", "--json")
    assert code == 0
    facts = json.loads(out)
    assert isinstance(facts["cpu"]["flags"], list) and facts["cpu"]["cores"] >= 1
    assert facts["python"] == platform.python_version()
    assert facts["torch"]["version"] and isinstance(facts["torch"]["cuda"], bool)
    assert facts["packages"]["torch"] and "litert" in facts["extras"]
    reduce = facts["decisions"]["reduce_range"]
    assert reduce["value"] == cpu_needs_reduce_range(facts) and reduce["why"]  # AVX2-only or VNNI/AMX alike
    targets = facts["decisions"]["targets"]
    assert sorted(targets) == TARGETS.names()
    for name, t in targets.items():
        assert t["runs"] <= t["builds"] and (t["runs"] or t["why"]), name
    if targets["coreml"]["builds"]:
        assert targets["coreml"]["runs"] == (platform.system() == "Darwin")
    if not facts["torch"]["cuda"]:
        assert not targets["tensorrt"]["runs"]


def test_env_text_fits_80_columns(cli80):
    code, out, _ = cli80("env")
    assert code == 0 and not too_wide(out), too_wide(out)
    assert "reduce_range auto -> " in out
    assert set(TARGETS.names()) <= set(rows(out))
    code, _, err = cli80("env", "--yaml")
    assert code == 2 and "compressor env [--json]" in err


def test_facts_are_fast_and_import_no_runtime():
    code = ("import sys, time; from compressor.run.environment import facts; facts(); t = time.perf_counter(); facts(); "
            "print(time.perf_counter() - t, 'onnxruntime' in sys.modules, 'openvino' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    seconds, ort, ov = proc.stdout.split()
    assert float(seconds) < 0.3 and ort == ov == "False", proc.stdout + proc.stderr


def test_report_records_the_environment(tmp_path):
    import compressor

    report, _ = compressor.compress("default", ["pipeline=[]", "eval.iters=3", "eval.warmup=1"], output_dir=tmp_path)
    written = json.loads((tmp_path / "report.json").read_text())
    env = written["environment"]
    assert env == report["environment"] and isinstance(env["cpu"]["flags"], list)
    assert env["decisions"]["reduce_range"]["value"] == cpu_needs_reduce_range(env)
    assert sorted(env["decisions"]["targets"]) == TARGETS.names()
