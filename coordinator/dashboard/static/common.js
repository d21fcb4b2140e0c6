// Helpers shared by the dashboard pages: DOM building without innerHTML (all data is untrusted
// text from workers and relays), number formatting, JSON fetching, and the operator token.
//
// Without the operator token the coordinator answers the public views (no addresses, no
// undecided submission, failed checks by name only). The token is kept in sessionStorage (this
// tab only) and sent as "Authorization: Bearer <token>"; it arrives by the sign-in prompt or
// in the page's fragment (#token=..., never sent to the server and removed from the address bar).
//
// A fragment is anyone's link, so it signs in a tab that holds no token, but replaces the
// token a tab holds only when the operator confirms (a link must not swap the operator's token
// for its author's, nor get the operator's dropped when the coordinator refuses its own); a
// fragment that is not a token (a malformed % escape, control characters, too long) is
// ignored, with a note by the sign-in control, and the page runs on.
"use strict";

const API = "/v1/dashboard";
const TOKEN_KEY = "swarmrl-operator-token";
const TOKEN_SHAPE = /^[\x21-\x7e]{1,4096}$/;  // visible ASCII: what an Authorization header carries
let tokenNote = "";      // why a token (a link's, or one typed) was not used, shown by renderMode
let modeChanged = null;  // the page's onChange, to redraw the note after a hashchange

function tokenFromFragment() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (!m) return false;
  history.replaceState(null, "", location.pathname + location.search);  // out of the address bar first
  let given = null;
  try {
    given = decodeURIComponent(m[1]);
  } catch (e) { /* a malformed % escape: not a token */ }
  if (given === null || !TOKEN_SHAPE.test(given)) {
    tokenNote = "the link's #token is not a token (malformed); ignored";
    return false;
  }
  const held = operatorToken();
  if (held === given) return false;
  if (held && !window.confirm("This link carries an operator token other than the one this tab is signed in " +
                              "with. Use the link's token instead?")) {
    tokenNote = "the link's operator token was not used: this tab keeps its own";
    return false;
  }
  tokenNote = "";
  sessionStorage.setItem(TOKEN_KEY, given);
  return true;
}
tokenFromFragment();
window.addEventListener("hashchange", () => {
  if (tokenFromFragment()) location.reload();
  else if (tokenNote && modeChanged) renderMode(modeChanged);
});

function operatorToken() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function renderMode(onChange) {
  modeChanged = onChange;
  const box = document.getElementById("mode");
  if (!box) return;
  const token = operatorToken();
  const button = el("button", { type: "button", class: "link" }, token ? "sign out" : "operator sign-in");
  button.addEventListener("click", () => {
    if (token) sessionStorage.removeItem(TOKEN_KEY);
    else {
      const given = (window.prompt("operator token (the coordinator's dashboard.operator_token_file)") || "").trim();
      if (!given) return;
      if (!TOKEN_SHAPE.test(given)) {  // a header could not carry it: every request would fail
        tokenNote = "that is not a token (spaces or control characters, or too long); not used";
        renderMode(onChange);
        return;
      }
      tokenNote = "";
      sessionStorage.setItem(TOKEN_KEY, given);
    }
    renderMode(onChange);
    onChange();
  });
  const parts = [el("span", { class: "muted", "data-mode": token ? "operator" : "public" },
    token ? "operator view " : "public view "), button];
  if (tokenNote) parts.push(el("span", { class: "small bad", "data-note": "token" }, " " + tokenNote));
  box.replaceChildren(...parts);
}

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
  const token = operatorToken();
  const r = await fetch(path, { cache: "no-store", headers: token ? { Authorization: "Bearer " + token } : {} });
  if (r.status === 401 && token) {
    sessionStorage.removeItem(TOKEN_KEY);  // refused: fall back to the public view next time
    renderMode(() => location.reload());
  }
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
