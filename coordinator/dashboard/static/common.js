// Helpers shared by the dashboard pages: DOM building without innerHTML (all data is untrusted
// text from workers and relays), number formatting, and JSON fetching.
"use strict";

const API = "/v1/dashboard";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function td(value, cls) { return el("td", { class: cls }, value === null || value === undefined ? "–" : value); }

function fill(tbody, rows, empty) {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "muted", colspan: 20 }, empty))]));
}

function shortId(id) { return id && id.length > 16 ? id.slice(0, 10) + "…" + id.slice(-4) : id; }

function num(x, digits) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return Number(x).toLocaleString(undefined, { maximumFractionDigits: digits === undefined ? 2 : digits });
}

function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(x < 0.1 && x > 0 ? 1 : 0) + "%"; }

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return Math.round(seconds) + " s ago";
  if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
  return (seconds / 3600).toFixed(1) + " h ago";
}

function when(unix) { return unix ? new Date(unix * 1000).toLocaleTimeString() : "–"; }

function badge(status) { return el("span", { class: "badge " + status }, status); }

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(path + ": " + r.status + " " + detail);
  }
  return r.json();
}

function showError(message) {
  const box = document.getElementById("error");
  if (!message) { box.hidden = true; return; }
  box.hidden = false;
  box.textContent = message;
}
