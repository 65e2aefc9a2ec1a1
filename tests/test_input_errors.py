"""Every input the command line reads (recipe files, overrides, model and data files, engines) is
checked before any work: a wrong one is exactly one `error:` line naming the file (file:line:column
for YAML), exit code 2, and no run folder. Through the real CLI, in-process; nothing is built."""
import json
import os

import pytest
import torch
from safetensors.torch import save, save_file

from compressor.core.files import file_problem, sniff


def refused(proc, *parts: str, folder=None) -> str:
    """The one error line, holding every part; no run folder in `folder`."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    if folder is not None:
        assert not (folder / "outputs").exists()
    return lines[0]


def both(cli_inproc, tmp_path, *args, parts):
    """`validate` and `run` refuse the same way; `run` writes nothing."""
    line = refused(cli_inproc("validate", *args), *parts)
    assert refused(cli_inproc("run", *args), *parts, folder=tmp_path) == line
    return line


# ---------------------------------------------------------------- recipe files


def test_yaml_syntax_error_names_file_line_and_column(tmp_path, cli_inproc):
    (tmp_path / "bad.yaml").write_text("defaults:\n  - default\n  - _self_\nmodel: {width: 8\n")
    line = both(cli_inproc, tmp_path, "./bad.yaml", parts=["error: recipe: bad.yaml:5:1: YAML syntax error:", "4:8"])
    assert "expected ',' or '}'" in line


def test_yaml_error_in_a_file_the_defaults_pull_in(tmp_path, cli_inproc):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("defaults:\n  - digits_cnn\n  - _self_\nwidth: [8\n")
    (tmp_path / "top.yaml").write_text("defaults:\n  - default\n  - override model: mine\n  - _self_\n")
    both(cli_inproc, tmp_path, "./top.yaml", parts=[f"error: recipe: {os.path.join('model', 'mine.yaml')}:5:1: YAML syntax error"])


@pytest.mark.parametrize("content,says", [
    (b"- a\n- list\n", "model/mine.yaml: the top level is a list, not a mapping"),
    (bytes(range(128, 256)) * 2, "model/mine.yaml is not UTF-8 text"),
])
@pytest.mark.parametrize("how", ["defaults", "override"])
def test_a_group_file_the_recipe_chooses_is_named(tmp_path, cli_inproc, content, says, how):
    """A group file of the user's folder, chosen by the recipe's defaults or on the command line."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_bytes(content)
    if how == "defaults":
        (tmp_path / "top.yaml").write_text("defaults:\n  - default\n  - override model: mine\n  - _self_\n")
        args = ["./top.yaml"]
    else:
        (tmp_path / "top.yaml").write_text("defaults:\n  - default\n  - _self_\n")
        args = ["./top.yaml", "model=mine"]
    both(cli_inproc, tmp_path, *args, parts=["error: recipe: " + says.replace("/", os.sep)])


def test_duplicate_key_names_its_line(tmp_path, cli_inproc):
    (tmp_path / "dup.yaml").write_text("defaults:\n  - default\n  - _self_\nseed: 1\nseed: 2\n")
    both(cli_inproc, tmp_path, "./dup.yaml", parts=["dup.yaml:5:1:", "duplicate key seed"])


@pytest.mark.parametrize("text,says", [
    ("", "empty.yaml is empty"),
    ("# only a comment\n\n   \n", "empty.yaml holds only comments"),
    ("- a\n- list\n", "the top level is a list, not a mapping"),
    ("42\n", "the top level is a single value (42), not a mapping"),
    ("just words\n", "the top level is a single value ('just words'), not a mapping"),
])
def test_empty_or_not_a_mapping(tmp_path, cli_inproc, text, says):
    (tmp_path / "empty.yaml").write_text(text)
    both(cli_inproc, tmp_path, "./empty.yaml", parts=["error: recipe: empty.yaml", says])


