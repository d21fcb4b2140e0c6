"""The verifier: decides whether an untrusted worker's rollouts may enter the training buffer.

Data flow: claim jobs from the coordinator -> open the signed lease and submission
(`job`) -> for a full check, one prefill of prompt + completions with the claimed policy
version (`models`, `prefill`) -> the checks (`checks/`, thresholds in `thresholds`) ->
a signed `Verdict` back to the coordinator (`service`). `pipeline.verify_job` is the whole
path for one job; `main.run` is the `swarmrl verifier` process (`app` serves /health and
/metrics). The verifier imports `protocol` and `shardcast`, never another role.
"""
