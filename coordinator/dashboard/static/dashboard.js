// The live dashboard: polls the coordinator's read-only JSON every REFRESH_MS and redraws.
"use strict";

const REFRESH_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";

function renderOverview(o) {
  document.getElementById("run-id").textContent = o.run_id;
  document.getElementById("card-version").textContent = o.current_version === null ? "none yet" : "v" + o.current_version;
  const w = o.workers || {};
  document.getElementById("card-workers").textContent = (w.active || 0) + " / " + (w.banned || 0);
  document.getElementById("card-buffer").textContent = num(o.buffer.depth, 0);
  document.getElementById("card-queue").textContent = num(o.verification_queue, 0);
  const s = o.submissions || {};
  document.getElementById("card-verdicts").textContent = num(s.accepted || 0, 0) + " / " + num(s.rejected || 0, 0);
  document.getElementById("card-stale").textContent = num(o.buffer.dropped_stale, 0);
  const waste = o.waste || {};
  const card = document.getElementById("card-waste");
  card.textContent = pct(waste.unused_share);
  card.title = Object.entries(waste.causes || {}).filter(([, c]) => c.groups)
    .map(([k, c]) => k + ": " + c.groups + " groups, " + num(c.worker_s, 0) + " worker-s").join("\n");
}

function renderWorkers(rows) {
  const body = document.querySelector("#workers tbody");
  fill(body, rows.map(w => el("tr", { "data-worker": w.worker_id, class: w.status },
    el("td", { class: "mono", title: w.worker_id + (w.ban_reason ? "\n" + w.ban_reason : "") }, shortId(w.worker_id)),
    el("td", {}, badge(w.status)),
    td(num(w.tokens_per_s, 1), "num"), td(num(w.reported_tokens_per_s, 1), "num"),
    td(pct(w.check_rate), "num"), td(w.accepted, "num"), td(w.rejected, "num"), td(w.queued, "num"),
    td(w.full_checked, "num"), td(w.active_leases, "num"),
    td(w.policy_version === null ? null : "v" + w.policy_version), td(ago(w.last_seen_s_ago)))), "no worker has joined yet");
}

