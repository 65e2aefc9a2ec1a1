"""Fuzzing the recipe checks: hundreds of invalid mutations of the packaged default recipe
(typos in keys, wrong types, extreme values, unknown registry names, removed sections, bad
pipelines, broken recipe files: malformed YAML, empty, binary; model files in another format).
Each must be refused before any work: exit 2, only `error: KEY:`
lines naming the mutated key, no traceback, no output folder. Only invalid mutations are made."""
import dataclasses
import io
import random
import re
import types
import typing

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from compressor.core.params import schema
from compressor.recipe.compose import EvalConfig, RecipeRef, compose_recipe
from compressor.registry import DATASETS, MODELS, STAGES, TARGETS

pytestmark = pytest.mark.slow  # 250 compositions: a few minutes on a small machine

RNG = random.Random(9)
HUGE = "x" * 5000


def _leaves() -> list[tuple[str, typing.Any]]:
    """(full key, type hint) of every parameter of the default recipe's components and eval."""
    cfg, problems = compose_recipe(RecipeRef("default"), [])
    assert cfg is not None and not problems, problems
    sections = [("model", MODELS.get(cfg.model.kind).params), ("data", DATASETS.get(cfg.data.kind).params),
                ("target", TARGETS.get(cfg.target.kind).params), ("eval", EvalConfig)]
    sections += [(f"stages.{slot}", STAGES.get(s.kind).params) for slot, s in cfg.stages.items()]
    return [(f"{prefix}.{f.name}", typing.get_type_hints(schema(cls))[f.name])
            for prefix, cls in sections for f in dataclasses.fields(schema(cls))]


LEAVES = _leaves()
KEYS = {k for k, _ in LEAVES}


