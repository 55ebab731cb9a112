"""Tiny random models and shared helpers for the test-suite (CPU, offline)."""

from __future__ import annotations

import copy
import os
import runpy
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

VOCAB = ["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(60)]


def assert_close(actual, expected, *, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """The one closeness check of the test-suite."""
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def assert_one_error_line(result, match: str, forbid: str | None = None) -> str:
    """A CLI user error as the CLI promises it: exit code 2, exactly one ``error:`` line on stderr (warnings and
    model-loading progress bars aside) containing ``match`` (and not ``forbid``), no traceback. Returns the line."""
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [line for line in result.stderr.strip().splitlines()
             if line.strip() and not line.startswith("warning: ") and "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert match in lines[0], lines[0]
    assert forbid is None or forbid not in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _save_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")
    fast.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Directory holding two saved tiny models: a Llama-style donor and a GPT-2-style recipient."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(1234)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)).eval()
    gpt2 = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(VOCAB), n_embd=24, n_layer=3, n_head=4, n_positions=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2)).eval()
    for name, model in (("llama", llama), ("gpt2", gpt2)):
        model.save_pretrained(root / name)
        _save_tokenizer(root / name)
    return root


def _load(tiny_dir, name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir / name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_dir / name)


@pytest.fixture(scope="session")
def hf_llama(tiny_dir):
    return _load(tiny_dir, "llama")


@pytest.fixture(scope="session")
def hf_gpt2(tiny_dir):
    return _load(tiny_dir, "gpt2")


@pytest.fixture(scope="session")
def nn_llama(hf_llama):
    import commandv_interp as cv

    return cv.open_model(hf_llama[0], tokenizer=hf_llama[1], name="tiny-llama")


@pytest.fixture(scope="session")
def nn_gpt2(hf_gpt2):
    import commandv_interp as cv

    return cv.open_model(hf_gpt2[0], tokenizer=hf_gpt2[1], name="tiny-gpt2")


@pytest.fixture(scope="session")
def tl_llama(tiny_dir, hf_llama):
    """The same tiny Llama through TransformerLens (bridge over a deep copy: the bridge rewrites it)."""
    import commandv_interp as cv
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(tiny_dir / "llama"), hf_model=copy.deepcopy(hf_llama[0]),
                                                 tokenizer=hf_llama[1])
    return cv.open_model(bridge, name="tiny-llama")


def random_adapter(d_model, layers=(0, 2), kind="nodireft", seed=0, scale=0.5, rank=4):
    """An adapter with random (frozen) weights: every parameter perturbed by ``scale``·N(0, 1)."""
    import commandv_interp as cv
    from commandv_interp.adapters import make_intervention

    torch.manual_seed(seed)
    ivs = {}
    for layer in layers:
        iv = make_intervention(kind, d_model, rank)
        with torch.no_grad():
            for p in iv.parameters():
                p.add_(scale * torch.randn_like(p))
        iv.project()
        ivs[layer] = iv.requires_grad_(False)
    return cv.Adapter(ivs)


def random_prompts(n: int, seed: int = 0, min_len: int = 3, max_len: int = 9) -> list[str]:
    """Deterministic word prompts of varying length (so batches are padded)."""
    g = torch.Generator().manual_seed(seed)
    prompts = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        ids = torch.randint(4, len(VOCAB), (length,), generator=g).tolist()
        prompts.append(" ".join(VOCAB[i] for i in ids))
    return prompts


