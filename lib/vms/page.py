"""The allocator's web page: admins see every VM live, users request and release theirs.

One self-contained page (no CDN: lab networks and this machine may have none).
It holds no data itself: it asks for a bearer token, keeps it in the tab's
sessionStorage and calls the JSON API with it; it follows ``/vms/events`` for
live changes. Everything shown is set with ``textContent``, so a hostile string
in any field is shown, never run.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>labpipe VMs</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }
  h1 { font-size: 1.3rem; margin: 0 0 1rem; }
  section { border: 1px solid #ddd; border-radius: 6px; padding: .8rem 1rem; margin-bottom: 1rem; }
  h2 { font-size: 1rem; margin: 0 0 .6rem; }
  label { margin-right: .8rem; }
  input, textarea { font: inherit; padding: .2rem .4rem; }
  button { font: inherit; padding: .25rem .8rem; cursor: pointer; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #eee; vertical-align: top; }
  .state { font-weight: 600; padding: 0 .4rem; border-radius: 4px; }
  .available { background: #d9f7d9; } .in_use { background: #d9e8ff; } .initializing { background: #fff3c4; }
  .failed { background: #ffd6d6; } .destroying, .destroyed { background: #eee; color: #666; }
  #result.ok { color: #0a6b0a; } #result.error { color: #b00020; }
  .muted { color: #777; }
</style>
</head>
<body>
<h1>labpipe VM allocation</h1>
<section>
  <h2>Token</h2>
  <input id="token" type="password" size="50" placeholder="bearer token (lpu_..., lpa_...)" autocomplete="off">
  <button id="use-token">Use token</button>
  <span id="whoami" class="muted">not signed in</span>
</section>
<section id="request-section">
  <h2>Request a VM</h2>
  <label>Email <input id="email" type="email" size="28"></label>
  <label>Min GPU memory (MB) <input id="min-gpu" type="number" min="0" value="0" style="width:7rem"></label>
  <label><input id="require-gpu" type="checkbox"> needs a GPU</label><br>
  <label>Command, one argument per line (optional)<br>
    <textarea id="command" rows="3" cols="50" placeholder="python&#10;train.py"></textarea></label><br>
  <button id="request">Request a VM</button>
  <div id="result" role="status"></div>
</section>
<section id="admin-section" hidden>
  <h2>Admin</h2>
  <label>Create <input id="create-count" type="number" min="1" max="500" value="1" style="width:5rem"> VMs</label>
  <button id="create">Create</button>
  <button id="destroy-failed">Destroy failed VMs</button>
  <span id="admin-result" class="muted"></span>
</section>
<section>
  <h2>VMs <span id="counts" class="muted"></span> <span id="live" class="muted">(not live)</span></h2>
  <table>
    <thead><tr><th>id</th><th>hostname</th><th>state</th><th>owner</th><th>address</th><th>GPU</th>
      <th>last heartbeat</th><th>reason</th><th></th></tr></thead>
    <tbody id="vms"></tbody>
  </table>
</section>
<script>
"use strict";
let me = null, streamAbort = null, reloadTimer = null;
const $ = (id) => document.getElementById(id);
const token = () => sessionStorage.getItem("labpipe-vms-token") || "";

async function api(method, path, body) {
  const options = { method, headers: { "Authorization": "Bearer " + token() } };
  if (body !== undefined) { options.headers["Content-Type"] = "application/json"; options.body = JSON.stringify(body); }
  const response = await fetch(path, options);
  let data = null;
  try { data = await response.json(); } catch (e) { data = { detail: response.statusText }; }
  return { status: response.status, data };
}

function problem(data) {
  if (data && data.fields) return data.detail.map((d) => d.field + ": " + d.problem).join("; ");
  return (data && (data.detail || data.error)) || "unknown error";
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  if (cls) {
    const span = document.createElement("span");
    span.className = cls; span.textContent = text; td.appendChild(span);
  } else td.textContent = text == null ? "" : String(text);
  row.appendChild(td);
  return td;
}

async function loadVms() {
  if (!me) return;
  const { status, data } = await api("GET", "/vms");
  if (status !== 200) { $("counts").textContent = problem(data); return; }
  const body = $("vms");
  body.replaceChildren();
  for (const vm of data.vms) {
    const tr = document.createElement("tr");
    tr.dataset.id = vm.id; tr.dataset.state = vm.state;
    cell(tr, vm.id); cell(tr, vm.hostname); cell(tr, vm.state, "state " + vm.state); cell(tr, vm.owner || "");
    cell(tr, vm.address || "");
    const gpu = vm.gpu_present ? (vm.gpu_name || "GPU") + (vm.gpu_healthy ? "" : " (unhealthy)") : "no GPU";
    cell(tr, gpu);
    cell(tr, vm.last_heartbeat ? new Date(vm.last_heartbeat).toLocaleTimeString() : "");
    cell(tr, vm.state_reason);
    const actions = cell(tr, "");
    if (vm.state === "in_use" && (me.role === "admin" || vm.owner === me.email)) {
      const button = document.createElement("button");
      button.textContent = "Release"; button.className = "release";
      button.onclick = async () => { await api("POST", "/vms/" + vm.id + "/release"); loadVms(); };
      actions.appendChild(button);
    }
    body.appendChild(tr);
  }
  const counts = Object.entries(data.counts || {}).filter(([, n]) => n);
  $("counts").textContent = counts.map(([s, n]) => n + " " + s).join(", ");
}

function scheduleReload() { clearTimeout(reloadTimer); reloadTimer = setTimeout(loadVms, 150); }

async function follow() {
  if (streamAbort) streamAbort.abort();
  streamAbort = new AbortController();
  try {
    const headers = { "Authorization": "Bearer " + token() };
    const response = await fetch("/vms/events", { headers, signal: streamAbort.signal });
    if (!response.ok) { $("live").textContent = "(not live: " + response.status + ")"; return; }
    $("live").textContent = "(live)";
    const reader = response.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\\n\\n")) >= 0) {
        const chunk = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        if (chunk.startsWith("data:")) scheduleReload();
      }
    }
  } catch (e) { if (e.name === "AbortError") return; }
  $("live").textContent = "(reconnecting)";
  setTimeout(follow, 2000);
}

async function signIn() {
  sessionStorage.setItem("labpipe-vms-token", $("token").value.trim());
  const { status, data } = await api("GET", "/whoami");
  if (status !== 200) { me = null; $("whoami").textContent = "token refused (" + status + ")"; return; }
  me = data;
  $("whoami").textContent = "signed in as " + data.role + (data.email ? " " + data.email : "");
  if (data.email && !$("email").value) $("email").value = data.email;
  $("admin-section").hidden = data.role !== "admin";
  await loadVms();
  follow();
}

async function requestVm() {
  const command = $("command").value.split("\\n").filter((line) => line.length > 0);
  const body = {
    email: $("email").value.trim(),
    min_gpu_memory_mb: Number($("min-gpu").value || 0),
    require_gpu: $("require-gpu").checked,
  };
  if (command.length) body.command = command;
  const { status, data } = await api("POST", "/vms/request", body);
  const result = $("result");
  if (status === 200) {
    const vm = data.vm;
    result.className = "ok";
    const verb = data.already_held ? "You already hold " : "Assigned ";
    result.textContent = verb + vm.hostname + " at " + (vm.address || "?") + " (VM " + vm.id + ")";
    result.dataset.hostname = vm.hostname;
  } else {
    result.className = "error";
    result.textContent = "Refused (" + status + "): " + problem(data);
    delete result.dataset.hostname;
  }
  loadVms();
}

async function admin(path, body) {
  const { status, data } = await api("POST", path, body);
  $("admin-result").textContent = status < 300 ? "started: " + JSON.stringify(data) : "refused: " + problem(data);
}

$("use-token").onclick = signIn;
$("request").onclick = requestVm;
$("create").onclick = () => admin("/admin/vms", { count: Number($("create-count").value) });
$("destroy-failed").onclick = () => admin("/admin/vms/destroy", { states: ["failed"] });
if (token()) { $("token").value = token(); signIn(); }
</script>
</body>
</html>
"""
