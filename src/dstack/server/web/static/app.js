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

  function cell(text, title) {
    const td = document.createElement("td");
    td.textContent = text;
    if (title) td.title = title;
    return td;
  }

  // A message with `code` in backticks, as text and <code> nodes (never as HTML).
  function setMessage(node, text) {
    const parts = String(text || "").split("`");
    node.replaceChildren(...parts.map((part, i) => (i % 2 && i < parts.length - 1)
      ? Object.assign(document.createElement("code"), { textContent: part })
      : document.createTextNode(i % 2 ? "`" + part : part)));
  }

  const FINISHED = ["done", "failed", "stopped", "terminated"];

  // The reason beside the status word: why it ended (or what it waits for), once.
  function reasonText(run) {
    if (run.status === "failed" && run.exit_code !== null && run.exit_code !== undefined) {
      return run.reason && run.reason !== `exit code ${run.exit_code}` ? `exit code ${run.exit_code}: ${run.reason}`
        : `exit code ${run.exit_code}`;
    }
    return run.reason || "";
  }

  function oneLine(text, width = 80) {
    const line = String(text || "").replace(/\s+/g, " ").trim();
    return line.length <= width ? line : line.slice(0, width - 1).trimEnd() + "…";
  }

  // One date format everywhere: relative in lists ("3 min ago"), the exact local time on hover.
  function exact(iso) {
    const d = new Date(iso);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function ago(iso) {
    const seconds = Math.max(0, Math.round((Date.now() - new Date(iso)) / 1000));
    if (seconds < 60) return `${seconds} sec ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return exact(iso).slice(0, 16);
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    seconds = Math.floor(seconds);
    if (seconds < 60) return `${seconds}s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${seconds % 60}s`;
    return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
  }

  function runSeconds(run) {
    const job = run.jobs[run.jobs.length - 1];
    if (!job || !job.started_at) return null;
    const end = job.finished_at ? new Date(job.finished_at) : new Date();
    return Math.max(0, (end - new Date(job.started_at)) / 1000);
  }

  function resourcesText(resources) {
    const parts = [`${resources.cpus}xCPU`, `${Math.round(resources.memory_gb)}GB`];
    if (resources.gpus && resources.gpus.length) {
      parts.push(`${resources.gpus.length}x${resources.gpus[0].name} (${Math.round(resources.gpus[0].memory_gb)}GB)`);
    }
    if (resources.disk_gb) parts.push(`${Math.round(resources.disk_gb)}GB disk`);
    return parts.join(", ");
  }

  function badge(status) {
    return Object.assign(document.createElement("span"), { className: `status status-${status}`, textContent: status });
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
    const canStop = table.dataset.canStop === "true";
    const tbody = table.querySelector("tbody");
    const filters = document.getElementById("run-filters");
    const params = new URLSearchParams(window.location.search);
    for (const el of filters.elements) if (params.has(el.name)) el.value = params.get(el.name);
    const known = { user: new Set(), backend: new Set() };

    function addOptions(select, values) {
      for (const value of values) {
        if (known[select.name].has(value)) continue;
        known[select.name].add(value);
        select.appendChild(Object.assign(document.createElement("option"), { value, textContent: value }));
      }
    }

    function row(run) {
      const job = run.jobs[run.jobs.length - 1] || {};
      const offer = job.offer;
      const tr = document.createElement("tr");
      const name = document.createElement("td");
      const link = document.createElement("a");
      link.href = `/projects/${encodeURIComponent(project)}/runs/${encodeURIComponent(run.name)}`;
      link.textContent = run.name;
      name.appendChild(link);
      if (run.service) {  // a service: its replicas and traffic under its name
        const svc = run.service;
        const about = Object.assign(document.createElement("div"), { className: "help service-line",
          textContent: `service · ${svc.ready}/${svc.desired} ready · ${svc.rps} req/s` });
        name.appendChild(about);
      }
      const status = document.createElement("td");
      status.appendChild(badge(run.status));
      const reason = reasonText(run);
      const why = cell(oneLine(reason), reason.length > 80 ? reason : "");
      why.className = "reason";
      const submitted = cell(ago(run.submitted_at), exact(run.submitted_at));
      const resources = cell(offer ? resourcesText(offer.resources) : "");
      resources.className = "resources";
      const actions = document.createElement("td");
      if (canStop && !FINISHED.includes(run.status) && run.status !== "terminating") {
        const stop = Object.assign(document.createElement("button"), {
          type: "button", className: "link danger-text", textContent: "Stop" });
        stop.dataset.stopRun = run.name;
        actions.appendChild(stop);
      }
      tr.append(name, cell(run.user), cell(offer ? `${offer.backend} · ${offer.region}` : ""),
        cell(offer ? offer.instance_type : ""), resources,
        cell(offer ? `$${offer.price.toFixed(4)}/h` : ""), cell(offer ? `$${cost(run).toFixed(4)}` : ""),
        status, why, submitted, cell(duration(runSeconds(run))),
        cell(run.exit_code === null || run.exit_code === undefined ? "" : String(run.exit_code)), actions);
      return tr;
    }

    async function refresh() {
      const query = new URLSearchParams({ limit: "200", all: filters.elements.show.value === "all" ? "true" : "false" });
      if (filters.elements.user.value) query.set("user", filters.elements.user.value);
      if (filters.elements.backend.value) query.set("backend", filters.elements.backend.value);
      try {
        const runs = await api(`/api/projects/${encodeURIComponent(project)}/runs?${query}`);
        addOptions(filters.elements.user, runs.map((r) => r.user));
        addOptions(filters.elements.backend, runs.flatMap((r) => r.jobs.filter((j) => j.offer).map((j) => j.offer.backend)));
        const rows = runs.map(row);
        if (!rows.length) {
          const tr = document.createElement("tr");
          const td = cell("");
          setMessage(td, "No runs here yet. Submit one with `dstack apply`.");
          td.colSpan = 13;
          tr.appendChild(td);
          rows.push(tr);
        }
        // Only the rows change: the page keeps its scroll position and the filters their values.
        tbody.replaceChildren(...rows);
      } catch (err) {
        const tr = document.createElement("tr");
        const td = cell(`Could not load runs: ${err.message}`);
        td.colSpan = 13;
        tr.appendChild(td);
        tbody.replaceChildren(tr);
      }
    }

    filters.addEventListener("change", () => {
      const query = new URLSearchParams();
      for (const el of filters.elements) if (el.name && el.value && !(el.name === "show" && el.value === "active")) query.set(el.name, el.value);
      history.replaceState(null, "", query.toString() ? `?${query}` : window.location.pathname);
      refresh();
    });
    table.addEventListener("click", async (e) => {
      const name = e.target.dataset && e.target.dataset.stopRun;
      if (!name || !confirm(`Stop ${name}?`)) return;
      e.target.disabled = true;
      try {
        await api(`/api/projects/${encodeURIComponent(project)}/runs/${encodeURIComponent(name)}/stop`,
          { method: "POST", body: JSON.stringify({ abort: false }) });
      } catch (err) {
        notice(err.message, true);
      }
      refresh();
    });
    refresh();
    setInterval(refresh, 3000);
  }

  function notice(text, isError = false) {
    const node = document.getElementById("notice") || document.getElementById("users-error");
    if (node) { setMessage(node, text); node.className = isError ? "error" : "help"; }
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
      try {
        const user = await api("/api/users", { method: "POST", body: JSON.stringify(data) });
        showToken(user);
        notice("");
        // The new user joins the table at once (no reload: the token stays on the screen).
        const tr = document.createElement("tr");
        const actions = document.createElement("td");
        const rotate = Object.assign(document.createElement("button"), { type: "button", className: "link", textContent: "New token" });
        rotate.dataset.rotate = user.name;
        actions.appendChild(rotate);
        tr.append(cell(user.name), cell(user.global_role || data.global_role),
          cell(user.created_at ? exact(user.created_at).slice(0, 10) : ""), actions);
        document.querySelector("#users tbody").appendChild(tr);
        form.reset();
      } catch (err) { notice(err.message, true); }
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

    // The log is windowed: every line is kept, only the lines in view (and a margin) are in the
    // page, under a spacer as tall as all of them, so a million lines scroll as smoothly as ten.
    // Lines do not wrap (each is one fixed-height row); the whole log downloads as a file.
    const lines = [];
    const spacer = logs.querySelector(".logs-spacer");
    const view = logs.querySelector(".logs-window");
    const lineHeight = parseFloat(getComputedStyle(view).lineHeight) || 19;
    let pending = false;

    function renderWindow() {
      pending = false;
      const first = Math.max(0, Math.floor(logs.scrollTop / lineHeight) - 50);
      const count = Math.ceil(logs.clientHeight / lineHeight) + 100;
      spacer.style.height = `${lines.length * lineHeight}px`;
      view.style.top = `${first * lineHeight}px`;
      view.textContent = lines.slice(first, first + count).join("\n");
      logs.dataset.lines = String(lines.length);
    }
    logs.addEventListener("scroll", () => {
      if (!pending) { pending = true; requestAnimationFrame(renderWindow); }
    });
    const download = document.getElementById("logs-download");
    if (download) download.addEventListener("click", () => {
      const url = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/plain" }));
      const a = Object.assign(document.createElement("a"), { href: url, download: `${runName}.log` });
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    });

    // A multi-node run: one node's logs at a time (the master's first).
    const nodeSelect = document.getElementById("node");
    let node = nodeSelect ? nodeSelect.value : "0";
    let generation = 0;
    if (nodeSelect) nodeSelect.addEventListener("change", () => {
      node = nodeSelect.value;
      generation += 1;
      lines.length = 0;
      token = "";
      logs.classList.remove("empty");
      document.getElementById("logs-empty").hidden = true;
      if (download) download.hidden = false;
      renderWindow();
      pollLogs();
    });

    async function pollLogs() {
      const mine = generation;
      try {
        const page = await api(`${base}/logs?job=${encodeURIComponent(node)}&next_token=${encodeURIComponent(token)}`);
        if (mine !== generation) return;  // another node was chosen meanwhile
        if (page.events.length) {
          // Follow the tail only if the reader is already at the bottom.
          const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - lineHeight;
          for (const e of page.events) lines.push(e.message);
          spacer.style.height = `${lines.length * lineHeight}px`;
          if (atBottom) logs.scrollTop = logs.scrollHeight;
          renderWindow();
        }
        token = page.next_token;
        if (page.finished) {
          if (!lines.length) {  // a finished job without a line: say so instead of an empty pane
            logs.classList.add("empty");
            document.getElementById("logs-empty").hidden = false;
            if (download) download.hidden = true;
          }
          return;
        }
        // More already stored: fetch it at once; new lines: soon; nothing new: in a second.
        setTimeout(() => { if (mine === generation) pollLogs(); }, page.more ? 0 : page.events.length ? 100 : 1000);
      } catch (err) {
        setTimeout(() => { if (mine === generation) pollLogs(); }, 3000);
      }
    }

    function renderService(svc) {
      const ready = document.getElementById("service-replicas");
      if (ready) ready.textContent = `${svc.ready} ready of ${svc.desired}`;
      const rps = document.getElementById("service-rps");
      if (rps) rps.textContent = `${svc.rps} per second (last minute)`;
      const body = document.querySelector("#replicas tbody");
      if (!body) return;
      const rows = svc.replicas.map((r) => {
        const tr = document.createElement("tr");
        tr.append(cell(String(r.replica)), cell(r.job), cell(String(r.deployment)), cell(r.status), cell(r.ready ? "yes" : "no"));
        return tr;
      });
      if (!rows.length) {
        const tr = document.createElement("tr");
        const td = cell("None (scaled to zero: the first request starts one).");
        td.colSpan = 5;
        tr.appendChild(td);
        rows.push(tr);
      }
      body.replaceChildren(...rows);
    }

    async function pollRun() {
      try {
        const run = await api(base);
        status.textContent = run.status;
        status.className = `status status-${run.status}`;
        setMessage(reason, reasonText(run));
        const wasFinished = finished;
        finished = FINISHED.includes(run.status);
        if (stop) stop.hidden = finished || run.status === "terminating";
        const durationNode = document.getElementById("duration");
        if (durationNode) durationNode.textContent = duration(runSeconds(run)) || "—";
        const costNode = document.getElementById("cost");
        if (costNode) costNode.textContent = run.jobs.some((j) => j.offer) ? `$${cost(run).toFixed(4)}` : "—";
        if (finished && !wasFinished) refreshArtifacts(base, project, runName);
        if (run.service) renderService(run.service);
      } catch (err) {
        setMessage(reason, `Could not refresh: ${err.message}`);
      }
      if (!finished) setTimeout(pollRun, 1500);
    }

    async function pollMetrics() {
      const node = document.getElementById("metrics");
      if (!node) return;
      try {
        const metrics = await api(`${base}/metrics`);
        const sample = metrics.samples && metrics.samples[metrics.samples.length - 1];
        if (sample) {
          const parts = [];
          if (sample.cpu_percent !== null && sample.cpu_percent !== undefined) parts.push(`CPU ${Math.round(sample.cpu_percent)}%`);
          if (sample.memory_used_mb) {
            parts.push(`memory ${(sample.memory_used_mb / 1024).toFixed(1)} of ${((sample.memory_total_mb || 0) / 1024).toFixed(1)} GB`);
          }
          (sample.gpus || []).forEach((gpu, i) => parts.push(`GPU ${i}: ${Math.round(gpu.util ?? 0)}%`));
          node.textContent = `${parts.join(" · ")} (sampled ${ago(new Date(sample.t * 1000).toISOString())})`;
        }
      } catch (err) {
        // No metrics for this run (not started, or gone): the placeholder stays.
      }
      if (!finished) setTimeout(pollMetrics, 5000);
    }

    if (stop) {
      stop.addEventListener("click", async () => {
        if (!confirm(`Stop ${runName}?`)) return;
        stop.disabled = true;
        try {
          await api(`${base}/stop`, { method: "POST", body: JSON.stringify({ abort: false }) });
          setMessage(reason, "Stopping…");
          stop.hidden = true;
        } catch (err) {
          setMessage(reason, err.message);
        }
        stop.disabled = false;
      });
    }
    pollLogs();
    pollRun();
    pollMetrics();
    refreshArtifacts(base, project, runName);
  }

  // A page listing named resources (fleets, volumes) with a Delete button per row: confirmed, then
  // the API's DELETE; their state changes in the background, so a quiet page refreshes itself.
  function resourcesPage(table, kind, question) {
    const project = table.dataset.project;
    const error = document.getElementById(`${kind}s-error`);
    const key = `delete${kind[0].toUpperCase()}${kind.slice(1)}`;
    table.addEventListener("click", async (e) => {
      const name = e.target.dataset && e.target.dataset[key];
      if (!name || !confirm(question(name))) return;
      try {
        await api(`/api/projects/${encodeURIComponent(project)}/${kind}s/${encodeURIComponent(name)}`, { method: "DELETE" });
        location.reload();
      } catch (err) {
        setMessage(error, err.message);
      }
    });
    setInterval(() => { if (!document.hidden && !error.textContent) location.reload(); }, 10000);
  }

  function fleetsPage(table) {
    resourcesPage(table, "fleet", (name) => `Delete the fleet ${name} and terminate its instances?`);
  }

  function volumesPage(table) {
    resourcesPage(table, "volume", (name) => `Delete the volume ${name} and its data?`);
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
      case "fleets": fleetsPage(document.getElementById("fleets")); break;
      case "volumes": volumesPage(document.getElementById("volumes")); break;
    }
  }
  boot();

  return { api, pageData, setMessage, runsPage, runPage, settingsPage, usersPage, fleetsPage, volumesPage };
})();
