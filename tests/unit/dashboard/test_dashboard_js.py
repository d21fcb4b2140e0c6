"""The dashboard's operator token in the page's fragment (`static/common.js`), run with node.

`/dashboard/#token=...` is how `swarmrl demo` hands the operator the token. It used to replace
whatever token the tab held, silently: any link (a chat message, a page the operator reads)
could swap the operator's token for one its author chose, or, being refused, drop the
operator's own; and a malformed `%` escape threw at load, so the page never ran. Now a
fragment token is taken when the tab holds none, replaces a different one only when the
operator confirms, is ignored (with a note by the sign-in control) when it is malformed or no
token at all, and never stays in the address bar.

The script runs in a bare `vm` context with the few browser objects it touches at load
(location, history, sessionStorage, window, document); skipped where node is missing. The
browser test (`tests/integration/test_dashboard_browser.py`, marker `browser`) runs the page
for real.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

COMMON_JS = Path(__file__).parents[3] / "coordinator" / "dashboard" / "static" / "common.js"
KEY = "swarmrl-operator-token"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

HARNESS = r"""
const fs = require("fs"), vm = require("vm");
const sc = JSON.parse(process.argv[3]);
const store = new Map(Object.entries(sc.stored || {}));
const out = {confirms: [], urls: [], reloads: 0, thrown: null};
const listeners = {};
const boxes = {};
function node(tag) {
  return {tag, attrs: {}, children: [], className: "", textContent: "", hidden: true,
          setAttribute(k, v) { this.attrs[k] = v; }, append(...c) { this.children.push(...c); },
          replaceChildren(...c) { this.children = c; }, addEventListener() {}};
}
const location = {hash: sc.hash, pathname: "/dashboard/", search: "?id=s1", reload() { out.reloads++; }};
const ctx = {
  location, console, Node: Object,
  history: {replaceState(state, title, url) { out.urls.push(url); location.hash = ""; }},
  sessionStorage: {getItem: k => (store.has(k) ? store.get(k) : null), setItem: (k, v) => store.set(k, String(v)),
                   removeItem: k => store.delete(k)},
  window: {addEventListener: (name, fn) => { listeners[name] = fn; },
           confirm: msg => { out.confirms.push(msg); return !!sc.confirm; }, prompt: () => null},
  document: {getElementById: id => (boxes[id] = boxes[id] || node(id)), createElement: node,
             createTextNode: t => ({text: t})},
};
vm.createContext(ctx);
try {
  vm.runInContext(fs.readFileSync(process.argv[2], "utf8"), ctx, {filename: "common.js"});
  if (sc.then_hash !== undefined) {
    location.hash = sc.then_hash;
    listeners.hashchange();
  }
  vm.runInContext("renderMode(() => {})", ctx);
} catch (e) {
  out.thrown = String(e);
}
out.token = store.has(sc.key) ? store.get(sc.key) : null;
out.hash = location.hash;
const flat = n => (n && typeof n === "object" ? (n.text || "") + (n.textContent || "") + (n.children || []).map(flat).join("") : String(n));
out.mode = boxes.mode ? flat(boxes.mode) : "";
console.log(JSON.stringify(out));
"""


def run_page(tmp_path, *, hash: str, stored: str | None = None, confirm: bool = False,
             then_hash: str | None = None) -> dict:
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)
    scenario = {"hash": hash, "stored": {KEY: stored} if stored is not None else {}, "confirm": confirm, "key": KEY}
    if then_hash is not None:
        scenario["then_hash"] = then_hash
    done = subprocess.run([NODE, str(harness), str(COMMON_JS), json.dumps(scenario)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_fragment_token_signs_in_a_tab_that_has_none(tmp_path):
    r = run_page(tmp_path, hash="#token=op%2Dtoken-123")
    assert r["thrown"] is None and r["token"] == "op-token-123"
    assert r["confirms"] == [] and r["urls"] == ["/dashboard/?id=s1"] and r["hash"] == ""  # gone from the address bar
    assert "operator view" in r["mode"]


def test_a_link_cannot_replace_the_operators_token_silently(tmp_path):
    r = run_page(tmp_path, hash="#token=attackers-token", stored="operators-token")
    assert r["thrown"] is None
    assert r["token"] == "operators-token"              # kept: the operator said no
    assert len(r["confirms"]) == 1                       # ... when asked
    assert r["urls"] and r["hash"] == ""                 # and the link's token left the address bar
    assert "not used" in r["mode"]


def test_the_operator_may_accept_a_links_token(tmp_path):
    r = run_page(tmp_path, hash="#token=new-token", stored="old-token", confirm=True)
    assert r["thrown"] is None and r["token"] == "new-token" and len(r["confirms"]) == 1


def test_the_same_token_again_asks_nothing(tmp_path):
    r = run_page(tmp_path, hash="#token=same-token", stored="same-token")
    assert r["thrown"] is None and r["token"] == "same-token" and r["confirms"] == []


def test_a_token_arriving_by_hashchange_is_asked_about_too(tmp_path):
    r = run_page(tmp_path, hash="", stored="operators-token", then_hash="#token=attackers-token")
    assert r["thrown"] is None and r["token"] == "operators-token" and len(r["confirms"]) == 1
    assert r["reloads"] == 0


@pytest.mark.parametrize("fragment", ["#token=%E0%A4%A", "#token=%", "#token=abc%zz", "#token=%0Aevil",
                                      "#token=a%20b", "#token=", "#token=" + "x" * 5000])
def test_a_malformed_fragment_is_ignored_with_a_note_and_the_page_runs(tmp_path, fragment):
    r = run_page(tmp_path, hash=fragment, stored="operators-token")
    assert r["thrown"] is None                           # the page's scripts go on
    assert r["token"] == "operators-token" and r["confirms"] == []
    assert r["hash"] == "" and "ignored" in r["mode"]
    fresh = run_page(tmp_path, hash=fragment)
    assert fresh["thrown"] is None and fresh["token"] is None and "public view" in fresh["mode"]
