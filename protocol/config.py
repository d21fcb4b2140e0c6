"""Loading a role's pydantic config from a TOML file, environment variables and flags.

Precedence, lowest first: the model's defaults, the TOML file, environment variables named
`<PREFIX><FIELD>` (nested fields joined by `__`, values parsed as JSON when they parse, else
kept as strings), then explicit overrides (`--set a.b=value` flags). Unknown keys anywhere
are an error, so a typo in a config file is caught at start-up.

Written here rather than taken from pydantic-settings because swarmrl needs one rule for
all roles (TOML path chosen at run time, `--set` overrides, dotted keys) in a few lines.

`KeyPins` is the one config section every role shares (the `pins` field of the worker,
verifier, relay and trainer configs): the operator, coordinator and verifier keys the
operator published out of band. A role that would otherwise take those keys from the network
(GET /v1/run over plain HTTP, a relay, a peer) refuses to start when a pinned key differs.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from protocol.errors import MessageError, PinError

if TYPE_CHECKING:
    from protocol.messages import RunInfo

C = TypeVar("C", bound=BaseModel)


_HEX_KEY = r"^([0-9a-f]{64})?$"


class KeyPins(BaseModel):
    """Public keys this role trusts ahead of the network (hex Ed25519; empty = not pinned).

    Without pins a role believes the keys the coordinator serves at GET /v1/run, which travel
    over plain HTTP in most deployments: whoever sits on that path could hand a worker its own
    "coordinator" and "operator" and feed it forged leases and weights. With pins, a served key
    that differs is refused at start (`check`). `deploy/make-keys.sh` prints the lines to paste."""

    model_config = ConfigDict(extra="forbid")
    operator: str = Field("", pattern=_HEX_KEY, description="hex public key of the operator (signs policy "
                                                            "manifests and batch requests); empty = not pinned")
    coordinator: str = Field("", pattern=_HEX_KEY, description="hex public key of the coordinator (signs "
                                                               "leases); empty = not pinned")
    verifiers: list[str] = Field(default_factory=list, description="hex public keys of the run's verifiers; "
                                 "every verifier key the coordinator serves must be one of them (empty = not pinned)")

    @field_validator("operator", "coordinator", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("verifiers")
    @classmethod
    def _hex_list(cls, v: list[str]) -> list[str]:
        out = [k.strip().lower() for k in v]
        bad = [k for k in out if len(k) != 64 or any(ch not in "0123456789abcdef" for ch in k)]
        if bad:
            raise ValueError(f"verifier pin {bad[0]!r} is not a hex Ed25519 public key (64 hex digits)")
        return out

    @property
    def pinned(self) -> bool:
        return bool(self.operator or self.coordinator or self.verifiers)

    def check(self, *, source: str, operator: str | None = None, coordinator: str | None = None,
              verifiers: list[str] | None = None) -> None:
        """Raise PinError naming every key from `source` that differs from its pin (a key the
        source does not serve is passed as None and not checked)."""
        wrong = []
        if self.operator and operator is not None and operator.lower() != self.operator:
            wrong.append(f"operator key {operator[:16]}… (pinned: {self.operator[:16]}…)")
        if self.coordinator and coordinator is not None and coordinator.lower() != self.coordinator:
            wrong.append(f"coordinator key {coordinator[:16]}… (pinned: {self.coordinator[:16]}…)")
        if self.verifiers and verifiers is not None:
            extra = [k for k in verifiers if k.lower() not in self.verifiers]
            if extra:
                wrong.append(f"verifier key {extra[0][:16]}… (not among the {len(self.verifiers)} pinned)")
        if wrong:
            raise PinError(f"{source} names " + "; ".join(wrong) + ": refusing to start. If the operator "
                           "rotated keys, update `pins` in this config from a source you trust; otherwise "
                           "something between you and the run is not the run")

    def check_run(self, info: "RunInfo", source: str) -> None:
        """`check` the three kinds of key a RunInfo (GET /v1/run) serves."""
        self.check(source=source, operator=info.operator_key, coordinator=info.coordinator_key,
                   verifiers=list(info.verifier_keys))


def _parse_scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _set_dotted(target: dict, dotted: str, value: Any) -> None:
    parts = [p for p in dotted.replace("__", ".").split(".") if p]
    if not parts:
        raise MessageError(f"empty config key in {dotted!r}")
    node = target
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise MessageError(f"config key {dotted!r} goes through a non-table value")
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict:
    """['a.b=1', 'c=x'] -> {'a': {'b': 1}, 'c': 'x'}"""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise MessageError(f"override {item!r} must look like key=value")
        k, v = item.split("=", 1)
        _set_dotted(out, k.strip(), _parse_scalar(v.strip()))
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(
    model: type[C], path: Path | str | None = None, *, env_prefix: str | None = None,
    overrides: dict | None = None, environ: dict[str, str] | None = None,
) -> C:
    """Build `model` from defaults < TOML file < environment < overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError as exc:
            raise MessageError(f"config file {p} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise MessageError(f"config file {p} is not valid TOML: {exc}") from exc
    if env_prefix:
        env = os.environ if environ is None else environ
        from_env: dict = {}
        for k, v in env.items():
            if k.startswith(env_prefix) and len(k) > len(env_prefix):
                _set_dotted(from_env, k[len(env_prefix):].lower(), _parse_scalar(v))
        data = _merge(data, from_env)
    if overrides:
        data = _merge(data, overrides)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()))
            lines.append(f"{loc}: {e.get('msg')}")
        where = f" in {path}" if path else ""
        raise MessageError(f"invalid {model.__name__}{where}: " + "; ".join(lines)) from exc


def dump_toml(cfg: BaseModel) -> str:
    """A TOML rendering of a config (for `swarmrl ... --print-config` and the demo's files)."""
    return _to_toml(cfg.model_dump(mode="json", exclude_none=True))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise MessageError(f"cannot render {type(v).__name__} as TOML")


def _to_toml(d: dict, prefix: str = "") -> str:
    scalars = [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in d.items() if isinstance(v, dict)]
    out = "\n".join(scalars)
    for k, v in tables:
        name = f"{prefix}{k}"
        out += f"\n\n[{name}]\n" + _to_toml(v, name + ".")
    return out.strip() + "\n"