def _base(hint):
    """Optional[X] -> X; list[str] -> list."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return _base(args[0])
    return typing.get_origin(hint) or hint


# Values no field of the type accepts (OmegaConf converts "1" to 1.0, "yes" to True: not here).
WRONG = {int: ["abc", "1.5", "[1]"], float: ["abc", "[1]", "{a: 1}"], bool: ["maybe", "[1]", "2.5"],
         str: ["[1]", "{a: 1}"], list: ["abc", "{a: 1}"], dict: ["abc", "[1]"]}


def _typo(key: str) -> str:
    """The last part of key with one letter swapped, dropped, doubled or replaced; not a valid key."""
    head, _, word = key.rpartition(".")
    for _ in range(50):
        i = RNG.randrange(len(word))
        op = RNG.choice(["swap", "drop", "double", "replace"])
        if op == "swap" and i + 1 < len(word):
            new = word[:i] + word[i + 1] + word[i] + word[i + 2:]
        elif op == "drop" and len(word) > 2:
            new = word[:i] + word[i + 1:]
        elif op == "double":
            new = word[:i] + word[i] + word[i:]
        else:
            new = word[:i] + RNG.choice("aeioulnrst") + word[i + 1:]
        if new != word and f"{head}.{new}" not in KEYS and new.isidentifier() and new != "kind":
            return f"{head}.{new}"
    raise AssertionError(key)


# (override, the key the error must name): values outside what each parameter allows
EXTREMES = [
    *[("stages.prune.ratio", v) for v in ("1.5", "-1", "1e308", "nan", "inf", "-inf", "1", "abc")],
    *[("stages.prune.max_layer_ratio", v) for v in ("0", "1.5", "nan")],
    ("stages.prune.steps", "0"), ("stages.prune.steps", "-5"), ("stages.prune.finetune_epochs", "-1"),
    ("stages.prune.round_to", "0"), ("stages.prune.round_to", "-8"), ("stages.prune.norm", "0"),
    ("stages.prune.norm", "-2"), ("stages.prune.lr", "-1"), ("stages.prune.lr", "0"), ("stages.prune.lr", "nan"),
    ("stages.prune.taylor_batches", "0"),
    ("stages.prune.importance", "''"), ("stages.prune.importance", "magnitüde"), ("stages.prune.importance", HUGE),
    ("stages.finetune.epochs", "-3"), ("stages.finetune.lr", "0"), ("stages.finetune.lr", "-1e-3"),
    ("stages.finetune.lr", "nan"), ("stages.finetune.lr", "inf"), ("stages.finetune.weight_decay", "-1"),
    ("stages.finetune.weight_decay", "nan"), ("stages.finetune.optimizer", "sgdd"),
    ("stages.finetune.optimizer", "адам"), ("stages.finetune.schedule", "nosuch"), ("stages.finetune.accumulate", "0"),
    ("stages.finetune.amp", "fp8"), ("stages.finetune.patience", "-1"),
    ("stages.quantize.calibration_batches", "0"), ("stages.quantize.calibration_batches", "-1"),
    ("stages.quantize.calibrator", "kl"), ("stages.quantize.percentile", "101"), ("stages.quantize.percentile", "50"),
    ("stages.quantize.percentile", "nan"), *[("stages.quantize.weight_bits", v) for v in ("0", "1", "9", "16")],
    ("stages.quantize.reduce_range", "maybe"), ("stages.quantize.max_drop", "1.5"),
    ("stages.quantize.max_drop", "-0.1"),
    ("model.width", "0"), ("model.width", "-1"), ("model.num_classes", "0"), ("model.num_classes", "-1"),
    ("model.checkpoint", "/no/such/model.safetensors"),
    ("data.image_size", "0"), ("data.image_size", "4"), ("data.image_size", "-1"), ("data.channels", "2"),
    ("data.channels", "0"), ("data.batch_size", "0"), ("data.batch_size", "-1"),
    *[("data.val_fraction", v) for v in ("0", "1", "1.5", "-0.1", "nan")],
    ("data.calibration_size", "0"), ("data.calibration_size", "-5"),
    ("target.precision", "int3"), ("target.precision", "fp64"), ("target.provider", "tpu"),
    ("target.provider", HUGE), ("target.provider", "cpü"), ("target.threads", "-1"), ("target.opset", "5"),
    ("target.opset", "99999"),
    ("eval.metric", "top2"), ("eval.metric", "''"), ("eval.metric", "tøp1"), ("eval.metric", "🔥"),
    ("eval.metric", HUGE), *[("eval.max_drop", v) for v in ("2", "-1", "nan", "inf", "[1]")],
    *[("eval.min_speedup", v) for v in ("0", "-1", "nan")], ("eval.warmup", "-1"), ("eval.iters", "0"),
    ("eval.parity_samples", "0"), ("eval.extra_metrics", "[nosuch]"),
    ("seed", "-1"), ("seed", "abc"), ("seed", "1.5"), ("device", "tpu"), ("device", "cuda:x"), ("device", "[1]"),
]

# (overrides, the key the error must name)
STRUCTURE = [
    (["model=nosuch"], "model"), (["data=nosuch"], "data"), (["target=onxruntime"], "target"),
    (["stage@stages.prune=prun_structured"], "stages.prune"), (["+stage@stages.extra=nosuch"], "stages.extra"),
    (["model.kind=nosuch"], "model.kind"), (["stages.prune.kind=nosuch"], "stages.prune.kind"),
    (["target.kind=nosuch"], "target.kind"), (["data.kind=nosuch"], "data.kind"),
    (["targets=[onnxruntime,nosuch]"], "targets[1]"), (["targets=[onnxruntime,onnxruntime]"], "targets[1]"),
    (["hydra/launcher=nosuch"], "hydra.launcher"),
    (["~model"], "model"), (["~data"], "data"), (["~target"], "target"),
    (["~stage@stages.prune"], "stages.prune"), (["~stages.prune"], "pipeline[0]"),
    (["pipeline=[prune,nosuch]"], "pipeline[1]"), (["pipeline=[prune,prune]"], "pipeline[1]"),
    (["pipeline=[quantize,prun]"], "pipeline[1]"), (["pipeline=abc"], "pipeline"), (["pipeline=[[prune]]"], "pipeline"),
    (["pipeline={a: 1}"], "pipeline"), (["pipeline=null"], "pipeline"), (["pipeline=['']"], "pipeline[0]"),
    (["+foo=1"], "foo"), (["+stages.prune.ratio=0.3"], "stages.prune.ratio"), (["stages=abc"], "stages"),
    (["stages.prune=abc"], "stages.prune"), (["eval=abc"], "eval"), (["model=[1]"], "model"),
    (["stages.prune.layer_ratios={conv: 1.5}"], "stages.prune.layer_ratios.conv"),
    (["+stages.prune.layer_ratios={conv: 1.5}"], "stages.prune.layer_ratios.conv"),
    (["+stages.prune.layer_ratios={conv: abc}"], "stages.prune.layer_ratios.conv"),
    ([f"stages.prune.{'r' * 3000}=1"], f"stages.prune.{'r' * 3000}"), (["stages.prune.rätio=0.5"], "stages.prune.rätio"),
    (["stages.prune.ratio=0.3", "stages.prune.ratoi=0.5"], "stages.prune.ratoi"),
    (["model.widht=8", "data.batch_size=0"], "model.widht"),
]

CASES = []
for key, _ in LEAVES:
    bad = _typo(key)
    CASES.append(([f"{bad}=1"], bad))
for key, hint in LEAVES:  # one wrong type per parameter
    CASES += [([f"{key}={RNG.choice(WRONG[_base(hint)])}"], key)] if _base(hint) in WRONG else []
CASES += [([f"{key}={value}"], key) for key, value in EXTREMES]
CASES += STRUCTURE
CASES = [c for i, c in enumerate(CASES) if c not in CASES[:i]]
CASES = [c for i, c in enumerate(CASES) if i % 6 != 5]  # every mutation kind, 5 of each 6: the suite's time budget

DEFAULT_HEAD = "defaults:\n  - base\n"
# (recipe file text, the key the error must name)
FILES = [
    (DEFAULT_HEAD + "  - data: digits\n  - target: onnxruntime\n  - _self_\n", "model"),
    (DEFAULT_HEAD + "  - model: digits_cnn\n  - target: onnxruntime\n  - _self_\n", "data"),
    (DEFAULT_HEAD + "  - model: digits_cnn\n  - data: digits\n  - _self_\n", "target"),
    ("defaults:\n  - default\n  - _self_\nmodle: {width: 8}\n", "modle"),
    ("defaults:\n  - default\n  - _self_\nstages: {prune: {ratoi: 0.5}}\n", "stages.prune.ratoi"),
    ("defaults:\n  - default\n  - _self_\npipeline: [prune, distill]\n", "pipeline[1]"),
    ("defaults:\n  - default\n  - _self_\nstages: {quantize: {weight_bits: 12}}\n", "stages.quantize.weight_bits"),
    (DEFAULT_HEAD + "  - model: nosuch\n  - data: digits\n  - target: onnxruntime\n", "model"),
    (DEFAULT_HEAD + "  - model: digits_cnn\n  - data: digits\n  - /stage@stages.prune: nosuch\n  - target: onnxruntime\n",
     "stages.prune"),
    ("defaults:\n  - default\n  - _self_\npipeline: [prune\n", "recipe"),
    ("- just\n- a list\n", "recipe"),
    ("defaults:\n  - default\n  - _self_\neval: {max_drop: [1]}\n", "eval.max_drop"),
    # malformed YAML: file:line:column
    ("defaults:\n  - default\n  - _self_\nstages: {prune: {ratio: 0.5}\n", "recipe"),
    ("defaults:\n  - default\n  - _self_\nmodel:\n  width: 8\n   num_classes: 3\n", "recipe"),
    ("defaults:\n  - default\n  - _self_\nmodel:\n\twidth: 8\n", "recipe"),
    ("defaults:\n  - default\n  - _self_\nseed: 'unclosed\n", "recipe"),
    ("defaults:\n  - default\n  - _self_\nseed: 1\nseed: 2\n", "recipe"),
    ("defaults:\n  - default\n---\nseed: 1\n", "recipe"),
    ("defaults: [default, _self_]\nstages: {prune: {ratio: @0.5}}\n", "recipe"),
    # empty, only comments, not a mapping
    ("", "recipe"), ("\n\n", "recipe"), ("# a comment\n", "recipe"), ("42\n", "recipe"), ("'text'\n", "recipe"),
    ("null\n", "recipe"), ("[default]\n", "recipe"),
    # not text at all
    (b"\xff\xd8\xff\xe0" + bytes(range(256)), "recipe"), (b"seed: 1\n# caf\xe9\n", "recipe"),
    (b"\x00" * 64, "recipe"), (safetensors_bytes({"w": torch.zeros(4)}), "recipe"), (b"GGUF" + bytes(60), "recipe"),
]


def _torch_save(**kwargs) -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buf, **kwargs)
    return buf.getvalue()


# (checkpoint file content, or None for a folder) for `model.checkpoint=ck.safetensors`: none is safetensors
CHECKPOINTS = [_torch_save(), _torch_save(_use_new_zipfile_serialization=False), b"", b"weights\n", b"\x00" * 64,
               safetensors_bytes({"w": torch.zeros(64)})[:120], b"GGUF" + bytes(60), b"\x08\x07\x12\x07pytorch",
               b"PK\x03\x04 not a zip", None]


def _assert_refused(proc, key, folder):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out
    lines = proc.stderr.strip().splitlines()
    assert lines and all(l.startswith("error: ") for l in lines), proc.stderr[:3000]
    assert len(lines) <= 4 and all(len(l) <= 600 + len(key) for l in lines), proc.stderr[:3000]  # short, whatever the value
    assert any(re.match(rf"error: {re.escape(key)}[:.\[]", l) for l in lines), (key, proc.stderr[:3000])
    assert not (folder / "outputs").exists()


def test_enough_mutations():
    assert len(CASES) + len(FILES) + len(CHECKPOINTS) >= 200


@pytest.mark.parametrize("overrides,key", CASES, ids=lambda v: v[0][:60] if isinstance(v, list) else None)
def test_invalid_override_refused(tmp_path, cli_inproc, overrides, key):
    # `run` stops at the same validation as `validate`: check both on a sample, before any folder exists
    command = "run" if CASES.index((overrides, key)) % 20 == 0 else "validate"
    _assert_refused(cli_inproc(command, *overrides), key, tmp_path)


@pytest.mark.parametrize("text,key", FILES)
def test_invalid_recipe_file_refused(tmp_path, cli_inproc, text, key):
    (tmp_path / "mutated.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
    _assert_refused(cli_inproc("run", "./mutated.yaml"), key, tmp_path)
    if key == "recipe":  # the file is named in the one line
        assert "mutated.yaml" in cli_inproc("validate", "./mutated.yaml").stderr


@pytest.mark.parametrize("content", CHECKPOINTS, ids=lambda c: repr(c[:12]) if c is not None else "folder")
def test_checkpoint_in_another_format_refused(tmp_path, cli_inproc, content):
    path = tmp_path / "ck.safetensors"
    path.mkdir() if content is None else path.write_bytes(content)
    proc = cli_inproc("run", "model.checkpoint=ck.safetensors")
    _assert_refused(proc, "model.checkpoint", tmp_path)
    assert "ck.safetensors" in proc.stderr
