"""Re-verification of archived rollouts: does the recorded verdict still hold?

For one archived submission, `Reverifier.reverify` does what the verifier did, from the
archive alone, with a full check whatever was drawn at the time:

1. checks the archived checkpoint of the claimed version against its operator-signed manifest
   (signature, run id, every file's sha256) — a swapped checkpoint would make any answer moot;
2. rebuilds the `VerificationJob` exactly as the coordinator handed it out: the signed lease
   and submission envelopes as archived, the coordinator's archived rewards, the task's answer
   from the task source named in run.json (its task id must match the archived one);
3. runs the verifier's own pipeline (`verifier.pipeline.verify_job`: signatures, lease and
   data, termination, reward, replay, proof, sampling, with `verifier.models.PolicyModels`
   loading the archived weights); the replay ledger is rebuilt from every archived
   submission received earlier, so a copied rollout is caught again;
4. compares with the recorded verdict (whose own signature is checked against the run's
   verifier keys): it holds when both accept or both reject.

An envelope edited after the fact no longer verifies, and the pipeline rejects it on
`signatures` alone. So that the auditor also sees *what* the edit changed, the model checks
are then run on the unverified bodies too and reported next to the failed signature (the
verdict stays a rejection either way).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.envelope import AUDIENCE_COORDINATOR, Envelope, open_envelope
from protocol.errors import ProtocolError
from protocol.identity import PublicKey
from protocol.lm import decode_completion
from protocol.manifest import MANIFEST_NAME, open_manifest, sha256_file
from protocol.messages import (KIND_VERDICT, CheckResult, Lease, Submission, Verdict,
                               VerificationJob)
from verifier.audit.archive import Archive
from verifier.audit.errors import AuditError
from verifier.checks import result
from verifier.checks.replay import replay_keys
from verifier.errors import JobError
from verifier.job import OpenedJob, open_job
from verifier.judge import JudgeSettings, judge, make_verdict, model_ready
from verifier.models import PolicyModels
from verifier.pipeline import verify_job
from verifier.prefill import prefill, vocab_size
from verifier.seen import SeenLedger
from verifier.thresholds import CALIBRATED, Thresholds


@dataclass
class Reverification:
    submission_id: str
    worker_id: str
    policy_version: int
    recorded_status: str                      # accepted | rejected | undecided
    recorded_full_check: bool | None
    recorded_checks: list[dict]
    recorded_reason: str
    recorded_signature: str                   # "valid", "absent", or why it does not verify
    accepted: bool                            # the re-run's decision
    checks: list[dict]
    reason: str
    checkpoint: str                           # what was checked of the archived checkpoint
    notes: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool | None:
        """True/False when a verdict was recorded; None when there is none to compare with."""
        if self.recorded_status not in ("accepted", "rejected"):
            return None
        return (self.recorded_status == "accepted") == self.accepted

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["holds"] = self.holds
        return d


def verify_checkpoint(folder: Path, operator_key: str, run_id: str) -> str:
    """Check an archived checkpoint against its signed manifest; AuditError if it does not match."""
    try:
        env = Envelope.model_validate_json((folder / MANIFEST_NAME).read_bytes())
        manifest = open_manifest(env, PublicKey.from_hex(operator_key))
    except (OSError, ValueError, ProtocolError) as exc:
        raise AuditError(f"the archived checkpoint {folder} has no valid operator-signed manifest: {exc}") from None
    if manifest.run_id != run_id:
        raise AuditError(f"the archived checkpoint {folder} belongs to run {manifest.run_id!r}, not {run_id!r}")
    for f in manifest.files:
        p = folder / f.path
        try:
            digest = sha256_file(p)
        except (OSError, ProtocolError) as exc:
            raise AuditError(f"the archived checkpoint {folder} lacks {f.path}: {exc}") from None
        if digest != f.sha256:
            raise AuditError(f"the archived checkpoint file {p} does not match its signed manifest "
                             "(edited or corrupted); re-verification against it would prove nothing")
    return f"version {manifest.version}: manifest signed by the operator, {len(manifest.files)} files match"


def open_unverified(job: VerificationJob) -> OpenedJob:
    """The job's bodies WITHOUT their signatures checked (diagnostics of an edited envelope only)."""
    lease = Lease.model_validate(job.lease.body)
    sub = Submission.model_validate(job.submission.body)
    signer = PublicKey.from_hex(job.submission.signer)
    return OpenedJob(job=job, lease=lease, submission=sub, signer_id=signer.peer_id, signer_hex=signer.hex,
                     nonce=job.submission.nonce)


