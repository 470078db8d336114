// The manager's web console: plain DOM and fetch against the REST API (/api/v1), signed in by
// the HttpOnly session cookie. Every value shown goes through textContent, never innerHTML.
"use strict";

const $ = (id) => document.getElementById(id);
let me = null; // {id, name, role} from the session token's claims
let watching = null;

async function api(method, path, body) {
  const opts = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch("/api/v1" + path, opts);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!r.ok) {
    const msg = data && data.message ? data.message : (typeof data === "string" && data) || r.statusText;
    const e = new Error(msg);
    e.status = r.status;
    throw e;
  }
  return data;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? "" : String(c);
    tr.appendChild(td);
  }
  return tr;
}

function show(page) {
  for (const s of document.querySelectorAll(".page")) s.hidden = s.id !== "page-" + page;
  $("nav").hidden = page === "signin";
}

function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "===".slice((part.length + 3) % 4)));
  } catch (_) { return null; }
}

async function route() {
  const page = (location.hash || "#clusters").slice(1);
  if (!me) {
    const saved = sessionStorage.getItem("me");
    if (saved) me = JSON.parse(saved);
  }
  if (!me) { show("signin"); return; }
  $("who").textContent = me.name + " (" + me.role + ")";
  try {
    if (page === "jobs") { show("jobs"); await loadJobs(); }
    else if (page === "tokens") { show("tokens"); await loadTokens(); }
    else if (page === "users") { show("users"); await loadUsers(); }
    else { show("clusters"); await loadClusters(); }
  } catch (e) {
    if (e.status === 401) { me = null; sessionStorage.removeItem("me"); show("signin"); }
    else throw e;
  }
}

async function signin(ev) {
  ev.preventDefault();
  $("signin-error").textContent = "";
  try {
    const r = await api("POST", "/users/signin", { name: $("name").value, password: $("password").value });
    const c = claims(r.token);
    me = { id: c.id, name: c.name, role: c.role };
    sessionStorage.setItem("me", JSON.stringify(me));
    $("password").value = "";
    if (!location.hash || location.hash === "#signin") location.hash = "#clusters";
    await route();
  } catch (e) {
    $("signin-error").textContent = e.message;
  }
}

async function signout() {
  try { await api("POST", "/users/signout"); } catch (_) { /* the cookie is cleared anyway */ }
  me = null;
  sessionStorage.removeItem("me");
  show("signin");
}

async function loadClusters() {
  const box = $("clusters");
  const clusters = await api("GET", "/scheduler-clusters?per_page=100");
  const schedulers = await api("GET", "/schedulers?per_page=1000");
  const seedPeers = await api("GET", "/seed-peers?per_page=1000");
  box.replaceChildren();
  for (const c of clusters) {
    const sec = el("section");
    sec.className = "cluster";
    sec.id = "cluster-" + c.id;
    sec.appendChild(el("h3", c.name + (c.is_default ? " (default)" : "") + " — id " + c.id));
    const cfg = c.config || {};
    sec.appendChild(el("p", "candidate_parent_limit " + (cfg.candidate_parent_limit ?? "-") +
      ", filter_parent_limit " + (cfg.filter_parent_limit ?? "-") +
      ", peer load_limit " + ((c.client_config || {}).load_limit ?? "-")));
    const t = document.createElement("table");
    t.appendChild(row(["Kind", "Hostname", "IP", "Port", "State"]));
    for (const s of schedulers.filter((s) => s.scheduler_cluster_id === c.id)) {
      t.appendChild(row(["scheduler", s.hostname, s.ip, s.port, el("span", s.state, s.state)]));
    }
    const spcs = (c.seed_peer_clusters || []).map((x) => x.id);
    for (const p of seedPeers.filter((p) => spcs.includes(p.seed_peer_cluster_id))) {
      t.appendChild(row(["seed peer", p.hostname, p.ip, p.port, el("span", p.state, p.state)]));
    }
    sec.appendChild(t);
    box.appendChild(sec);
  }
}

