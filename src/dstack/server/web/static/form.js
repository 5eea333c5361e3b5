// The backend form: generated from the form description the server derives from each backend's
// config model, validated live against the cloud as it is filled (POST …/backends/check).
"use strict";
const dstackForm = (() => {
  const s = { values: {}, choices: {}, touched: new Set(), notes: [], timer: null, seq: 0, submitted: false };
  const $ = (id) => document.getElementById(id);
  const fid = (path) => "f-" + path.replace(/\./g, "-");

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    node.append(...children.filter(Boolean));
    return node;
  }

  function flatten(obj, prefix = "", out = {}) {
    for (const [k, v] of Object.entries(obj || {})) {
      const path = prefix + k;
      if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, path + ".", out);
      else out[path] = v;
    }
    return out;
  }

  function form() { return s.forms.find((f) => f.type === $("f-type").value); }

  function allFields(fields = form().fields) {
    const out = [];
    for (const f of fields) {
      out.push(f);
      if (f.kind === "group") for (const o of f.options) out.push(...allFields(o.fields));
    }
    return out;
  }

  function optionsOf(path) {
    const c = s.choices[path];
    return Array.isArray(c) ? c.map((o) => (typeof o === "object" ? o : { value: o, label: o })) : null;
  }

  function fieldNode(f) {
    const id = fid(f.path);
    const mark = f.required ? "(Required)" : "(Optional)";
    const help = f.description ? el("p", { class: "help", id: id + "-help", text: f.description }) : null;
    const error = el("p", { class: "error", id: id + "-error", role: "alert" });
    const describedBy = [help && id + "-help", id + "-error"].filter(Boolean).join(" ");
    const label = el("label", { for: id }, f.title + " ", el("span", { class: "mark", text: mark }));
    const value = s.values[f.path] ?? f.default ?? "";
    let input;
    if (f.kind === "fixed") return null;
    if (f.kind === "group") {
      const current = s.values[f.path + ".type"] ?? (f.default && f.default.type) ?? f.options[0].value;
      const radios = f.options.map((o) => el("label", { class: "radio" },
        el("input", { type: "radio", name: f.path + ".type", value: o.value, checked: o.value === current,
                      "data-path": f.path + ".type" }), " " + o.title));
      const chosen = f.options.find((o) => o.value === current);
      return el("fieldset", { class: "field", id }, el("legend", { text: f.title + " " + mark }), help, ...radios,
                ...chosen.fields.map(fieldNode), error);
    }
    const opts = f.kind === "select" ? f.options.map((o) => ({ value: o, label: (f.labels || {})[o] || o })) : optionsOf(f.path);
    if (f.kind === "multiselect") {
      if (opts) {
        const selected = new Set(s.values[f.path] ?? []);
        const boxes = opts.map((o) => el("label", { class: "check" }, el("input", {
          type: "checkbox", value: o.value, checked: selected.has(o.value), "data-path": f.path, "data-multi": "1" }),
          " " + o.label));
        const all = el("button", { type: "button", class: "link", "data-select-all": f.path, text: "Select all" });
        const none = el("button", { type: "button", class: "link", "data-select-none": f.path, text: "Select none" });
        return el("fieldset", { class: "field", id, "aria-describedby": describedBy },
                  el("legend", {}, f.title + " ", el("span", { class: "mark", text: mark })), help,
                  el("p", { class: "select-all" }, all, " · ", none), el("div", { class: "checks" }, ...boxes), error);
      }
      // Its choices come from the cloud once the fields above check out (e.g. Lambda's API key).
      input = el("input", { id, "data-path": f.path, "data-list": "1", value: (s.values[f.path] ?? f.default ?? []).join(", "),
                            "aria-describedby": describedBy, disabled: true,
                            placeholder: "choices appear once the fields above check out" });
    } else if (opts) {
      input = el("select", { id, "data-path": f.path, "aria-describedby": describedBy });
      const values = opts.map((o) => String(o.value));
      if (!values.includes(String(value))) {
        input.append(el("option", { value: value, text: value || (f.required ? "— choose —" : "— none (the default) —") }));
      }
      for (const o of opts) input.append(el("option", { value: o.value, text: o.label, selected: String(o.value) === String(value) }));
    } else {
      input = el("input", { id, "data-path": f.path, value, type: f.kind === "password" ? "password" : "text",
                            autocomplete: f.kind === "password" ? "off" : null, "aria-describedby": describedBy,
                            required: f.required });
      if (s.choices[f.path] === null && f.path.endsWith("bucket")) input.setAttribute("placeholder", "type the bucket name");
    }
    return el("div", { class: "field" }, label, help, input, error);
  }

  function render() {
    // Keep the focus across the rebuild (callers read the inputs into s.values first).
    const focused = document.activeElement && document.activeElement.id;
    const f = form();
    $("save").disabled = !f;
    if (!f) {  // no type chosen yet
      $("fields").replaceChildren();
      $("advanced-fields").replaceChildren();
      $("advanced").hidden = true;
      s.notes = [];
      renderNotes();
      $("form-status").textContent = "Choose the backend's type.";
      return;
    }
    const main = f.fields.filter((x) => !x.advanced).map(fieldNode).filter(Boolean);
    const advanced = f.fields.filter((x) => x.advanced).map(fieldNode).filter(Boolean);
    $("fields").replaceChildren(...main);
    $("advanced-fields").replaceChildren(...advanced);
    $("advanced").hidden = !advanced.length;
    renderNotes();
    showErrors(s.lastErrors || []);
    const again = focused && $(focused);
    if (again && again !== document.activeElement) again.focus();
  }

  function renderNotes() {
    const nodes = s.notes.map((n, i) => {
      const body = n.body ? el("pre", { class: "conf policy", id: "note-" + i, text: n.body }) : null;
      const copy = n.copy ? el("button", { type: "button", class: "secondary", "data-copy": "note-" + i, text: "Copy" }) : null;
      const link = n.link ? el("p", {}, el("a", { href: n.link, target: "_blank", rel: "noopener", text: n.link })) : null;
      return el("section", { class: "note" }, el("h2", { text: n.title }), el("p", { text: n.text }), link, body, copy);
    });
    $("notes").replaceChildren(...nodes);
  }

  function readInputs() {
    for (const input of $("backend-form").querySelectorAll("[data-path]")) {
      const path = input.dataset.path;
      if (input.dataset.multi) {
        if (!(path in s.pendingMulti)) s.pendingMulti[path] = [];
        if (input.checked) s.pendingMulti[path].push(input.value);
      } else if (input.type === "radio") {
        if (input.checked) s.values[path] = input.value;
      } else if (input.dataset.list) {
        s.values[path] = input.value.split(",").map((x) => x.trim()).filter(Boolean);
      } else {
        s.values[path] = input.value;
      }
    }
  }

  function collect() {
    s.pendingMulti = {};
    readInputs();
    Object.assign(s.values, s.pendingMulti);
    const config = { type: form().type };
    const paths = new Set(allFields().map((f) => f.path));
    for (const [path, value] of Object.entries(s.values)) {
      if (!paths.has(path) && !path.endsWith(".type")) continue;
      if (value === "" || value === null || value === undefined) continue;
      const parts = path.split(".");
      let node = config;
      for (const p of parts.slice(0, -1)) node = node[p] = node[p] || {};
      node[parts[parts.length - 1]] = value;
    }
    // Only the chosen option's fields of a group are sent.
    for (const f of form().fields.filter((x) => x.kind === "group")) {
      const chosen = config[f.path] && config[f.path].type;
      const option = f.options.find((o) => o.value === chosen);
      if (config[f.path] && option) {
        const keep = new Set(option.fields.map((x) => x.path.split(".").pop()).concat(["type"]));
        for (const k of Object.keys(config[f.path])) if (!keep.has(k)) delete config[f.path][k];
      }
    }
    return config;
  }

  function showErrors(errors) {
    s.lastErrors = errors;
    for (const node of document.querySelectorAll(".field .error, fieldset .error")) node.textContent = "";
    $("form-error").textContent = "";
    for (const e of errors) {
      const target = e.field && ($(fid(e.field) + "-error") || $(fid(e.field.split(".")[0]) + "-error"));
      // Shown once the field (or the group it is in) was touched; on an edit, at once (every
      // field was filled before); everything after Save.
      const filled = (v) => v !== undefined && v !== null && v !== "" && !(Array.isArray(v) && !v.length);
      const shown = s.submitted || s.existing || !e.field || filled(s.values[e.field]) || [...s.touched].some(
        (t) => t === e.field || t.startsWith(e.field + ".") || e.field.startsWith(t + "."));
      if (!shown) continue;
      dstack.setMessage(target || $("form-error"), e.message);
    }
  }

  async function check() {
    if (!form()) return;
    const seq = ++s.seq;
    $("form-status").textContent = "Checking…";
    try {
      const result = await dstack.api(`/api/projects/${encodeURIComponent(s.project)}/backends/check`,
                                      { method: "POST", body: JSON.stringify(collect()) });
      if (seq !== s.seq) return;  // a newer check is on its way
      collect();  // what was typed while the check ran
      const before = JSON.stringify(s.choices);
      s.choices = result.choices || {};
      s.notes = result.notes || [];
      for (const f of allFields()) {
        // Select every region by default, as recommended, until the user picks.
        if (f.kind === "multiselect" && Array.isArray(s.choices[f.path]) && !s.touched.has(f.path) && !s.values[f.path]?.length) {
          s.values[f.path] = s.choices[f.path].map((o) => (typeof o === "object" ? o.value : o));
        }
      }
      if (JSON.stringify(s.choices) !== before) render();
      else renderNotes();
      showErrors(result.errors || []);
      $("form-status").textContent = result.ok ? "All fields check out." : "";
    } catch (err) {
      $("form-status").textContent = `Could not check: ${err.message}`;
    }
  }

  function schedule() {
    clearTimeout(s.timer);
    s.timer = setTimeout(check, 400);
  }

  async function save(event) {
    event.preventDefault();
    s.submitted = true;
    $("save").disabled = true;
    $("form-status").textContent = "Saving (checking with the cloud first)…";
    try {
      await dstack.api(`/api/projects/${encodeURIComponent(s.project)}/backends`,
                       { method: s.existing ? "PUT" : "POST", body: JSON.stringify(collect()) });
      window.location.href = `/projects/${encodeURIComponent(s.project)}/settings?edit=1`;
    } catch (err) {
      $("form-status").textContent = "";
      showErrors([{ field: err.field || null, message: err.message }]);
    }
    $("save").disabled = false;
  }

  function init(opts) {
    Object.assign(s, opts);
    const select = $("f-type");
    // The user picks the type, as the seeds say: nothing is chosen for them.
    if (!s.existing) select.append(el("option", { value: "", text: "— choose —" }));
    for (const f of s.forms) {
      if (s.taken.includes(f.type)) continue;
      select.append(el("option", { value: f.type, text: f.title }));
    }
    if (s.existing) {
      s.values = flatten(s.existing);
      select.value = s.existing.type;
      select.disabled = true;
      $("form-title").textContent = `Edit the ${form().title} backend`;
    }
    select.addEventListener("change", () => { s.values = {}; s.choices = {}; s.touched.clear(); s.lastErrors = []; render(); check(); });
    const formNode = $("backend-form");
    formNode.addEventListener("input", (e) => {
      if (e.target.dataset.path) s.touched.add(e.target.dataset.path);
      if (e.target.type === "radio") { collect(); render(); }
      schedule();
    });
    formNode.addEventListener("change", (e) => { if (e.target.dataset.path) { s.touched.add(e.target.dataset.path); schedule(); } });
    formNode.addEventListener("submit", save);
    formNode.addEventListener("click", (e) => {
      const path = e.target.dataset && (e.target.dataset.selectAll || e.target.dataset.selectNone);
      if (!path) return;
      for (const box of formNode.querySelectorAll(`input[data-multi][data-path="${path}"]`)) box.checked = !!e.target.dataset.selectAll;
      s.touched.add(path);
      collect();
      schedule();
    });
    render();
    check();
  }

  return { init, state: s };
})();

if (document.body.dataset.page === "backend-form") {
  dstackForm.init(dstack.pageData());
}
