/* A tenant's page, the API keys tab: the keys (prefix, label, created, last used, revoked), a new key
   (shown once), rotation (every live key revoked, one new key) and revoking one key. Admin routes
   /api/tenants/{id}/api-keys. Loaded after tenant.js (window.TenantPage). */
(function () {
  "use strict";
  const A = window.Admin;
  const P = window.TenantPage;
  const $ = (id) => document.getElementById(id);
  const keysPath = `/api/tenants/${encodeURIComponent(P.tenantId)}/api-keys`;
  A.wireCopyButtons($("key-shown-dialog"));

  const when = (value) => {
    const ms = A.toMillis(value);
    return ms ? new Date(ms).toLocaleString() : null;
  };

  function cell(row, label, text, className) {
    const td = document.createElement("td");
    td.dataset.label = label;
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function render(keys) {
    const body = $("keys-body");
    body.textContent = "";
    if (!keys.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      cell(tr, "", "No keys: make one with “New key”.").colSpan = 6;
      body.appendChild(tr);
    }
    keys.forEach((k) => {
      const tr = document.createElement("tr");
      tr.dataset.keyId = String(k.id);
      tr.className = k.revoked_at ? "key-revoked" : "key-live";
      cell(tr, "Key", k.prefix + "…", "mono");
      cell(tr, "Label", k.label || "—");
      cell(tr, "Created", when(k.created_at) || "—");
      cell(tr, "Last used", when(k.last_used_at) || "never").dataset.field = "last-used";
      cell(tr, "Status", k.revoked_at ? `revoked ${when(k.revoked_at)}` : "live").dataset.field = "status";
      const actions = cell(tr, "", "");
      if (!k.revoked_at) {
        const btn = document.createElement("button");
        btn.type = "button";
        btn.className = "small danger";
        btn.dataset.action = "revoke";
        btn.textContent = "Revoke";
        btn.addEventListener("click", () => revoke(k, btn));
        actions.appendChild(btn);
      }
      body.appendChild(tr);
    });
  }

  async function load() {
    try {
      render((await A.api("GET", keysPath)).api_keys);
    } catch (err) {
      A.toast("API keys: " + err.message, true);
    }
  }

  async function revoke(key, btn) {
    if (!window.confirm(`Revoke the key ${key.prefix}…? Whatever uses it stops working now.`)) return;
    btn.disabled = true;
    try {
      await A.api("DELETE", `${keysPath}/${key.id}`);
      A.toast("Key revoked");
    } catch (err) {
      A.toast(err.message, true);
    }
    load();
  }

  function showOnce(created) {
    $("key-shown-value").value = created.api_key;
    $("copy-key-shown").textContent = "Copy";
    $("key-shown-dialog").showModal();
  }
  // The key is gone for good once its dialog closes.
  $("key-shown-dialog").addEventListener("close", () => { $("key-shown-value").value = ""; });

  const newForm = $("new-key-form");
  $("new-key-button").addEventListener("click", () => {
    A.clearErrors(newForm);
    newForm.reset();
    $("new-key-dialog").showModal();
  });
  newForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    A.clearErrors(newForm);
    const label = newForm.elements.label.value.trim();
    try {
      const created = await A.api("POST", keysPath, label ? { label } : {});
      $("new-key-dialog").close();
      showOnce(created);
      load();
    } catch (err) {
      A.showErrors(newForm, err);
    }
  });

  const rotateForm = $("rotate-form");
  $("rotate-keys-button").addEventListener("click", () => {
    A.clearErrors(rotateForm);
    $("rotate-dialog").showModal();
  });
  rotateForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const created = await A.api("POST", keysPath + "/rotate", {});
      $("rotate-dialog").close();
      showOnce(created);
      load();
    } catch (err) {
      A.showErrors(rotateForm, err);
    }
  });

  P.onTabShown((id) => { if (id === "tab-keys") load(); });
  if (location.hash === "#keys") load();
})();