async function loadJobs() {
  const jobs = await api("GET", "/jobs?per_page=20");
  const body = $("jobs");
  body.replaceChildren();
  for (const j of jobs) {
    const url = j.args && (j.args.url || (j.args.urls || []).join(" ") || j.args.task_id);
    body.appendChild(row([j.id, j.type, el("span", j.state), j.created_at, url]));
  }
}

async function createJob(ev) {
  ev.preventDefault();
  $("job-error").textContent = "";
  const type = $("job-type").value;
  const args = { type, scope: $("job-scope").value };
  if (type === "image") args.url = $("job-url").value; else args.urls = $("job-url").value.split(/\s+/).filter(Boolean);
  if ($("job-username").value) { args.username = $("job-username").value; args.password = $("job-password").value; }
  try {
    const j = await api("POST", "/jobs", { type: "preheat", args });
    watch(j.id);
  } catch (e) {
    $("job-error").textContent = e.message;
  }
}

function watch(id) {
  if (watching) clearInterval(watching);
  $("job-id").textContent = id;
  const tick = async () => {
    try {
      const j = await api("GET", "/jobs/" + id);
      $("job-state").textContent = j.state;
      $("job-result").textContent = JSON.stringify(j.result, null, 2);
      if (j.state !== "PENDING") { clearInterval(watching); watching = null; await loadJobs(); }
    } catch (e) {
      $("job-error").textContent = e.message;
    }
  };
  watching = setInterval(tick, 1000);
  tick();
}

async function loadTokens() {
  const list = await api("GET", "/personal-access-tokens?per_page=100");
  const body = $("tokens");
  body.replaceChildren();
  for (const t of list) {
    const b = el("button", "Revoke");
    b.type = "button";
    b.disabled = t.state !== "active";
    b.dataset.token = t.id;
    b.addEventListener("click", async () => {
      await api("PATCH", "/personal-access-tokens/" + t.id, { state: "inactive" });
      await loadTokens();
    });
    body.appendChild(row([t.name, (t.scopes || []).join(", "), t.state, t.expired_at, b]));
  }
}

async function createToken(ev) {
  ev.preventDefault();
  $("token-error").textContent = "";
  const scopes = [];
  if ($("token-job").checked) scopes.push("job");
  if ($("token-cluster").checked) scopes.push("cluster");
  const days = Number($("token-days").value || 365);
  const expires = new Date(Date.now() + days * 86400 * 1000).toISOString().replace(/\.\d+Z$/, "Z");
  try {
    const t = await api("POST", "/personal-access-tokens", { name: $("token-name").value, scopes, expired_at: expires, user_id: me.id });
    $("token-value").textContent = t.token;
    $("token-new").hidden = false;
    await loadTokens();
  } catch (e) {
    $("token-error").textContent = e.message;
  }
}

async function loadUsers() {
  const list = await api("GET", "/users");
  const body = $("users");
  body.replaceChildren();
  for (const u of list) body.appendChild(row([u.id, u.name, u.role, u.state]));
  $("user-form").hidden = me.role !== "root";
}

async function createUser(ev) {
  ev.preventDefault();
  $("user-error").textContent = "";
  try {
    await api("POST", "/users/signup", { name: $("user-name").value, password: $("user-password").value });
    $("user-password").value = "";
    await loadUsers();
  } catch (e) {
    $("user-error").textContent = e.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", signin);
  $("signout").addEventListener("click", signout);
  $("job-form").addEventListener("submit", createJob);
  $("token-form").addEventListener("submit", createToken);
  $("user-form").addEventListener("submit", createUser);
  window.addEventListener("hashchange", () => { route().catch((e) => console.error(e)); });
  setInterval(() => {
    if (me && !$("page-clusters").hidden) loadClusters().catch(() => {});
  }, 2000);
  route().catch((e) => console.error(e));
});
