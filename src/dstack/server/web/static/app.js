// Small helpers for the server-rendered pages: they refresh data through the JSON API.
"use strict";
const dstack = (() => {
  async function api(path, options = {}) {
    const response = await fetch(path, {
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      ...options,
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
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
            cell(statusText(run)),
            cell(new Date(run.submitted_at).toLocaleString()),
          );
          return tr;
        });
        if (!rows.length) {
          const tr = document.createElement("tr");
          const td = cell("No runs yet. Submit one with `dstack apply`.");
          td.colSpan = 7;
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
        finished = ["done", "failed", "stopped", "terminated"].includes(run.status);
        if (stop) stop.hidden = finished;
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
  }

  return { api, runsPage, runPage };
})();
