// Small helpers for the server-rendered pages: they refresh data through the JSON API.
"use strict";
const dstack = (() => {
  async function api(path, options = {}) {
    const response = await fetch(path, {
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      ...options,
    });
    const body = response.status === 204 ? {} : await response.json().catch(() => ({}));
    if (!response.ok) {
      const err = new Error((body.error && body.error.message) || response.statusText);
      err.field = body.error && body.error.field;
      err.status = response.status;
      throw err;
    }
    return body;
  }

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  function statusText(run) {
    let text = run.status;
    if (run.status === "failed" && run.exit_code !== null) text += ` (exit code ${run.exit_code})`;
    else if (run.reason && ["failed", "stopped", "terminated"].includes(run.status)) text += ` (${run.reason})`;
    return text;
  }

  // Price per hour times the time each submission ran.
  function cost(run) {
    let total = 0;
    for (const job of run.jobs) {
      if (!job.offer || !job.started_at) continue;
      const end = job.finished_at ? new Date(job.finished_at) : new Date();
      total += (job.offer.price * Math.max(0, end - new Date(job.started_at))) / 3600000;
    }
    return total;
  }

  async function refreshArtifacts(base, project, runName) {
    const list = document.getElementById("artifacts");
    if (!list) return;
    try {
      const artifacts = await api(`${base}/artifacts`);
      const items = artifacts.map((a) => {
        const li = document.createElement("li");
        const link = document.createElement("a");
        link.href = `${base}/artifacts/${a.path.split("/").map(encodeURIComponent).join("/")}`;
        link.textContent = a.path;
        li.append(link, ` (${a.size} bytes)`);
        return li;
      });
      if (!items.length) items.push(Object.assign(document.createElement("li"), { textContent: "None (yet)." }));
      list.replaceChildren(...items);
    } catch (err) {
      list.replaceChildren(Object.assign(document.createElement("li"), { textContent: err.message }));
    }
  }

  function runsPage(table) {
    const project = table.dataset.project;
    const tbody = table.querySelector("tbody");
    async function refresh() {
      try {
        const runs = await api(`/api/projects/${encodeURIComponent(project)}/runs?all=true&limit=200`);
        const rows = runs.map((run) => {
          const job = run.jobs[run.jobs.length - 1] || {};
          const offer = job.offer;
          const tr = document.createElement("tr");
          const name = document.createElement("td");
          const link = document.createElement("a");
          link.href = `/projects/${encodeURIComponent(project)}/runs/${encodeURIComponent(run.name)}`;
          link.textContent = run.name;
          name.appendChild(link);
          tr.append(
            name,
            cell(offer ? offer.backend : ""),
            cell(offer ? offer.instance_type : ""),
            cell(offer ? `${offer.resources.cpus}xCPU, ${Math.round(offer.resources.memory_gb)}GB` : ""),
            cell(offer ? `$${offer.price.toFixed(4)}/h` : ""),
            cell(offer ? `$${cost(run).toFixed(4)}` : ""),
            cell(statusText(run)),
            cell(new Date(run.submitted_at).toLocaleString()),
          );
          return tr;
        });
        if (!rows.length) {
          const tr = document.createElement("tr");
          const td = cell("No runs yet. Submit one with `dstack apply`.");
          td.colSpan = 8;
          tr.appendChild(td);
          rows.push(tr);
        }
        tbody.replaceChildren(...rows);
      } catch (err) {
        tbody.replaceChildren(cell(`Could not load runs: ${err.message}`));
      }
    }
    refresh();
    setInterval(refresh, 3000);
  }

  function notice(text, isError = false) {
    const node = document.getElementById("notice") || document.getElementById("users-error");
    if (node) { node.textContent = text; node.className = isError ? "error" : "help"; }
  }

  function settingsPage(project) {
    const base = `/api/projects/${encodeURIComponent(project)}`;
    const reload = () => window.location.reload();
    const fail = (err) => notice(err.message, true);
    document.addEventListener("click", async (e) => {
      const t = e.target;
      if (t.dataset.deleteBackend && confirm(`Delete the ${t.dataset.deleteBackend} backend?`)) {
        await api(`${base}/backends/${t.dataset.deleteBackend}`, { method: "DELETE" }).then(reload, fail);
      } else if (t.dataset.removeMember && confirm(`Remove ${t.dataset.removeMember}?`)) {
        await api(`${base}/members/${encodeURIComponent(t.dataset.removeMember)}`, { method: "DELETE" }).then(reload, fail);
      } else if (t.dataset.deleteSecret && confirm(`Delete the secret ${t.dataset.deleteSecret}?`)) {
        await api(`${base}/secrets/${encodeURIComponent(t.dataset.deleteSecret)}`, { method: "DELETE" }).then(reload, fail);
      }
    });
    document.addEventListener("change", async (e) => {
      if (e.target.dataset.member) {
        await api(`${base}/members`, { method: "PUT", body: JSON.stringify({ user: e.target.dataset.member, role: e.target.value }) })
          .then(() => notice(`${e.target.dataset.member} is now ${e.target.value}`), fail);
      }
    });
    const addMember = document.getElementById("add-member");
    if (addMember) addMember.addEventListener("submit", async (e) => {
      e.preventDefault();
      const data = Object.fromEntries(new FormData(addMember));
      await api(`${base}/members`, { method: "PUT", body: JSON.stringify(data) }).then(reload, fail);
    });
    const addSecret = document.getElementById("add-secret");
    if (addSecret) addSecret.addEventListener("submit", async (e) => {
      e.preventDefault();
      const data = Object.fromEntries(new FormData(addSecret));
      await api(`${base}/secrets/${encodeURIComponent(data.name)}`, { method: "PUT", body: JSON.stringify({ value: data.value }) })
        .then(reload, fail);
    });
  }

  function showToken(user) {
    document.getElementById("token-user").textContent = user.name;
    document.getElementById("token-value").textContent = user.token;
    document.getElementById("token-box").hidden = false;
  }

  function usersPage() {
    const form = document.getElementById("create-user");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const data = Object.fromEntries(new FormData(form));
      try { showToken(await api("/api/users", { method: "POST", body: JSON.stringify(data) })); notice(""); }
      catch (err) { notice(err.message, true); }
    });
    document.addEventListener("click", async (e) => {
      const name = e.target.dataset.rotate;
      if (name && confirm(`Replace the token of ${name}? The old one stops working.`)) {
        try { showToken(await api(`/api/users/${encodeURIComponent(name)}/token`, { method: "POST" })); }
        catch (err) { notice(err.message, true); }
      }
    });
  }

  // Copy buttons: data-copy names the element whose text is copied.
  document.addEventListener("click", async (e) => {
    const id = e.target.dataset && e.target.dataset.copy;
    if (!id) return;
    const text = document.getElementById(id).textContent;
    try { await navigator.clipboard.writeText(text); e.target.textContent = "Copied"; }
    catch (err) { e.target.textContent = "Select and copy"; }
  });

  function runPage(project, runName) {
    const base = `/api/projects/${encodeURIComponent(project)}/runs/${encodeURIComponent(runName)}`;
    const logs = document.getElementById("logs");
    const status = document.getElementById("status");
    const reason = document.getElementById("reason");
    const stop = document.getElementById("stop");
    let token = "";
    let finished = false;

    async function pollLogs() {
      try {
        const page = await api(`${base}/logs?next_token=${encodeURIComponent(token)}`);
        if (page.events.length) {
          // Follow the tail only if the reader is already at the bottom.
          const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 8;
          logs.appendChild(document.createTextNode(page.events.map((e) => e.message + "\n").join("")));
          if (atBottom) logs.scrollTop = logs.scrollHeight;
        }
        token = page.next_token;
        if (page.finished) return;
        setTimeout(pollLogs, page.events.length ? 100 : 1000);
      } catch (err) {
        setTimeout(pollLogs, 3000);
      }
    }

    async function pollRun() {
      try {
        const run = await api(base);
        status.textContent = statusText(run);
        status.className = `status status-${run.status}`;
        reason.textContent = run.reason || "";
        const wasFinished = finished;
        finished = ["done", "failed", "stopped", "terminated"].includes(run.status);
        if (stop) stop.hidden = finished;
        if (finished && !wasFinished) refreshArtifacts(base, project, runName);
      } catch (err) {
        reason.textContent = `Could not refresh: ${err.message}`;
      }
      if (!finished) setTimeout(pollRun, 1500);
    }

    if (stop) {
      stop.addEventListener("click", async () => {
        stop.disabled = true;
        try {
          await api(`${base}/stop`, { method: "POST", body: JSON.stringify({ abort: false }) });
          reason.textContent = "Stopping…";
        } catch (err) {
          reason.textContent = err.message;
        }
        stop.disabled = false;
      });
    }
    pollLogs();
    pollRun();
    refreshArtifacts(base, project, runName);
  }

  function pageData() {
    const node = document.getElementById("page-data");
    return node ? JSON.parse(node.textContent || "{}") : {};
  }

  // No inline scripts (the Content-Security-Policy forbids them): each page names itself and
  // carries its data as JSON.
  function boot() {
    const data = pageData();
    switch (document.body.dataset.page) {
      case "runs": runsPage(document.getElementById("runs")); break;
      case "run": runPage(data.project, data.run); break;
      case "settings": settingsPage(data.project); break;
      case "users": usersPage(); break;
    }
  }
  boot();

  return { api, pageData, runsPage, runPage, settingsPage, usersPage };
})();