def _checks(checks: list[CheckResult]) -> list[dict]:
    return [c.model_dump(mode="json") for c in checks]


class Reverifier:
    """Re-verifies rollouts of one archive; models and the tokenizer are loaded once per version."""

    def __init__(self, archive: Archive, *, limits: dict[str, Thresholds] | None = None, device: str = "cpu",
                 tokenizer: Any | None = None, replay_history: bool = True):
        self.archive = archive
        self.run = archive.run
        self.settings = JudgeSettings(run_id=self.run.run_id, limits=limits or dict(CALIBRATED))
        self.coordinator_key = PublicKey.from_hex(self.run.coordinator_key)
        self._checked: dict[int, str] = {}
        self.models = PolicyModels(self._checkpoint, device=device, capacity=4)
        self._tokenizer = tokenizer
        self.replay_history = replay_history
        self._rows = None
        self._source = None

    # -- inputs ---------------------------------------------------------------------------------
    def _checkpoint(self, version: int) -> Path:
        folder = self.archive.checkpoint_dir(version)
        if folder is None:
            kept = self.archive.checkpoint_versions()
            raise AuditError(f"policy version {version} is not in the archive's checkpoints (kept: "
                             f"{', '.join(map(str, kept)) or 'none'}); raise the coordinator's checkpoints "
                             "retention to re-verify such rollouts")
        if version not in self._checked:
            self._checked[version] = verify_checkpoint(folder, self.run.operator_key, self.run.run_id)
        return folder

    def tokenizer(self, version: int) -> Any:
        if self._tokenizer is None:
            from verifier.audit.views import load_tokenizer_for

            self._tokenizer, _ = load_tokenizer_for(self.archive, version)
        return self._tokenizer

    def task(self, row: dict) -> tuple[str, str, list[str], dict]:
        """(kind, answer, notes, metadata) of the row's task, from the task source in run.json."""
        from protocol.tasks import get_source

        if self._source is None:
            try:
                self._source = get_source(self.run.tasks.kind, seed=self.run.tasks.seed, options=self.run.tasks.options)
            except ProtocolError as exc:
                raise AuditError(f"run.json names a task source that cannot be built here: {exc}") from None
        t = self._source.task("train", int(row["task_index"]))
        notes = []
        if t.id != row["task_id"]:
            notes.append(f"the task source of run.json gives task {t.id} for index {row['task_index']}, the archive "
                         f"says {row['task_id']}: the reward check compares with the wrong answer")
        return t.kind, t.answer, notes, dict(t.metadata)

    def _replay_keys(self) -> list[tuple[str, float, list]]:
        """(submission id, received_at, replay keys) of every archived row, computed once."""
        if self._rows is None:
            self._rows = []  # the keys only: the envelopes are read a batch at a time
            for t in self.archive.stream(columns=["submission_id", "worker_id", "received_at", "submission_envelope",
                                                  "lease_envelope"]):
                for r in t.to_pylist():
                    try:
                        keys = replay_keys(open_unverified(self._job(r, [], "", "")))
                    except (ProtocolError, ValueError):
                        continue  # an unreadable row cannot be replayed from
                    self._rows.append((r["submission_id"], r["received_at"], keys))
        return self._rows

    def ledger_before(self, row: dict) -> SeenLedger:
        """A replay ledger holding every archived submission received before this one."""
        ledger = SeenLedger(":memory:")
        if self.replay_history:
            for sid, at, keys in self._replay_keys():
                if at < row["received_at"] and sid != row["submission_id"]:
                    ledger.remember(sid, keys, at)
        return ledger

    @staticmethod
    def _job(row: dict, rewards: list[float], kind: str, answer: str, metadata: dict | None = None) -> VerificationJob:
        return VerificationJob(submission_id=row["submission_id"], worker_id=row["worker_id"],
                               lease=Envelope.model_validate_json(row["lease_envelope"]),
                               submission=Envelope.model_validate_json(row["submission_envelope"]),
                               rewards=rewards, task_answer=answer, task_kind=kind,
                               task_metadata=dict(metadata or {}), full_check=True)

    @staticmethod
    def recorded_probe(checks: list[dict]) -> int | None:
        """The completion the original verdict's precision probe looked at (audits repeat it)."""
        for c in checks:
            probe = (c.get("stats") or {}).get("precision_probe") if c.get("name") == "proof" else None
            if isinstance(probe, dict) and isinstance(probe.get("completion"), int):
                return probe["completion"]
        return None

    def _recorded(self, row: dict) -> tuple[str, list[dict], str]:
        raw = row.get("verdict_envelope")
        if not raw:
            return "absent", [], ""
        try:
            env = Envelope.model_validate_json(raw)
            v = open_envelope(env, KIND_VERDICT, Verdict, max_skew_s=None, run_id=self.run.run_id,
                              audience=AUDIENCE_COORDINATOR, allowed_signers=set(self.run.verifier_keys)).body
            return "valid", _checks(v.checks), v.reason
        except (ValueError, ProtocolError) as exc:
            try:
                body = json.loads(raw).get("body") or {}
            except (ValueError, AttributeError):
                body = {}
            return f"does not verify: {exc}", list(body.get("checks") or []), str(body.get("reason", ""))

    # -- the re-run -----------------------------------------------------------------------------
    def reverify(self, submission_id: str) -> Reverification:
        row = self.archive.rollout(submission_id)
        version = int(row["policy_version"])
        kind, answer, notes, metadata = self.task(row)
        try:
            job = self._job(row, list(row["rewards"] or []), kind, answer, metadata)
        except ValueError as exc:
            raise AuditError(f"submission {row['submission_id']}: archived envelopes are not JSON envelopes: {exc}") from None
        tokenizer = self.tokenizer(version)
        ledger = self.ledger_before(row)
        probe = self.recorded_probe(self._recorded(row)[1])
        try:
            try:
                open_job(job, self.coordinator_key)
                verdict = verify_job(job, coordinator_key=self.coordinator_key, tokenizer=tokenizer,
                                     models=self.models, settings=self.settings, ledger=ledger, probe_index=probe)
            except ProtocolError as exc:
                verdict = self._tampered(job, exc, tokenizer, ledger, notes)
        except JobError as exc:
            raise AuditError(str(exc)) from None
        finally:
            ledger.close()
        signature, recorded_checks, recorded_reason = self._recorded(row)
        return Reverification(
            submission_id=row["submission_id"], worker_id=row["worker_id"], policy_version=version,
            recorded_status=row["status"], recorded_full_check=row.get("verdict_full_check"),
            recorded_checks=recorded_checks, recorded_reason=row.get("reason") or recorded_reason,
            recorded_signature=signature, accepted=verdict.accepted, checks=_checks(verdict.checks),
            reason=verdict.reason, checkpoint=self._checked.get(version, "not needed (model checks not run)"),
            notes=notes)

    def _tampered(self, job: VerificationJob, error: ProtocolError, tokenizer: Any, ledger: SeenLedger,
                  notes: list[str]) -> Verdict:
        """The signatures do not verify: reject, and show what the model checks say of the bodies."""
        failed = result("signatures", False, {}, str(error))
        try:
            oj = open_unverified(job)
        except (ValueError, ProtocolError) as exc:
            notes.append(f"the archived bodies are not valid messages either ({exc}); no other check could run")
            return make_verdict(job, [failed])
        notes.append("an envelope does not verify (edited after it was signed?); the checks below ran on its "
                     "unverified content to show what changed")
        texts = [decode_completion(tokenizer, c.token_ids) for c in oj.submission.completions]
        outputs, vocab = None, None
        if oj.lease.min_policy_version <= oj.submission.policy_version <= oj.lease.max_policy_version:
            # the same prefill dtype the verifier chose: the one the worker declared, when allowed
            dtype = self.settings.judgeable(oj)
            if dtype is not None:
                model = self.models.model(oj.submission.policy_version, dtype)
                vocab = vocab_size(model)
                if model_ready(oj, vocab):
                    outputs = prefill(model, oj)
        v = judge(oj, self.settings, ledger, texts, outputs=outputs, vocab_size=vocab)
        return make_verdict(job, [failed, *v.checks])
