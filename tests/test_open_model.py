"""open_model with a hub id: through nnsight's LanguageModel from the local Hugging Face cache (offline), with a clear
error for a model that is not there."""

import shutil
import subprocess
import sys

import pytest

import commandv_interp as cv


def test_uncached_hub_id_fails_with_a_clear_error():
    with pytest.raises(ValueError, match="cannot load the hub model 'nobody/no-such-model'.*download it first"):
        cv.open_model("nobody/no-such-model")


@pytest.mark.slow  # a fresh process loads torch, transformers and nnsight
def test_cached_hub_id_loads_through_languagemodel_and_reads_like_the_directory(tiny_dir, tmp_path):
    """A hub cache laid out as huggingface_hub writes it, holding the tiny Llama as ``tiny-org/tiny-llama``; a fresh
    process (the cache location is read at import) opens it by id and reads the same block outputs as the directory."""
    snapshot = tmp_path / "hub" / "models--tiny-org--tiny-llama" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_dir / "llama", snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    code = (
        "import torch, commandv_interp as cv\n"
        "hub = cv.open_model('tiny-org/tiny-llama')\n"
        f"local = cv.open_model({str(tiny_dir / 'llama')!r})\n"
        "assert hub.backend == 'nnsight' and hub.name == 'tiny-org/tiny-llama', hub.name\n"
        "b = hub.encode(['w1 w2 w3', 'w4 w5'])\n"
        "torch.testing.assert_close(hub.read(b, [1])[1], local.read(b, [1])[1])\n"
        "print('ok')\n")
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
