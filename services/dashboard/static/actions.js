// What a person does from the dashboard: cancel or clone a task, drain or remove a host, submit a
// task file. Each is a call to the JSON API with the bearer token, asked once and kept for this
// browser session (sessionStorage), never in a cookie or on disk. Copy buttons too.
(() => {
  "use strict";
  const TOKEN_KEY = "autotune.token";
  const $ = (sel) => document.querySelector(sel);

  function toast(message, kind = "ok") {
    const el = $("#toast");
    if (!el) return;
    el.textContent = message;
    el.className = `show ${kind}`;
    el.dataset.kind = kind;
    clearTimeout(el._timer);
    el._timer = setTimeout(() => (el.className = ""), 12000);
  }

  // the token: undefined until asked; "" means "send none" (an API without a token)
  function askToken() {
    const dialog = $("#token-dialog");
    const input = $("#token-input");
    input.value = sessionStorage.getItem(TOKEN_KEY) || "";
    return new Promise((resolve) => {
      const finish = (value) => {
        dialog.close();
        $("#token-ok").onclick = $("#token-cancel").onclick = $("#token-forget").onclick = null;
        resolve(value);
      };
      $("#token-ok").onclick = (ev) => {
        ev.preventDefault();
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        finish(input.value.trim());
      };
      $("#token-cancel").onclick = () => finish(null);
      $("#token-forget").onclick = () => {
        sessionStorage.removeItem(TOKEN_KEY);
        finish(null);
        toast("the API token is forgotten");
      };
      dialog.showModal();
      input.focus();
    });
  }

  async function token() {
    const have = sessionStorage.getItem(TOKEN_KEY);
    return have !== null ? have : askToken();
  }

  // a call to the JSON API; resolves to {ok, status, body} and shows what the API said when refused
  async function api(method, url, body, contentType = "application/json") {
    const t = await token();
    if (t === null) return { ok: false, status: 0, body: { error: "not sent: no token given" } };
    const headers = { "Content-Type": contentType };
    if (t) headers.Authorization = `Bearer ${t}`;
    const resp = await fetch(url, { method, headers, body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body) });
    let data = {};
    try {
      data = await resp.json();
    } catch {
      data = { error: `HTTP ${resp.status}` };
    }
    if (resp.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY); // wrong or missing: ask again next time
      toast(`refused (401): ${data.error || "missing or wrong token"}`, "error");
    }
    return { ok: resp.ok, status: resp.status, body: data };
  }

  const refused = (r, what) => {
    if (r.status === 401 || r.status === 0) return;
    toast(`${what} refused (${r.status}): ${r.body.error || ""}${r.body.path ? ` at ${r.body.path}` : ""}`, "error");
  };

  // FIELD=VALUE lines (autotune clone --set) → nested overrides; values read as JSON where they parse
  function overrides(text) {
    const out = {};
    for (const raw of text.split("\n")) {
      const line = raw.trim();
      if (!line) continue;
      const eq = line.indexOf("=");
      if (eq < 1) throw new Error(`\`${line}\` is not FIELD=VALUE, e.g. optimization.max_iterations=20`);
      const path = line.slice(0, eq).trim().split(".");
      let value = line.slice(eq + 1).trim();
      try {
        value = JSON.parse(value);
      } catch {
        /* a plain string */
      }
      let node = out;
      path.slice(0, -1).forEach((p) => (node = node[p] = typeof node[p] === "object" && node[p] ? node[p] : {}));
      node[path[path.length - 1]] = value;
    }
    return out;
  }

  const actions = {
    async cancel(btn) {
      const task = btn.dataset.task;
      const r = await api("POST", `/api/tasks/${encodeURIComponent(task)}/cancel`, { reason: "cancelled from the dashboard" });
      if (r.ok) toast(`cancel requested for ${task}: its running engines are being stopped`);
      else refused(r, "cancel");
    },
    clone(btn) {
      const dialog = $("#clone-dialog");
      const form = $("#clone-form");
      form.onsubmit = async (ev) => {
        ev.preventDefault();
        let body;
        try {
          body = { overrides: overrides(form.overrides.value), simulate: form.simulate.checked };
        } catch (err) {
          toast(err.message, "error");
          return;
        }
        if (form.task_name.value.trim()) body.task_name = form.task_name.value.trim();
        dialog.close();
        const r = await api("POST", `/api/tasks/${encodeURIComponent(btn.dataset.task)}/clone`, body);
        if (r.ok) location.href = `/tasks/${encodeURIComponent(r.body.id)}`;
        else refused(r, "clone");
      };
      form.querySelector("[data-close]").onclick = () => dialog.close();
      dialog.showModal();
    },
    async drain(btn) {
      const r = await api("POST", `/api/hosts/${encodeURIComponent(btn.dataset.host)}/drain`);
      if (r.ok) toast(`drain requested for ${btn.dataset.host}: it takes no new experiments`);
      else refused(r, "drain");
    },
    async remove(btn) {
      if (!confirm(`Remove ${btn.dataset.host} from the fleet? It takes no new experiments (running ones finish).`)) return;
      const r = await api("DELETE", `/api/hosts/${encodeURIComponent(btn.dataset.host)}`);
      if (r.ok) toast(`${btn.dataset.host} removed from the fleet`);
      else refused(r, "remove");
    },
  };

  async function copy(btn) {
    const text = document.querySelector(btn.dataset.copy)?.textContent || "";
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // no clipboard permission (an insecure origin, a locked-down browser): select it for Ctrl-C
      const range = document.createRange();
      range.selectNodeContents(document.querySelector(btn.dataset.copy));
      const sel = getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      toast("selected: press Ctrl-C to copy");
      return;
    }
    toast("copied");
  }

  document.addEventListener("click", (ev) => {
    const btn = ev.target.closest("button[data-action], button[data-copy]");
    if (!btn) return;
    if (btn.dataset.copy) copy(btn);
    else actions[btn.dataset.action]?.(btn);
  });

  // --- submit ----------------------------------------------------------------------------------------------

  function setupSubmit() {
    const form = $("#submit-form");
    if (!form) return;
    $("#task-file").addEventListener("change", async (ev) => {
      const file = ev.target.files[0];
      if (!file) return;
      $("#task-text").value = await file.text();
      $("#task-source").value = file.name;
    });
    $("#task-text").addEventListener("input", () => {
      if ($("#task-file").value) return;
      $("#task-source").value = "task file";
    });
    $("#submit-button").addEventListener("click", async () => {
      // checked by the server exactly as `autotune submit` checks it, then sent to the API
      const check = await fetch("/submit/check", { method: "POST", body: new URLSearchParams(new FormData(form)) });
      const target = $("#validation");
      target.innerHTML = await check.text();
      if (!target.querySelector('[data-valid="true"]')) return;
      const simulate = $("#task-simulate").checked;
      const r = await api("POST", `/api/tasks?simulate=${simulate}`, $("#task-text").value, "application/yaml");
      if (r.ok) {
        location.href = `/tasks/${encodeURIComponent(r.body.id)}`;
        return;
      }
      refused(r, "submit");
      if (r.status && r.status !== 401) {
        const where = r.body.line ? `${$("#task-source").value}:${r.body.line}: ` : "";
        target.innerHTML = `<div class="invalid" data-valid="false"><p class="error-message"><code></code></p></div>`;
        target.querySelector("code").textContent = `autotune: ${where}${r.body.path ? r.body.path + ": " : ""}${r.body.error}`;
      }
    });
  }

  window.addEventListener("DOMContentLoaded", () => {
    setupSubmit();
    $("#token-button")?.addEventListener("click", () => askToken());
  });
  window.AutotuneActions = { api, toast };
})();
