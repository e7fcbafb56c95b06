// The streamlet dashboard: reads the job manager's REST API with the cluster token (taken from
// the page's #token=... fragment, which is never sent to the server, or typed into the form)
// and redraws jobs, compaction offload, checkpoints, savepoints and task managers every two
// seconds.
"use strict";

const REFRESH_MS = 2000;
let token = sessionStorage.getItem("streamlet-token");

function takeTokenFromFragment() {
  const match = /token=([^&]+)/.exec(location.hash);
  if (match) {
    token = decodeURIComponent(match[1]);
    sessionStorage.setItem("streamlet-token", token);
    history.replaceState(null, "", location.pathname);
  }
}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  if (response.status === 401) {
    throw new Error("unauthorized");
  }
  if (!response.ok) {
    throw new Error(`${path}: HTTP ${response.status}`);
  }
  return response.json();
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) {
    td.className = className;
  }
  return td;
}

function statusCell(status) {
  const td = document.createElement("td");
  const badge = document.createElement("span");
  badge.className = `status status-${status}`;
  badge.textContent = status;
  td.appendChild(badge);
  return td;
}

function fill(tableId, rows, emptyText) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(emptyText, "empty");
    td.colSpan = document.querySelectorAll(`#${tableId} th`).length;
    tr.appendChild(td);
    body.appendChild(tr);
    return;
  }
  for (const cells of rows) {
    const tr = document.createElement("tr");
    cells.forEach((c) => tr.appendChild(c));
    body.appendChild(tr);
  }
}

const number = (value) => cell((value ?? 0).toLocaleString("en"), "number");
const seconds = (value) => cell((value ?? 0).toFixed(2), "number");

async function refresh() {
  const [{ jobs }, { task_managers: managers }] = await Promise.all([
    api("/api/v1/jobs"),
    api("/api/v1/taskmanagers"),
  ]);
  const details = await Promise.all(jobs.map((job) => api(`/api/v1/jobs/${job.id}`)));
  const checkpoints = await Promise.all(
    jobs.map((job) => api(`/api/v1/jobs/${job.id}/checkpoints`)),
  );
  const savepoints = await Promise.all(
    jobs.map((job) => api(`/api/v1/jobs/${job.id}/savepoints`)),
  );
  const slots = managers.reduce((sum, m) => sum + m.slots, 0);
  const free = managers.reduce((sum, m) => sum + m.free_slots, 0);
  const running = jobs.filter((job) => job.status === "RUNNING").length;
  document.getElementById("summary").textContent =
    `${running} running of ${jobs.length} jobs · ${managers.length} task managers · ` +
    `${free} of ${slots} slots free`;

  fill("jobs", details.map((job) => [
    cell(job.id), cell(job.name), statusCell(job.status), number(job.parallelism),
    cell(job.task_managers.join(", ") || "–"), number(job.metrics.records_in),
    number(job.metrics.records_out), number(job.failovers), cell(job.endpoints.join(", ") || "–"),
  ]), "no jobs yet: streamlet submit JOB.py");

  fill("offload", details.map((job) => {
    const remote = job.metrics.compactions_remote ?? 0;
    const local = job.metrics.compactions_local ?? 0;
    const share = remote + local === 0 ? "–" : `${Math.round((100 * remote) / (remote + local))} %`;
    return [
      cell(job.name), number(remote), number(local), cell(share, "number"),
      seconds(job.metrics.compaction_cpu_seconds_remote),
      seconds(job.metrics.compaction_cpu_seconds_local),
    ];
  }), "no jobs");

  fill("checkpoints", checkpoints.map((c, i) => [
    cell(jobs[i].name),
    cell(c.latest ? String(c.latest.checkpoint_id) : "–", "number"),
    cell(c.latest ? new Date(c.latest.timestamp_ms).toLocaleTimeString("en-GB") : "–"),
    cell(c.checkpoint_ids.join(", ") || "–"),
  ]), "no jobs");

  fill("savepoints", savepoints.flatMap((s, i) => s.savepoints.map((savepoint) => [
    cell(jobs[i].name), cell(savepoint.path), cell(savepoint.format),
    cell(new Date(savepoint.timestamp_ms).toLocaleTimeString("en-GB")),
    cell(savepoint.stop ? "yes" : "no"),
  ])), "no savepoints yet: streamlet savepoint JOB_ID");

  fill("taskmanagers", managers.map((m) => [
    cell(m.id), cell(m.host), number(m.slots), number(m.free_slots),
    cell(`${m.seconds_since_heartbeat.toFixed(1)} s ago`),
  ]), "no task managers registered");
}

async function loop() {
  try {
    await refresh();
    document.getElementById("login").hidden = true;
    document.getElementById("content").hidden = false;
    setTimeout(loop, REFRESH_MS);
  } catch (error) {
    if (error.message === "unauthorized") {
      showLogin("the token was not accepted");
    } else {
      document.getElementById("summary").textContent = `cannot reach the job manager: ${error}`;
      setTimeout(loop, REFRESH_MS);
    }
  }
}

function showLogin(message) {
  document.getElementById("content").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
  document.getElementById("summary").textContent = "not signed in";
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  token = document.getElementById("token").value;
  sessionStorage.setItem("streamlet-token", token);
  loop();
});

takeTokenFromFragment();
if (token) {
  loop();
} else {
  showLogin();
}
