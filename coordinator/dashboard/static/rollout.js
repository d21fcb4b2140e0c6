// One rollout's audit view: what the coordinator holds about a submission, decoded. The public
// view has no full_check and, of the verdict, only the failed checks' names.
"use strict";

const OPERATOR_ONLY = "(operator view only)";

function shown(value, yes) { return value === undefined ? OPERATOR_ONLY : (value ? yes || "yes" : "no"); }

function facts(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v === null || v === undefined ? "–" : v)]));
}

function statsList(stats) {
  const ul = el("ul", { class: "stats" });
  for (const [k, v] of Object.entries(stats || {})) {
    ul.append(el("li", {}, el("span", { class: "muted" }, k + " "), el("span", { class: "mono" },
      typeof v === "object" ? JSON.stringify(v) : String(v))));
  }
  return ul;
}

async function load() {
  const id = new URLSearchParams(location.search).get("id");
  document.getElementById("rollout-id").textContent = id || "(none)";
  if (!id) { showError("no submission id: open this page from the dashboard's rejections"); return; }
  let r;
  try {
    r = await getJSON(API + "/rollouts/" + encodeURIComponent(id));
  } catch (e) {
    showError(e.message);
    return;
  }
  document.title = "rollout " + id;
  const st = document.getElementById("rollout-status");
  st.textContent = r.status;
  st.className = "badge " + r.status;
  facts(document.getElementById("summary"), [
    ["worker", el("span", { class: "mono" }, r.worker_id)], ["policy version", "v" + r.policy_version],
    ["task", r.task_id + " (index " + r.task_index + ")"], ["status", r.status],
    ["reason", r.reason || "–"], ["full check drawn", shown(r.full_check)],
    ["received", when(r.received_at)], ["decided", when(r.decided_at)], ["tokens", r.n_tokens],
    ["mean reward", num(r.mean_reward, 3)], ["engine", r.engine ? [r.engine.name, r.engine.version, r.engine.dtype, r.engine.device].filter(Boolean).join(" ") : null],
    ["archived", r.archived ? "yes" : "not yet"], ["checkpoint archived", r.checkpoint_archived ? "yes" : "no"],
    ["completions read from", r.submission_source === "gone" ? "nowhere: no longer in the database nor in the archive" : r.submission_source],
  ]);
  document.getElementById("prompt").textContent = r.prompt.text === null ? "(cannot decode)" : r.prompt.text;
  document.getElementById("prompt-ids").textContent = "token ids: " + JSON.stringify(r.prompt.token_ids);
  fill(document.querySelector("#completions tbody"), r.completions.map(c => el("tr", {},
    td(c.index, "num"), td(c.seed, "mono small"), el("td", { class: "text", title: JSON.stringify(c.token_ids) },
      c.text === null ? "(cannot decode)" : JSON.stringify(c.text)),
    td(c.n_tokens, "num"), td(c.finish_reason), td(num(c.reward, 3), "num"), td(num(c.advantage, 3), "num"),
    td(c.proof_bytes, "num"))), "no completion");
  const v = r.verdict;
  if (v) {
    facts(document.getElementById("verdict"), [
      ["decision", v.accepted ? "accepted" : "rejected"], ["full check", shown(v.full_check)],
      ["verifier", el("span", { class: "mono" }, v.verifier)], ["signed", when(v.signed_at)], ["reason", v.reason || "–"]]);
    fill(document.querySelector("#checks tbody"), v.checks.map(c => el("tr", { class: c.passed ? "pass" : "fail", "data-check": c.name },
      td(c.name, "mono"), el("td", {}, badge(c.passed ? "passed" : "failed")), el("td", { class: "reason" }, c.detail || ""),
      el("td", {}, c.stats === undefined ? el("span", { class: "muted" }, OPERATOR_ONLY) : statsList(c.stats)))),
      v.failed_checks ? "no check failed (which checks ran: " + OPERATOR_ONLY + ")" : "no check results");
  } else {
    facts(document.getElementById("verdict"), [["decision", "not decided yet"]]);
    fill(document.querySelector("#checks tbody"), [], "no verdict yet");
  }
  const l = r.lease || {};
  facts(document.getElementById("lease"), [
    ["lease", el("span", { class: "mono" }, l.lease_id)], ["versions allowed", "v" + l.min_policy_version + " – v" + l.max_policy_version],
    ["sampling", l.sampling ? "temperature " + l.sampling.temperature + ", max " + l.sampling.max_tokens + " tokens" : null],
    ["seeds", el("span", { class: "mono small" }, (l.seeds || []).join(", "))], ["EOS token", l.eos_token_id],
    ["issued", when(l.issued_at)], ["expires", when(l.expires_at)]]);
  document.getElementById("commands").textContent = (r.audit_commands || []).join("\n");
  document.body.dataset.loaded = "1";
}

renderMode(() => location.reload());
load();
