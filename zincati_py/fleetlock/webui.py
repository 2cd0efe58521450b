"""The lock server's web view (``GET /ui``): one static page, no framework, no build step.

It reads the admin API with ``fetch`` twice a second (groups, slots, holders with age, lease
left and target version, the queue, pause and halts, per-version rollout progress, recent
events) and offers pause/resume buttons. When auth is on, the admin token is asked for once
and kept in the tab's ``sessionStorage``; it is sent as a bearer token, never in a URL. The
layout is one column below 700 px (phone width).
"""

from __future__ import annotations

PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>FleetLock</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;padding:12px;background:#fafafa;color:#222}
h1{font-size:18px;margin:0 0 8px}h2{font-size:16px;margin:0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px;overflow-x:auto}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:2px 6px;
border-bottom:1px solid #eee;white-space:nowrap}.bad{color:#b00020}.ok{color:#1b5e20}
button{font:inherit;padding:4px 10px;margin:4px 4px 0 0}#err{color:#b00020}
@media (max-width:700px){.grid{grid-template-columns:1fr}body{padding:6px}}
</style></head><body>
<h1>FleetLock <small id="at"></small></h1><div id="err"></div>
<div class="grid" id="groups"></div>
<div class="card" style="margin-top:12px"><h2>Rollouts</h2><div id="rollouts"></div></div>
<div class="card" style="margin-top:12px"><h2>Recent events</h2><div id="events"></div></div>
<script>
"use strict";
const base = location.pathname.replace(/ui$/, "");
function esc(s){return String(s==null?"":s).replace(/[&<>"']/g,c=>"&#"+c.charCodeAt(0)+";")}
function dur(s){if(s==null)return "never";s=Math.max(0,Math.round(s));const m=Math.floor(s/60);
  return (m?m+"m":"")+(s%60)+"s"}
async function api(path, body){
  const headers = {};
  const token = sessionStorage.getItem("fleetlock-token");
  if (token) headers["Authorization"] = "Bearer " + token;
  const init = body ? {method:"POST", headers, body:JSON.stringify(body)} : {headers};
  const r = await fetch(base + path, init);
  if (r.status === 401 || r.status === 403) {
    const t = prompt("FleetLock admin token");
    if (t) { sessionStorage.setItem("fleetlock-token", t.trim()); return api(path, body); }
  }
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}
async function act(group, action){
  const body = {group, action};
  if (action === "pause") body.reason = "paused from the web view";
  await api("v1/admin/group", body); refresh();
}
function table(rows, cols){
  if (!rows.length) return "<p>none</p>";
  return "<table><tr>"+cols.map(c=>"<th>"+esc(c[0])+"</th>").join("")+"</tr>"+
    rows.map(r=>"<tr>"+cols.map(c=>"<td>"+c[1](r)+"</td>").join("")+"</tr>").join("")+"</table>";
}
function groupCard(g){
  const state = g.paused ? '<span class="bad">paused</span>' : '<span class="ok">open</span>';
  const halted = Object.keys(g.halted||{});
  return '<div class="card" data-group="'+esc(g.group)+'"><h2>'+esc(g.group)+"</h2>"+
    "<p>"+state+" &middot; slots "+esc(g.slots)+" &middot; holders <b class=holders>"+
    g.holders.length+"</b> &middot; queue "+g.queue.length+
    (g.cooldown_secs ? " &middot; cooldown "+esc(g.cooldown_secs)+"s" : "")+
    (g.hold ? " &middot; held at "+esc(g.hold) : "")+
    (halted.length ?
      ' &middot; <span class="bad">halted: '+halted.map(esc).join(", ")+"</span>" : "")+
    "</p>"+
    table(g.holders, [["holder", h=>esc(h.id)], ["held", h=>dur(h.age_seconds)],
      ["lease left", h=>dur(h.expires_in_seconds)], ["to", h=>esc(h.to_version)]])+
    (g.queue.length ? "<p>queue: "+g.queue.slice(0,10).map(w=>esc(w.id)).join(", ")+
      (g.queue.length>10?" &hellip;":"")+"</p>" : "")+
    '<button class="pause" data-action="pause">Pause</button>'+
    '<button class="resume" data-action="resume">Resume</button></div>';
}
document.addEventListener("click", e => {
  const button = e.target.closest("button[data-action]");
  if (button) act(button.closest("[data-group]").dataset.group, button.dataset.action);
});
async function refresh(){
  try {
    const [groups, rollouts, history] = await Promise.all([
      api("v1/groups"), api("v1/rollouts"), api("v1/history?limit=20")]);
    document.getElementById("groups").innerHTML = groups.groups.map(groupCard).join("");
    document.getElementById("rollouts").innerHTML = table(rollouts.rollouts, [
      ["group", r=>esc(r.group)], ["version", r=>esc(r.version)], ["done", r=>r.done],
      ["holding", r=>r.holding], ["failed", r=>r.failed], ["remaining", r=>r.remaining],
      ["rate/h", r=>esc(r.rate_per_hour)], ["ETA", r=>r.eta_seconds==null?"-":dur(r.eta_seconds)],
      ["state", r=>r.halted?'<span class="bad">halted</span>':"rolling"]]);
    document.getElementById("events").innerHTML = table(history.events.slice().reverse(), [
      ["at", e=>esc(new Date(e.at*1000).toLocaleTimeString())], ["group", e=>esc(e.group)],
      ["event", e=>esc(e.kind)], ["node", e=>esc(e.node)], ["to", e=>esc(e.to_version)]]);
    document.getElementById("at").textContent = new Date().toLocaleTimeString();
    document.getElementById("err").textContent = "";
  } catch (e) { document.getElementById("err").textContent = String(e); }
}
let busy = false;
async function tick(){
  if (busy) return;
  busy = true;
  try { await refresh(); } finally { busy = false; }
}
tick(); setInterval(tick, 500);
</script></body></html>
"""