def test_binary_recipe_files(tmp_path, cli_inproc):
    (tmp_path / "noise.yaml").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)))  # a JPEG's first bytes
    both(cli_inproc, tmp_path, "./noise.yaml", parts=["error: recipe: noise.yaml is not UTF-8 text"])
    save_file({"w": torch.zeros(2)}, str(tmp_path / "weights.yaml"))
    both(cli_inproc, tmp_path, "./weights.yaml", parts=["weights.yaml is a safetensors file, not a YAML recipe"])
    (tmp_path / "latin1.yaml").write_bytes(b"seed: 1\n# caf\xe9\n")
    both(cli_inproc, tmp_path, "./latin1.yaml", parts=["latin1.yaml is not UTF-8 text"])
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))  # a checkpoint where the recipe goes
    both(cli_inproc, tmp_path, "./model.safetensors", parts=["./model.safetensors is not read as a recipe"])
    (tmp_path / "r.yml").write_text("seed: 1\n")
    both(cli_inproc, tmp_path, "./r.yml", parts=["rename it to r.yaml"])
    (tmp_path / "folder").mkdir()
    both(cli_inproc, tmp_path, "./folder", parts=["./folder is a folder"])


# ---------------------------------------------------------------- overrides


@pytest.mark.parametrize("override,key", [
    ("stages.prune.ratio=[0.3", "stages.prune.ratio"),
    ("foo..bar=1", "foo..bar"),
    ("stages.prune.ratio", "stages.prune.ratio"),
    ("=5", "override"),
])
def test_malformed_override_names_it(tmp_path, cli_inproc, override, key):
    line = both(cli_inproc, tmp_path, "default", override, parts=[f"error: {key}: ", f"'{override}'"])
    assert "hydra.cc" in line or "KEY=VALUE" in line


# ---------------------------------------------------------------- model files


def test_pickled_checkpoint_where_safetensors_go(tmp_path, cli_inproc):
    torch.save({"w": torch.zeros(2)}, tmp_path / "ck.pt")
    both(cli_inproc, tmp_path, "model.checkpoint=ck.pt",
         parts=["error: model.checkpoint: ck.pt is a PyTorch pickle (torch.save), not a safetensors file",
                "convert it"])


@pytest.mark.parametrize("make,says", [
    (lambda p: p.write_bytes(b""), "ck.safetensors is empty (0 bytes"),
    (lambda p: None, "file not found: ck.safetensors"),
    (lambda p: p.mkdir(), "ck.safetensors is a folder, not a file"),
    (lambda p: p.write_text("weights\n"), "ck.safetensors is a text file, not a safetensors file"),
    (lambda p: p.write_bytes(save({"w": torch.zeros(64)})[:100]), "ck.safetensors is cut short"),
])
def test_unusable_checkpoint_files(tmp_path, cli_inproc, make, says):
    make(tmp_path / "ck.safetensors")
    both(cli_inproc, tmp_path, "model.checkpoint=ck.safetensors", parts=[f"error: model.checkpoint: {says}"])


def test_zoo_checkpoint_takes_safetensors_or_torch_save(tmp_path, cli_inproc):
    args = ["model=torchvision", "model.name=resnet18", "model.num_classes=10"]
    (tmp_path / "ck.pt").write_text("not weights\n")
    refused(cli_inproc("validate", *args, "model.checkpoint=ck.pt"),
            "error: model.checkpoint: ck.pt is a text file, not a safetensors file or a PyTorch pickle")
    (tmp_path / "ck.gguf").write_bytes(b"GGUF" + bytes(60))
    refused(cli_inproc("validate", *args, "model.checkpoint=ck.gguf"), "ck.gguf is a GGUF file")


def test_hugging_face_folder_with_pickled_weights(tmp_path, cli_inproc):
    pytest.importorskip("transformers")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    torch.save({"w": torch.zeros(2)}, tmp_path / "hf" / "model.safetensors")
    args = ["model=huggingface", "model.path=hf", "data=synthetic"]
    refused(cli_inproc("validate", *args), f"error: model.path: {os.path.join('hf', 'model.safetensors')} is a PyTorch pickle")
    (tmp_path / "hf" / "model.safetensors").unlink()
    refused(cli_inproc("validate", *args), "error: model.path: no safetensors weights in hf")


