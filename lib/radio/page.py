# ruff: noqa: E501 - the page is HTML and JavaScript in one string
"""The products page: one HTML shell (no data in it) that reads the API with the bearer token.

The token comes from the address's fragment (``/#token=...``, never sent to the server), else from this
browser's session storage, else a form; it is kept in session storage only.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>labpipe radio products</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .4em} h2{font-size:1.05em;margin:1.2em 0 .3em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.82em} td,th{padding:2px 8px;border-bottom:1px solid #e4e4e4;text-align:left}
th{background:#eee} .num{text-align:right;font-variant-numeric:tabular-nums} .bad{color:#b00020;font-weight:600}
.ok{color:#1b5e20} .grid{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start} .card{background:#fff;border:1px solid #ddd;padding:6px}
.card img{max-width:560px;display:block} #login{display:none} #status{color:#666;font-size:.85em}
</style></head><body>
<h1>labpipe radio products</h1><div id="status">loading</div>
<form id="login"><label>API token <input id="token" type="password" size="48"></label> <button>open</button></form>
<h2>Variability candidates</h2><div id="candidates" class="grid"></div>
<h2>Master sources</h2><div id="sources"></div>
<h2>Images</h2><div id="images"></div>
<h2>Image QA</h2><div id="qa" class="grid"></div>
<h2>Mosaics</h2><div id="mosaics"></div>
<h2>Calibration registry</h2><div id="calibration"></div>
<h2>Directory statistics</h2><div id="stats"></div>
<script>
const hash = new URLSearchParams(location.hash.slice(1));
if (hash.get("token")) { sessionStorage.setItem("labpipe-token", hash.get("token")); history.replaceState(null, "", "/"); }
let token = sessionStorage.getItem("labpipe-token");
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const num = (v, d = 3) => (v === null || v === undefined) ? "" : Number(v).toFixed(d);
const mjy = (jy, d = 2) => (jy === null || jy === undefined) ? "" : num(jy * 1e3, d);  // blank, not 0.00, when unknown
const SHOWN = 10;
const mb = (b) => (b / 1048576).toFixed(1);
async function api(path) {
  const r = await fetch(path, {headers: {Authorization: "Bearer " + token}});
  if (r.status === 401) { sessionStorage.removeItem("labpipe-token"); $("login").style.display = "block";
    throw new Error("token refused"); }
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r;
}
async function img(path, alt) {
  const blob = await (await api(path)).blob();
  const el = document.createElement("img"); el.src = URL.createObjectURL(blob); el.alt = alt; return el;
}
function table(rows, cols) {
  if (!rows.length) return "<p>none</p>";
  let h = "<table><tr>" + cols.map(c => "<th>" + esc(c[0]) + "</th>").join("") + "</tr>";
  for (const r of rows) h += "<tr>" + cols.map(c => { const v = c[1](r);
    return "<td" + (typeof v === "number" ? " class=num" : "") + ">" + (c[2] ? v : esc(v)) + "</td>"; }).join("") + "</tr>";
  return h + "</table>";
}
async function load() {
  const [cands, sources, images, qa, mosaics, cal, stats] = await Promise.all(
    ["/api/candidates", "/api/sources", "/api/images", "/api/qa", "/api/mosaics", "/api/calibration", "/api/stats"]
      .map(p => api(p).then(r => r.json())));
  const rel = (p) => p.startsWith(stats.root + "/") ? p.slice(stats.root.length + 1) : p;
  const more = (rows) => rows.length > SHOWN ? "<p>" + (rows.length - SHOWN) + " older not shown (the API lists them)</p>" : "";
  const flagged = [...cands.ese_candidate.map(c => [c, "ESE candidate"]),
                   ...cands.variable.filter(c => !c.ese_candidate).map(c => [c, "variable"])];
  $("candidates").innerHTML = flagged.length ? "" : "<p>none</p>";
  for (const [c, what] of flagged) {
    const card = document.createElement("div"); card.className = "card";
    card.innerHTML = "<b>source " + c.source_id + "</b>: " + what + ", V " + num(c.v_index) + ", eta " + num(c.eta, 1) +
      (c.ese_candidate ? ", dip " + num(c.ese_depth * 100, 0) + "% MJD " + num(c.ese_start_mjd, 1) + "-" + num(c.ese_end_mjd, 1) : "");
    card.appendChild(await img("/api/sources/" + c.source_id + "/lightcurve.png", "light curve " + c.source_id));
    $("candidates").appendChild(card);
  }
  $("sources").innerHTML = table(sources, [["id", r => r.source_id], ["RA", r => num(r.ra_deg, 4)],
    ["Dec", r => num(r.dec_deg, 4)], ["detections", r => r.n_detections], ["reference", r => r.ref_name],
    ["mean mJy", r => mjy(r.mean_flux_jy)], ["V", r => num(r.v_index)], ["eta", r => num(r.eta, 2)],
    ["flag", r => r.ese_candidate ? "<span class=bad>ESE</span>" : r.is_variable ? "<span class=bad>variable</span>" : "", true]]);
  $("images").innerHTML = table(images.slice(0, SHOWN), [["group", r => r.group_id], ["date", r => r.obs_date],
    ["RA", r => num(r.detail && r.detail.ra_deg, 3)], ["Dec", r => num(r.detail && r.detail.dec_deg, 3)],
    ["MB", r => mb(r.size_bytes)], ["file", r => rel(r.path)]]) + more(images);
  const metrics = qa.filter(r => r.subtype === "metrics");
  const pngs = qa.filter(r => r.subtype === "png").slice(0, 2);
  $("qa").innerHTML = table(metrics, [["group", r => r.group_id], ["rms mJy", r => mjy(r.detail && r.detail.rms_jy)],
    ["dyn. range", r => num(r.detail && r.detail.dynamic_range, 0)], ["sources", r => r.detail && r.detail.n_sources],
    ["QA", r => r.detail && r.detail.passed ? "<span class=ok>passed</span>" : "<span class=bad>failed</span>", true]]);
  for (const p of pngs) { const card = document.createElement("div"); card.className = "card";
    card.appendChild(await img("/api/products/" + p.product_id + "/file", "QA " + p.group_id)); $("qa").appendChild(card); }
  $("mosaics").innerHTML = table(mosaics.slice(0, SHOWN), [["date", r => r.obs_date], ["Dec", r => num(r.detail && r.detail.dec_deg, 2)],
    ["images", r => r.detail && r.detail.n_images], ["MB", r => mb(r.size_bytes)], ["file", r => rel(r.path)]]) + more(mosaics);
  $("calibration").innerHTML = table(cal, [["table", r => r.table_name], ["kind", r => r.kind], ["cadence", r => r.cadence],
    ["status", r => r.status === "active" ? "<span class=ok>active</span>" : "<span class=bad>" + esc(r.status) + "</span>", true],
    ["valid MJD", r => num(r.valid_start_mjd, 3) + "-" + num(r.valid_end_mjd, 3)], ["SNR", r => num(r.median_snr, 1)],
    ["flagged", r => num(r.flagged_fraction, 3)]]);
  $("stats").innerHTML = table(stats.directories, [["directory", r => r.directory], ["files", r => r.files],
    ["MB", r => mb(r.bytes)], ["oldest", r => r.oldest], ["newest", r => r.newest],
    ["growth MB/day", r => mb(r.growth_bytes_per_day)]]);
  $("status").textContent = "updated " + new Date().toISOString().slice(0, 19) + "Z; radio tree " + stats.root;
  document.body.dataset.loaded = "yes";
}
$("login").addEventListener("submit", (e) => { e.preventDefault(); token = $("token").value;
  sessionStorage.setItem("labpipe-token", token); $("login").style.display = "none"; load().catch(err => $("status").textContent = err); });
if (token) load().catch(err => $("status").textContent = String(err)); else { $("login").style.display = "block"; $("status").textContent = "token needed"; }
</script></body></html>
"""
