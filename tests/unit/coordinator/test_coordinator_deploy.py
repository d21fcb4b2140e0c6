"""Every committed config file parses, and the deployment files are valid: the compose file
against the Compose specification (compose-spec), the Kubernetes manifests against the
Kubernetes schemas (kubernetes-validate, strict). Validators that are not installed skip
with the reason; `pip install -e '.[dev]'` installs both.

And the deployments hold what issue 18 asked of them: each role's container holds only its
own private key (deploy/make-keys.sh writes one folder per role), only TLS ports are public
(nginx in the service's network namespace, deploy/proxy/*.conf, checked with `nginx -t` when
nginx is installed), public Kubernetes Services keep client addresses (externalTrafficPolicy:
Local), the coordinator's data is on a persistent volume, and the trainer's origin is not
published."""

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
    from trainer.config import TrainerConfig
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
    assert set(parsed.service_names()) == {"postgres", "model-init", "coordinator", "trainer", "verifier", "relay",
                                           "coordinator-tls", "relay-tls"}
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


# -- issue 18: keys, TLS, client addresses, persistence ------------------------------------------
ROLE_KEY = {"coordinator": "coordinator.key", "trainer": "operator.key", "verifier": "verifier.key", "relay": None}
K8S_KEY_SECRET = {"coordinator": "swarmrl-coordinator-key", "trainer": "swarmrl-operator-key",
                  "verifier": "swarmrl-verifier-key", "relay": None}


def _role_key_file(role: str) -> str | None:
    doc = tomllib.loads((DEPLOY / "config" / f"{role}.toml").read_text())
    return doc.get("key_file")


def test_make_keys_writes_one_folder_per_role_with_only_its_key(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed (make-keys.sh makes the TLS certificate with it)")
    work = tmp_path / "deploy"
    shutil.copytree(DEPLOY, work, ignore=shutil.ignore_patterns("keys", ".env"))
    (work / "keys").mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    # a key of the old flat layout is moved into its role's folder, not replaced
    subprocess.run(["swarmrl", "keys", "new", str(work / "keys" / "operator.key")], check=True, env=env,
                   capture_output=True)
    old = (work / "keys" / "operator.key").read_bytes()
    p = subprocess.run(["bash", str(work / "make-keys.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    files = sorted(str(f.relative_to(work / "keys")) for f in (work / "keys").rglob("*") if f.is_file())
    assert files == ["coordinator/coordinator.key", "tls/tls.crt", "tls/tls.key", "trainer/operator.key",
                     "verifier/verifier.key"]
    assert (work / "keys" / "trainer" / "operator.key").read_bytes() == old
    env_file = (work / ".env").read_text()
    assert "OPERATOR_KEY=" in env_file and "VERIFIER_KEY=" in env_file
    for role, key in ROLE_KEY.items():
        if key:
            assert _role_key_file(role) == f"/keys/{key}", role


def test_compose_gives_each_role_only_its_own_private_key():
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, svc in doc["services"].items():
        key_mounts = [m.split(":")[0] for m in svc.get("volumes", []) if ":/keys" in m]
        tls_mounts = [m.split(":")[0] for m in svc.get("volumes", []) if m.split(":")[0].startswith("./keys/tls")]
        role = name if name in ROLE_KEY else None
        if role and ROLE_KEY[role]:
            assert key_mounts == [f"./keys/{role}"], name  # make-keys.sh puts only this role's key there
        else:
            assert key_mounts == [], f"{name} mounts a private key"
        assert all(m == "./keys/tls" for m in tls_mounts)
        assert not any(m.split(":")[0] in ("./keys", "./keys/") for m in svc.get("volumes", [])), name


def test_compose_publishes_only_tls_ports_and_not_the_origin():
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    published = {name: svc.get("ports", []) for name, svc in doc["services"].items() if svc.get("ports")}
    assert published == {"coordinator": ["443:8443"], "relay": ["8800:8443"]}
    assert "ports" not in doc["services"]["trainer"]
    for proxy, owner, conf in (("coordinator-tls", "coordinator", "coordinator.conf"), ("relay-tls", "relay", "relay.conf")):
        svc = doc["services"][proxy]
        assert svc["network_mode"] == f"service:{owner}"  # it reaches its service on 127.0.0.1
        assert f"./proxy/{conf}:/etc/nginx/nginx.conf:ro" in svc["volumes"]


def test_the_tls_proxies_replace_x_forwarded_for_and_listen_with_tls():
    for name, upstream in (("coordinator", "127.0.0.1:8700"), ("relay", "127.0.0.1:8800")):
        text = (DEPLOY / "proxy" / f"{name}.conf").read_text()
        assert "listen 8443 ssl;" in text
        assert f"proxy_pass http://{upstream};" in text
        assert "proxy_set_header X-Forwarded-For $remote_addr;" in text  # replaced, never appended
        assert "$proxy_add_x_forwarded_for" not in text
    text = (DEPLOY / "config" / "coordinator.toml").read_text()
    assert '# trusted_proxies = ["127.0.0.1"]' in text or 'trusted_proxies = ["127.0.0.1"]' in text


def test_the_tls_proxy_configs_are_valid_nginx(tmp_path):
    import shutil
    import subprocess

    if not (shutil.which("nginx") and shutil.which("openssl")):
        pytest.skip("nginx or openssl is not installed (apt-get install nginx-light openssl)")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "1", "-subj", "/CN=localhost", "-keyout", str(tmp_path / "tls.key"),
                    "-out", str(tmp_path / "tls.crt")], check=True, capture_output=True)
    for name in ("coordinator", "relay"):
        text = (DEPLOY / "proxy" / f"{name}.conf").read_text()
        text = text.replace("/etc/swarmrl/tls", str(tmp_path)).replace(f"/tmp/nginx-{name}.pid", str(tmp_path / "pid"))
        (tmp_path / f"{name}.conf").write_text(text)
        p = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / f"{name}.conf")],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr


def test_kubernetes_proxy_config_map_holds_the_same_files_as_deploy_proxy():
    (cm,) = [d for _, d in _k8s_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "swarmrl-proxy"]
    assert cm["data"] == {f"{n}.conf": (DEPLOY / "proxy" / f"{n}.conf").read_text() for n in ("coordinator", "relay")}


def _pods() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in _k8s_docs() if d["kind"] in ("Deployment", "StatefulSet")}


def test_kubernetes_gives_each_role_only_its_own_private_key():
    for role, secret in K8S_KEY_SECRET.items():
        spec = _pods()[role]["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is False, role  # no API token to steal either
        secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        key_secrets = sorted(s for s in secrets.values() if s != "swarmrl-tls")
        assert key_secrets == ([secret] if secret else []), role
        for c in spec["containers"] + spec.get("initContainers", []):
            mounted = {secrets[m["name"]] for m in c.get("volumeMounts", []) if m["name"] in secrets}
            if c["name"] == role:
                assert mounted == ({secret} if secret else set()), role
                if secret:
                    (m,) = [m for m in c["volumeMounts"] if secrets.get(m["name"]) == secret]
                    assert _role_key_file(role) == f"{m['mountPath']}/{ROLE_KEY[role]}"
            else:  # the TLS sidecar and init containers hold no private key of any role
                assert mounted <= {"swarmrl-tls"}, (role, c["name"])


def test_kubernetes_public_services_keep_client_addresses_and_serve_only_tls():
    services = {d["metadata"]["name"]: d for _, d in _k8s_docs() if d["kind"] == "Service"}
    public = {n: s for n, s in services.items() if s["spec"].get("type") in ("LoadBalancer", "NodePort")}
    assert set(public) == {"coordinator-public", "relay-public"}
    for name, svc in public.items():
        assert svc["spec"]["externalTrafficPolicy"] == "Local", name
        assert [p["targetPort"] for p in svc["spec"]["ports"]] == [8443], name  # the TLS container
        app = svc["spec"]["selector"]["app"]
        tls = [c for c in _pods()[app]["spec"]["template"]["spec"]["containers"] if c["name"] == "tls"]
        assert tls and tls[0]["ports"] == [{"containerPort": 8443}], name
    assert services["trainer"]["spec"].get("type", "ClusterIP") == "ClusterIP"  # the origin stays inside


def test_kubernetes_coordinator_data_is_on_a_persistent_volume():
    sts = _pods()["coordinator"]
    assert sts["kind"] == "StatefulSet"
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    (c,) = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "coordinator"]
    data = [m for m in c["volumeMounts"] if m["mountPath"] == "/data"]
    assert data and data[0]["name"] in claims
    assert not any(v["name"] == data[0]["name"] for v in sts["spec"]["template"]["spec"]["volumes"])
    cfg = tomllib.loads((DEPLOY / "config" / "coordinator.toml").read_text())
    assert cfg["data_dir"].startswith("/data/")