function renderVersions(data, now) {
  const total = data.relays.length;
  const body = document.querySelector("#versions tbody");
  fill(body, data.versions.map(v => {
    const share = v.broadcast === null ? null : v.broadcast;
    const bar = el("div", { class: "bar", title: v.relays_complete.length + " of " + total + " relays hold it complete" +
      (v.relays_in_progress.length ? ", " + v.relays_in_progress.length + " receiving" : "") },
      el("div", { class: "fill", style: "width:" + Math.round(100 * (share || 0)) + "%" }));
    return el("tr", { "data-version": v.version },
      td("v" + v.version, "mono"), td(v.step, "num"), td(ago(now - v.announced_at)), td(bytes(v.total_bytes), "num"),
      td(v.shards, "num"),
      el("td", {}, bar, el("span", { class: "small muted" }, " " + v.relays_complete.length + "/" + total +
        (v.relays_in_progress.length ? " (+" + v.relays_in_progress.length + " in flight)" : ""))),
      td(v.submissions, "num"), td(v.accepted, "num"), td(v.archived_checkpoint ? "yes" : "no"));
  }), "no policy version announced yet");
  const rbody = document.querySelector("#relays tbody");
  fill(rbody, data.relays.map(r => el("tr", { "data-relay": r.url },
    td(r.url, "mono"), td(r.reachable ? "yes" : "no", r.reachable ? "" : "bad"),
    td(r.latest_complete === null ? null : "v" + r.latest_complete),
    td(r.in_progress.length ? r.in_progress.map(v => "v" + v).join(", ") : "–"),
    td(num(r.metrics.shards_verified, 0), "num"), td(bytes(r.metrics.bytes_served), "num"),
    td(r.error || "", "small muted"))), "the coordinator advertises no relay");
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

const SERIES = [
  { key: "mean_reward", label: "mean reward (all submissions)", cls: "reward" },
  { key: "mean_reward_accepted", label: "mean reward (accepted)", cls: "reward-accepted" },
  { key: "greedy_accuracy", label: "held-out accuracy (greedy)", cls: "accuracy" },
  { key: "sampled_accuracy", label: "held-out accuracy (sampled)", cls: "accuracy-sampled" },
];

function renderCurve(points) {
  const box = document.getElementById("curve");
  const W = 760, H = 260, L = 44, R = 16, T = 12, B = 34;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "training curve" });
  if (!points.length) {
    box.replaceChildren(el("p", { class: "muted" }, "no policy version yet"));
    return;
  }
  const vmin = points[0].version, vmax = points[points.length - 1].version;
  const x = v => L + (vmax === vmin ? (W - L - R) / 2 : (v - vmin) / (vmax - vmin) * (W - L - R));
  const y = f => T + (1 - Math.max(0, Math.min(1, f))) * (H - T - B);
  for (const f of [0, 0.25, 0.5, 0.75, 1]) {
    chart.append(svg("line", { x1: L, x2: W - R, y1: y(f), y2: y(f), class: "grid" }));
    const t = svg("text", { x: L - 6, y: y(f) + 4, class: "tick", "text-anchor": "end" });
    t.textContent = f.toFixed(2);
    chart.append(t);
  }
  const step = Math.max(1, Math.ceil((vmax - vmin) / 10));
  for (let v = vmin; v <= vmax; v += step) {
    const t = svg("text", { x: x(v), y: H - B + 16, class: "tick", "text-anchor": "middle" });
    t.textContent = "v" + v;
    chart.append(t);
  }
  const xl = svg("text", { x: (W + L) / 2, y: H - 4, class: "tick", "text-anchor": "middle" });
  xl.textContent = "policy version";
  chart.append(xl);
  const legend = el("div", { class: "legend" });
  for (const s of SERIES) {
    const pts = points.filter(p => p[s.key] !== null && p[s.key] !== undefined);
    if (!pts.length) continue;
    if (pts.length > 1) {
      chart.append(svg("path", { class: "series " + s.cls, "data-series": s.key,
        d: pts.map((p, i) => (i ? "L" : "M") + x(p.version).toFixed(1) + "," + y(p[s.key]).toFixed(1)).join(" ") }));
    }
    for (const p of pts) {
      const c = svg("circle", { class: "point " + s.cls, "data-series": s.key, cx: x(p.version), cy: y(p[s.key]), r: 3 });
      const tip = svg("title");
      tip.textContent = s.label + " at v" + p.version + ": " + Number(p[s.key]).toFixed(3);
      c.append(tip);
      chart.append(c);
    }
    legend.append(el("span", { class: "key " + s.cls }, s.label));
  }
  box.replaceChildren(chart, legend);
}

function renderRejections(rows) {
  const body = document.querySelector("#rejections tbody");
  fill(body, rows.map(r => el("tr", { "data-submission": r.submission_id },
    td(when(r.decided_at)), el("td", { class: "mono", title: r.worker_id }, shortId(r.worker_id)),
    td("v" + r.policy_version), td(r.failed_checks.join(", ") || "–"),
    el("td", { class: "reason", title: r.reason }, r.reason),
    el("td", {}, el("a", { class: "audit-link", href: r.audit_url, title: r.audit_command }, "audit →")))),
    "no rejection so far");
}

async function refresh() {
  try {
    const [o, w, v, c, r] = await Promise.all([
      getJSON(API + "/overview"), getJSON(API + "/workers"), getJSON(API + "/versions"),
      getJSON(API + "/curve"), getJSON(API + "/rejections")]);
    renderOverview(o);
    renderWorkers(w);
    renderVersions(v, o.time);
    renderCurve(c);
    renderRejections(r);
    showError("");
    document.getElementById("live").className = "dot live";
    document.getElementById("updated").textContent = "live · updated " + new Date().toLocaleTimeString();
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  } catch (e) {
    document.getElementById("live").className = "dot down";
    showError("cannot reach the coordinator: " + e.message);
  }
}

renderMode(refresh);
refresh();
setInterval(refresh, REFRESH_MS);
