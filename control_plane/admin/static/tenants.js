/* Tenants list: create (API key shown once), deactivate/reactivate, delete (confirmed), live states. */
(function () {
  "use strict";
  const A = window.Admin;
  const table = document.getElementById("tenants-table");
  const rowOf = (id) => table.querySelector(`tr[data-tenant-id="${CSS.escape(id)}"]`);
  A.wireDialogs();

  // --- create ---
  const newDialog = document.getElementById("new-tenant-dialog");
  const newForm = document.getElementById("new-tenant-form");
  const keyDialog = document.getElementById("api-key-dialog");
  document.getElementById("new-tenant-button").addEventListener("click", () => {
    newForm.reset();
    A.clearErrors(newForm);
    newDialog.showModal();
  });
  newForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    A.clearErrors(newForm);
    const name = newForm.elements.name.value.trim();
    if (!name) {
      A.showError(newForm, { field: "name", message: "Give the tenant a name." });
      return;
    }
    const submit = document.getElementById("create-tenant-submit");
    submit.disabled = true;
    try {
      const tenant = await A.api("POST", "/api/tenants", { name, sandbox: newForm.elements.sandbox.checked });
      newDialog.close();
      document.getElementById("api-key-tenant").textContent = tenant.name;
      document.getElementById("api-key-value").value = tenant.api_key;
      document.getElementById("api-key-open").href = "/admin/tenants/" + encodeURIComponent(tenant.id);
      keyDialog.showModal();
    } catch (err) {
      A.showError(newForm, err);
    } finally {
      submit.disabled = false;
    }
  });
  document.getElementById("copy-api-key").addEventListener("click", async (ev) => {
    const input = document.getElementById("api-key-value");
    try {
      await navigator.clipboard.writeText(input.value);
    } catch (_) {
      input.select(); // no clipboard permission (plain http): leave it selected for Ctrl+C
      document.execCommand && document.execCommand("copy");
    }
    ev.target.textContent = "Copied";
    A.toast("API key copied");
  });
  // The key is gone for good once the dialog closes: reload so the new tenant shows in the list.
  keyDialog.addEventListener("close", () => {
    document.getElementById("api-key-value").value = "";
    window.location.reload();
  });

  // --- deactivate / delete ---
  const delDialog = document.getElementById("delete-dialog");
  const delForm = document.getElementById("delete-form");
  let deleting = null;
  table.addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button[data-action]");
    if (!btn) return;
    const row = btn.closest("tr");
    const id = row.dataset.tenantId;
    if (btn.dataset.action === "toggle-active") {
      const active = btn.dataset.active !== "true";
      btn.disabled = true;
      try {
        await A.api("PATCH", "/api/tenants/" + id, { is_active: active });
        btn.dataset.active = String(active);
        btn.textContent = active ? "Deactivate" : "Reactivate";
        row.classList.toggle("inactive", !active);
        A.toast(`${row.dataset.tenantName} ${active ? "reactivated" : "deactivated"}`);
      } catch (err) {
        A.toast(err.message, true);
      } finally {
        btn.disabled = false;
      }
    } else if (btn.dataset.action === "delete") {
      deleting = row;
      A.clearErrors(delForm);
      document.getElementById("delete-tenant-name").textContent = row.dataset.tenantName;
      delDialog.showModal();
    }
  });
  delForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!deleting) return;
    const confirmBtn = document.getElementById("confirm-delete");
    confirmBtn.disabled = true;
    try {
      await A.api("DELETE", "/api/tenants/" + deleting.dataset.tenantId);
      A.toast(`${deleting.dataset.tenantName} deleted`);
      deleting.remove();
      deleting = null;
      delDialog.close();
    } catch (err) {
      A.showError(delForm, err);
    } finally {
      confirmBtn.disabled = false;
    }
  });

  // --- live session facts ---
  function paint(row, facts) {
    const state = row.querySelector('[data-field="state"]');
    state.dataset.state = facts.state;
    state.textContent = facts.state + (facts.state === "failed" && facts.reason ? ` (${facts.reason})` : "");
    state.title = facts.detail || ""; // why it failed, in the session's words, on hover
    row.querySelector('[data-field="number"]').textContent = facts.ownNumber ? A.formatPhone(facts.ownNumber) : "—";
    row.querySelector('[data-field="restarts"]').textContent = facts.restarts === null ? "—" : facts.restarts;
    row.querySelector('[data-field="memory"]').textContent = A.formatBytes(facts.memory);
  }
  async function refresh(row) {
    try {
      paint(row, A.sessionFacts(await A.api("GET", `/api/tenants/${row.dataset.tenantId}/session`)));
    } catch (err) {
      if (err.status !== 404) row.querySelector('[data-field="state"]').title = err.message;
    }
  }
  const rows = () => Array.from(table.querySelectorAll("tr[data-tenant-id]"));
  const refreshAll = () => rows().slice(0, 100).forEach(refresh);
  A.connectEvents({
    auth: () => ({}),
    onConnect: refreshAll,
    onEvent: (env) => {
      if (env.type !== "session.state" && env.type !== "session.qr") return;
      const row = rowOf(env.tenant_id);
      if (!row) return;
      if (env.type === "session.state" && env.data && env.data.state) {
        const cell = row.querySelector('[data-field="state"]');
        cell.dataset.state = env.data.state;
        cell.textContent = env.data.state;
      }
      refresh(row);
    },
  });
  // Memory and restarts move without events: refresh them while the page is visible.
  setInterval(() => { if (!document.hidden) refreshAll(); }, 15000);
})();
