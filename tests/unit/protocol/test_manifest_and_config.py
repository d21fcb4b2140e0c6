"""Manifests (hashes, tiling, signatures) and the config loader."""

import pytest
from pydantic import BaseModel, ConfigDict

from protocol.config import load_config, parse_overrides
from protocol.errors import MessageError, SignatureError
from protocol.identity import KeyPair
from protocol.manifest import build_manifest, check_shard, open_manifest, sign_manifest


def _ckpt(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text('{"a": 1}')
    (d / "model.safetensors").write_bytes(bytes(range(256)) * 40)  # 10240 bytes
    return d


def test_manifest_tiles_files_into_shards_and_hashes_them(tmp_path):
    d = _ckpt(tmp_path)
    m = build_manifest(d, run_id="r", version=3, step=3, shard_size=4096)
    assert [f.path for f in m.files] == ["config.json", "model.safetensors"]
    weights = [s for s in m.shards if s.path == "model.safetensors"]
    assert [s.size for s in weights] == [4096, 4096, 2048]
    assert m.total_bytes == 10240 + 8
    data = (d / "model.safetensors").read_bytes()
    for s in weights:
        check_shard(s, data[s.offset : s.offset + s.size])
    with pytest.raises(SignatureError, match="does not match"):
        check_shard(weights[0], b"\x01" + data[1:4096])
    with pytest.raises(SignatureError, match="bytes"):
        check_shard(weights[0], data[:100])


def test_signed_manifest_verifies_only_with_operator_key(tmp_path):
    op, other = KeyPair.generate(), KeyPair.generate()
    m = build_manifest(_ckpt(tmp_path), run_id="r", version=1, step=1, shard_size=4096)
    env = sign_manifest(m, op)
    assert open_manifest(env, op.public) == m
    with pytest.raises(SignatureError):
        open_manifest(env, other.public)
    forged = env.model_copy(update={"body": {**env.body, "version": 2}})
    with pytest.raises(SignatureError):
        open_manifest(forged, op.public)


def test_manifest_with_gaps_is_refused_even_if_signed(tmp_path):
    op = KeyPair.generate()
    m = build_manifest(_ckpt(tmp_path), run_id="r", version=1, step=1, shard_size=4096)
    bad = m.model_copy(update={"shards": m.shards[:-1]})
    with pytest.raises(MessageError, match="cover"):
        open_manifest(sign_manifest(bad, op), op.public)


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: int = 1


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "a"
    port: int = 1
    inner: _Inner = _Inner()


def test_config_precedence_file_env_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('name = "file"\nport = 2\n[inner]\nx = 5\n')
    cfg = load_config(_Cfg, p, env_prefix="T_", environ={"T_PORT": "3", "T_INNER__X": "6"},
                      overrides=parse_overrides(["name=flag"]))
    assert (cfg.name, cfg.port, cfg.inner.x) == ("flag", 3, 6)


def test_config_typo_is_an_error(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("prot = 2\n")
    with pytest.raises(MessageError, match="prot"):
        load_config(_Cfg, p)
    with pytest.raises(MessageError, match="does not exist"):
        load_config(_Cfg, tmp_path / "missing.toml")
