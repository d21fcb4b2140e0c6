"""Every committed config file parses, and the deployment files are valid: the compose file
against the Compose specification (compose-spec), the Kubernetes manifests against the
Kubernetes schemas (kubernetes-validate, strict). Validators that are not installed skip
with the reason; `pip install -e '.[dev]'` installs both."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from protocol.config import load_config

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
# what the deployments put in the environment (compose.yaml, kubernetes/10-config.yaml)
DEPLOY_ENV = {
    "SWARMRL_COORDINATOR_OPERATOR_KEY": "ab" * 32,
    "SWARMRL_COORDINATOR_VERIFIER_KEYS": '["' + "cd" * 32 + '"]',
    "SWARMRL_COORDINATOR_DATABASE_URL": "postgresql://swarmrl:pw@postgres:5432/swarmrl",
    "SWARMRL_RELAY_OPERATOR_KEY": "ab" * 32,
    # the key pins compose sets from deploy/.env (deploy/make-keys.sh)
    "SWARMRL_TRAINER_PINS__OPERATOR": "ab" * 32, "SWARMRL_TRAINER_PINS__COORDINATOR": "ef" * 32,
    "SWARMRL_VERIFIER_PINS__OPERATOR": "ab" * 32, "SWARMRL_VERIFIER_PINS__COORDINATOR": "ef" * 32,
    "SWARMRL_VERIFIER_PINS__VERIFIERS": '["' + "cd" * 32 + '"]', "SWARMRL_RELAY_PINS__OPERATOR": "ab" * 32,
}


def _model_for(path: Path):
    from coordinator.config import CoordinatorConfig
    from coordinator.trainer.config import TrainerConfig
    from shardcast.config import RelayConfig
    from verifier.config import VerifierConfig
    from worker.config import WorkerConfig

    for prefix, model, env in (("coordinator", CoordinatorConfig, "SWARMRL_COORDINATOR_"),
                               ("trainer", TrainerConfig, "SWARMRL_TRAINER_"),
                               ("verifier", VerifierConfig, "SWARMRL_VERIFIER_"),
                               ("relay", RelayConfig, "SWARMRL_RELAY_"),
                               ("worker", WorkerConfig, "SWARMRL_WORKER_")):
        if path.stem.startswith(prefix):
            return model, env
    raise AssertionError(f"{path}: no role config matches its name (coordinator*, trainer*, ...)")


CONFIGS = sorted(list(DEPLOY.rglob("*.toml")) + list((ROOT / "examples").rglob("*.toml")))


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_every_committed_config_parses(path):
    model, prefix = _model_for(path)
    cfg = load_config(model, path, env_prefix=prefix, environ=DEPLOY_ENV)
    assert cfg is not None
    if path.parent == DEPLOY / "config" and model.__name__ != "CoordinatorConfig":
        assert cfg.pins.operator == "ab" * 32, "the deployment pins the operator key"


def test_deploy_coordinator_config_needs_the_keys_from_the_environment():
    from coordinator.config import CoordinatorConfig
    from protocol.errors import MessageError

    with pytest.raises(MessageError, match="operator_key"):
        load_config(CoordinatorConfig, DEPLOY / "config" / "coordinator.toml", env_prefix="SWARMRL_COORDINATOR_",
                    environ={})


def test_example_coordinator_config_documents_every_field():
    from pydantic import BaseModel

    from coordinator.config import CoordinatorConfig

    text = (ROOT / "examples" / "coordinator.toml").read_text()
    data = tomllib.loads(text)

    def walk(model: type[BaseModel], node: dict, where: str) -> None:
        for name, f in model.model_fields.items():
            assert name in node, f"examples/coordinator.toml lacks {where}{name}"
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
                walk(f.annotation, node[name], f"{where}{name}.")
            else:
                assert f.description and f"# {f.description}" in text, f"{where}{name} is not documented"

    walk(CoordinatorConfig, data, "")


def _k8s_docs() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_kubernetes_config_map_holds_the_same_configs_as_deploy_config():
    (cm,) = [d for _, d in _k8s_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "swarmrl-config"]
    for name, text in cm["data"].items():
        assert tomllib.loads(text) == tomllib.loads((DEPLOY / "config" / name).read_text()), name


def test_kubernetes_manifests_are_valid_against_the_schemas():
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed (dev extra)")
    docs = _k8s_docs()
    kinds = {d["kind"] for _, d in docs}
    assert {"Namespace", "ConfigMap", "Service", "Deployment", "StatefulSet"} <= kinds
    for path, doc in docs:
        kv.validate(doc, kv.latest_version(), strict=True)
        assert doc["metadata"].get("namespace", "swarmrl") == "swarmrl", path


def test_kubernetes_workloads_run_swarmrl_commands_with_existing_configs():
    roles = {"coordinator", "trainer", "verifier", "relay"}
    seen = set()
    for _, doc in _k8s_docs():
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            if c["image"].startswith("swarmrl-operator"):
                role = c["args"][0]
                assert role in roles
                assert c["args"][1:3] == ["--config", f"/etc/swarmrl/{role}.toml"]
                assert (DEPLOY / "config" / f"{role}.toml").exists()
                seen.add(role)
    assert seen == roles


def test_compose_file_is_valid_and_wires_every_role():
    text = (DEPLOY / "compose.yaml").read_text()
    compose_spec = pytest.importorskip("compose_spec", reason="compose-spec is not installed (dev extra)")
    parsed = compose_spec.PyCompose.from_yaml(text)
    assert set(parsed.service_names()) == {"postgres", "model-init", "coordinator", "trainer", "verifier", "relay"}
    doc = yaml.safe_load(text)
    for name in ("coordinator", "trainer", "verifier", "relay"):
        svc = doc["services"][name]
        assert svc["command"] == [name, "--config", f"/etc/swarmrl/{name}.toml"]
        mounts = [m.split(":") for m in svc["volumes"]]
        config = [m for m in mounts if m[1] == f"/etc/swarmrl/{name}.toml"]
        assert config and (DEPLOY / config[0][0]).resolve().exists()
    # the environment names the compose file sets are real config fields
    from coordinator.config import CoordinatorConfig

    for key in doc["services"]["coordinator"]["environment"]:
        assert key.startswith("SWARMRL_COORDINATOR_")
        assert key[len("SWARMRL_COORDINATOR_"):].lower() in CoordinatorConfig.model_fields