def rotated_llama(model, seed: int = 0):
    """A copy of a Llama model computing the same function with its residual basis rotated by a random orthogonal Q.

    RMSNorm gains are folded into the following weights first (so norms commute with Q). Returns (model, Q); the
    copy's block outputs equal the original's times Q.
    """
    m = copy.deepcopy(model)
    d = m.config.hidden_size
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q.float()
    with torch.no_grad():
        for layer in m.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
                lin.weight.copy_(lin.weight * layer.input_layernorm.weight)
                lin.weight.copy_(lin.weight @ q)
            for lin in (mlp.gate_proj, mlp.up_proj):
                lin.weight.copy_(lin.weight * layer.post_attention_layernorm.weight)
                lin.weight.copy_(lin.weight @ q)
            attn.o_proj.weight.copy_(q.T @ attn.o_proj.weight)
            mlp.down_proj.weight.copy_(q.T @ mlp.down_proj.weight)
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        m.lm_head.weight.copy_((m.lm_head.weight * m.model.norm.weight) @ q)
        m.model.norm.weight.fill_(1.0)
        m.model.embed_tokens.weight.copy_(m.model.embed_tokens.weight @ q)
    return m.eval(), q


def rotated_pair(hf_llama, nn_llama, rotation_seed: int):
    """(donor, recipient, adapter): the tiny Llama, the same model in a residual basis rotated by ``rotation_seed``
    (an exactly corresponding recipient) and a random NodiReFT adapter at donor layers 0 and 2."""
    import commandv_interp as cv

    model, _ = rotated_llama(hf_llama[0], seed=rotation_seed)
    recipient = cv.open_model(model, tokenizer=hf_llama[1], name="rotated-llama")
    return nn_llama, recipient, random_adapter(nn_llama.d_model, layers=(0, 2), scale=0.6, seed=3)


@pytest.fixture(scope="session")
def zoo_llama():
    from commandv_interp import zoo

    return zoo.load_model("llama-6x128")


@pytest.fixture(scope="session")
def zoo_gpt2():
    from commandv_interp import zoo

    return zoo.load_model("gpt2-4x96")


NOT_ON_SERVER = ("commandv_interp", "jaxtyping", "beartype", "pandas", "typer", "matplotlib")
"""Packages this project has that an NDIF server does not."""


class _Unimportable:
    """A meta-path finder that refuses to import the given top-level packages."""

    def __init__(self, roots):
        self.roots, self.refused = set(roots), []

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.roots:
            self.refused.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (not installed on the simulated server)")
        return None


@pytest.fixture()
def server_like(monkeypatch):
    """nnsight's ``remote="local"`` with our packages truly absent while the request is deserialized.

    The stock simulation hides only ``sys.modules`` entries, and an installed (or editable) package is simply
    imported again from ``site-packages``/``src``. Here those imports fail, as on a server. Yields a record with the
    number of simulated requests and the imports refused.
    """
    import sys
    import types

    from nnsight.intervention.backends.local import LocalSimulationBackend

    record = types.SimpleNamespace(requests=0, refused=[])
    hide, restore, call = (LocalSimulationBackend._hide_local_modules, LocalSimulationBackend._restore,
                           LocalSimulationBackend.__call__)
    finder = _Unimportable(NOT_ON_SERVER)

    def hide_more(self):
        hidden = hide(self)  # pops every non-server module from sys.modules, ours included
        sys.meta_path.insert(0, finder)
        return hidden

    def restore_all(self, hidden):
        sys.meta_path.remove(finder)
        record.refused += finder.refused
        finder.refused = []
        restore(self, hidden)

    def counted(self, tracer):
        record.requests += 1
        return call(self, tracer)

    monkeypatch.setattr(LocalSimulationBackend, "_hide_local_modules", hide_more)
    monkeypatch.setattr(LocalSimulationBackend, "_restore", restore_all)
    monkeypatch.setattr(LocalSimulationBackend, "__call__", counted)
    yield record


def pytest_collection_modifyitems(config, items):
    """The notebooks run on zoo models (minutes in all): they belong to the slow tier with the zoo-empirical tests."""
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)


def run_script(monkeypatch, script, *args: str) -> None:
    """Run ``script`` (a path) as ``python script args`` in this process, its folder first on the path (as Python
    puts it when the script is run): for the figure scripts of ``analyses/``, which import their ``_figure``."""
    monkeypatch.syspath_prepend(str(script.parent))
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    runpy.run_path(str(script), run_name="__main__")
