"""URL paths of every swarmrl HTTP service, declared once for servers and clients.

Request and response bodies are the types in `messages.py`; every POST below takes a
signed `Envelope` of the kind named in the comment. Every service also serves
`GET /health`, `GET /metrics` (Prometheus text) and `GET /docs` (OpenAPI).
"""

# -- coordinator ---------------------------------------------------------------------------
RUN = "/v1/run"                                  # GET -> RunInfo
REGISTER = "/v1/workers/register"                # POST registration -> RegistrationResponse
HEARTBEAT = "/v1/workers/heartbeat"              # POST heartbeat -> {"ok": true}
WORKER = "/v1/workers/{worker_id}"               # GET -> WorkerInfo
LEASES = "/v1/leases"                            # POST lease_request -> LeaseResponse
LEASE_RELEASE = "/v1/leases/release"             # POST lease_release -> {"released": n}
SUBMISSIONS = "/v1/submissions"                  # POST submission -> SubmissionResponse
SUBMISSION = "/v1/submissions/{submission_id}"   # GET -> SubmissionStatus
SUBMISSION_STATUSES = "/v1/submission-statuses"  # GET ?ids=a,b,... (up to 256) -> SubmissionStatuses
VERIFICATION_CLAIM = "/v1/verification/claim"    # POST verification_claim (verifier key) -> ClaimResponse
VERIFICATION_RESUME = "/v1/verification/resume"  # POST verification_resume (verifier key) -> ClaimResponse
VERDICTS = "/v1/verdicts"                        # POST verdict (verifier key) -> {"ok": true}
VERDICTS_BATCH = "/v1/verdicts/batch"            # POST VerdictBatch (each a signed verdict) -> VerdictBatchResponse
TRAINER_BATCH = "/v1/trainer/batch"              # POST batch_request (operator key) -> BatchResponse
TRAINER_ACK = "/v1/trainer/ack"                  # POST batch_ack (operator key) -> BatchAckResponse
POLICY = "/v1/policy"                            # GET -> PolicyInfo; POST policy_manifest (operator key)
STATS = "/v1/stats"                              # GET -> JSON summary for dashboards and the demo
TRAINER_EVAL = "/v1/trainer/eval"                # POST eval_report (operator key) -> {"ok": true}
DASHBOARD = "/dashboard"                         # GET -> the live web page (static HTML/JS/CSS)
DASHBOARD_API = "/v1/dashboard"                  # GET {DASHBOARD_API}/... -> read-only JSON (see /docs)

# -- shardcast origin and relays -----------------------------------------------------------
SC_VERSIONS = "/v1/versions"                                 # GET -> {"versions": [int, ...]}
SC_LATEST = "/v1/versions/latest"                            # GET ?after=N&wait_s=S -> signed manifest (long-poll; 204 if none)
SC_MANIFEST = "/v1/versions/{version}/manifest"              # GET -> signed manifest Envelope
SC_SHARD = "/v1/versions/{version}/shards/{index}"           # GET -> shard bytes (Range supported)

# -- common ---------------------------------------------------------------------------------
HEALTH = "/health"
METRICS = "/metrics"