def test_not_onnx_given_as_onnx_model(tmp_path, cli_inproc):
    pytest.importorskip("onnx2torch")
    (tmp_path / "model.onnx").write_text("hello, I am not ONNX\n")
    both(cli_inproc, tmp_path, "model=onnx", "model.path=model.onnx",
         parts=["error: model.path: model.onnx is a text file, not an ONNX model"])
    torch.save({"w": torch.zeros(2)}, tmp_path / "model.onnx")
    refused(cli_inproc("validate", "model=onnx", "model.path=model.onnx"), "model.onnx is a PyTorch pickle")


# ---------------------------------------------------------------- data


@pytest.mark.parametrize("make,says", [
    (lambda p: None, "folder not found: images"),
    (lambda p: p.mkdir(), "images is an empty folder"),
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("x")), "images has no class subfolders"),
    (lambda p: ((p / "cat").mkdir(parents=True), (p / "cat" / "a.txt").write_text("x")),
     f"class folder {os.path.join('images', 'cat')} has no images"),
    (lambda p: p.write_text("x"), "images is a file, not a folder"),
])
def test_image_folder_problems(tmp_path, cli_inproc, make, says):
    make(tmp_path / "images")
    both(cli_inproc, tmp_path, "data=imagefolder", "data.root=images", parts=[f"error: data.root: {says}"])


def test_data_files_in_another_format(tmp_path, cli_inproc):
    torch.save({"x": torch.zeros(2)}, tmp_path / "d.npz")
    refused(cli_inproc("validate", "data=tensors", "data.path=d.npz"),
            "error: data.path: d.npz is a PyTorch pickle (torch.save), not a .npz (zip) archive")
    (tmp_path / "empty.npz").write_bytes(b"")
    refused(cli_inproc("validate", "data=tensors", "data.path=empty.npz"), "error: data.path: empty.npz is empty")


# ---------------------------------------------------------------- engines


@pytest.mark.parametrize("content", [b"hello, I am not ONNX\n", b"", b"\x08\x07\x12\x07pytorch\x1a\x032."])
@pytest.mark.parametrize("command", ["bench", "generate"])
def test_wrong_engine_file(tmp_path, cli_inproc, command, content):
    (tmp_path / "model.onnx").write_bytes(content)
    refused(cli_inproc(command, "model.onnx", *(["--prompt", "hi"] if command == "generate" else [])),
            "error: engine: model.onnx", "ONNX" if content else "empty (0 bytes)")


# ---------------------------------------------------------------- the shared file check


def test_sniff_formats(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "zip.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "w.bin"))
    (tmp_path / "t.txt").write_text("héllo\n" * 1000)
    assert [sniff(tmp_path / n) for n in ("zip.pt", "legacy.pt", "w.bin", "t.txt")] == \
        ["pytorch", "pytorch", "safetensors", "text"]
    assert file_problem(tmp_path / "w.bin", ("safetensors",)) is None  # by content, whatever the name
    assert file_problem(tmp_path / "zip.pt", ("safetensors", "pytorch")) is None


def test_resume_from_a_damaged_run_folder(tmp_path, cli_inproc):
    hydra = tmp_path / "run" / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "hydra.yaml").write_text("hydra: {runtime: [\n")
    (hydra / "overrides.yaml").write_text("[]\n")
    refused(cli_inproc("run", f"resume={tmp_path / 'run'}"), "resume:", ".hydra/ is damaged (")


def test_bench_of_a_fixed_batch_file_says_which_batch(tmp_path, cli_inproc):
    """An ONNX file another tool exported with batch 1: the batch-32 throughput run is refused
    with the batch it takes, and that batch works."""
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(tmp_path / "fixed.onnx"), dynamo=False)
    refused(cli_inproc("bench", "fixed.onnx"), "bench:", "fixed batch of 1", "--batch 1")
    done = cli_inproc("bench", "fixed.onnx", "--batch", "1")
    assert done.returncode == 0 and "(b=1)" in done.stdout
