/* A tenant's page, the WhatsApp configuration modal: which roads (Web, Business API), the Business API
   credentials (disabled while the Business API is off), every field error at once in plain words, the
   credentials' verification with "Check again", and the Meta webhook's callback URL and verify token
   to copy. Loaded after tenant.js (window.TenantPage). */
(function () {
  "use strict";
  const A = window.Admin;
  const P = window.TenantPage;
  const $ = (id) => document.getElementById(id);
  const base = P.base;
  let config = P.page.config;

  const dialog = $("config-dialog");
  const form = $("config-form");
  const tabs = [$("config-tab-web"), $("config-tab-business")];
  tabs.forEach((tab) => tab.addEventListener("click", () => P.selectTab(tabs, tab)));
  const BUSINESS_FIELDS = ["phone_number_id", "waba_id", "api_version"];
  const SECRET_FIELDS = ["access_token", "app_secret", "verify_token"];
  A.wireCopyButtons(dialog);

  // ------------------------------------------------------------------------- plain language
  const LABELS = {
    phone_number_id: "Phone number ID",
    waba_id: "WhatsApp Business Account ID",
    access_token: "Access token",
    app_secret: "App secret",
    verify_token: "Webhook verify token",
    api_version: "Graph API version",
  };
  const POLICY_NAMES = {
    web_only: "“Web only”",
    business_api_only: "“Business API only”",
    web_first: "“Web first”",
    business_api_first: "“Business API first”",
  };

  /* An API field error ({field, code, message}) in words an admin can act on; the API's own text
     when there is nothing better to say. */
  function describe(e) {
    const field = e.field ? String(e.field).split(".").pop() : null;
    const label = LABELS[field] || field;
    const message = String(e.message || "");
    // 409 inconsistent_config: the same rules, broken together with what is stored (a PUT)
    const code = e.code === "inconsistent_config" ? (/is required when/.test(message) ? "missing_field" : "invalid_field") : e.code;
    switch (code) {
      case "missing_field":
        return `${label} is needed to use the Business API.`;
      case "invalid_access_token":
        return "Meta did not accept this access token (it may be mistyped or expired). Copy it again from Meta's developer dashboard.";
      case "invalid_phone_number_id":
        return "This access token cannot use that phone number ID. Check both in Meta's WhatsApp Manager.";
      case "phone_number_id_taken":
        return "Another tenant already uses this phone number ID.";
      default:
        break;
    }
    if (code === "invalid_field" && field) {
      if (field === "phone_number_id" || field === "waba_id") return `${label} is digits only, as Meta's WhatsApp Manager shows it.`;
      if (field === "api_version") return "The Graph API version looks like v23.0 (leave it empty for the default).";
      if (field === "fallback_policy") {
        const policy = Object.keys(POLICY_NAMES).find((p) => message.includes(p));
        const needs = policy === "business_api_only" ? "the Business API turned on" : "the Web session turned on";
        return `${POLICY_NAMES[policy] || "This choice"} needs ${needs}.`;
      }
      if (/at least (\d+)/.test(message)) return `${label} is too short: it has at least ${message.match(/at least (\d+)/)[1]} characters.`;
      if (/at most (\d+)/.test(message)) return `${label} is too long: at most ${message.match(/at most (\d+)/)[1]} characters.`;
    }
    return message;
  }

  // ------------------------------------------------------------------- what is on, what is off
  function syncEnabled() {
    const f = form.elements;
    const business = f.use_business.checked;
    $("business-fields").disabled = !business;
    $("business-off-hint").hidden = business;
    // the roads a policy needs must be on; pick a sensible one when the current cannot work
    const web = f.use_web.checked;
    const allowed = {
      web_only: web, web_first: web && business, business_api_first: web && business, business_api_only: business,
    };
    Array.from(f.fallback_policy.options).forEach((o) => { o.disabled = !allowed[o.value]; });
    if (!allowed[f.fallback_policy.value]) {
      f.fallback_policy.value = web && business ? "web_first" : business ? "business_api_only" : "web_only";
    }
  }
  form.elements.use_business.addEventListener("change", syncEnabled);
  form.elements.use_web.addEventListener("change", syncEnabled);

  function fill(c) {
    const f = form.elements;
    f.use_web.checked = c.api_type === "web" || c.api_type === "both";
    f.use_business.checked = c.api_type === "business_api" || c.api_type === "both";
    BUSINESS_FIELDS.forEach((n) => { f[n].value = c[n] || ""; });
    SECRET_FIELDS.forEach((n) => {
      f[n].value = "";
      f[n].placeholder = c[n] ? "set (leave empty to keep)" : "";
    });
    f.fallback_policy.value = c.fallback_policy || "web_only";
    syncEnabled();
    renderVerification(c);
  }

  function body() {
    const f = form.elements;
    const web = f.use_web.checked;
    const business = f.use_business.checked;
    const out = {
      api_type: web && business ? "both" : business ? "business_api" : "web",
      fallback_policy: f.fallback_policy.value,
    };
    if (business) {
      BUSINESS_FIELDS.forEach((n) => {
        const v = f[n].value.trim();
        if (v) out[n] = v;
        else if (config[n]) out[n] = null; // emptied: clear it
      });
      SECRET_FIELDS.forEach((n) => {
        const v = f[n].value.trim(); // the API takes strings as sent: a pasted space would be kept
        if (v) out[n] = v;
      });
    }
    return { body: out, web, business };
  }

  // ---------------------------------------------------------------------------- verification
  const VERIFICATION_TEXT = {
    verified: "Verified: Meta accepted these credentials",
    unverified: "Not verified yet: Meta could not be asked",
    failed: "Verification failed: Meta refused these credentials",
  };

  function renderVerification(c) {
    const box = $("verification");
    const v = c.verification;
    const on = (c.api_type === "business_api" || c.api_type === "both") && c.business_api_ready;
    box.hidden = !on;
    if (!on) return;
    const status = v ? v.status : "unverified";
    box.dataset.status = status;
    const when = v && A.toMillis(v.checked_at) ? ` (checked ${new Date(A.toMillis(v.checked_at)).toLocaleString()})` : "";
    const why = v && v.message ? `: ${v.message}` : "";
    $("verification-text").textContent = `${VERIFICATION_TEXT[status] || status}${why}${when}.`;
  }

  $("verify-again").addEventListener("click", async () => {
    const btn = $("verify-again");
    btn.disabled = true;
    $("verification-text").textContent = "Asking Meta…";
    try {
      config = await A.api("POST", base + "/whatsapp/config/verify");
      A.toast(VERIFICATION_TEXT[config.verification && config.verification.status] || "Checked", config.verification.status !== "verified");
    } catch (err) {
      A.toast(err.message, true);
    } finally {
      btn.disabled = false;
      renderVerification(config);
    }
  });

  // ------------------------------------------------------------------------------- webhook
  async function loadWebhook() {
    try {
      const w = await A.api("GET", `/api/tenants/${encodeURIComponent(P.tenantId)}/whatsapp/webhook-setup`);
      $("webhook-url").value = w.callback_url;
      $("webhook-token").value = w.verify_token || "";
      $("copy-webhook-token").disabled = !w.verify_token;
    } catch (err) {
      A.toast("Webhook setup: " + err.message, true);
    }
  }

  $("generate-verify-token").addEventListener("click", () => {
    const bytes = new Uint8Array(18);
    crypto.getRandomValues(bytes);
    const token = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    const input = form.elements.verify_token;
    input.type = "text"; // a made-up token is meant to be read and copied
    input.value = token;
    A.toast("Verify token made up: save, then paste it into Meta's dashboard");
  });

  // ------------------------------------------------------------------------------ open, save
  $("configure-button").addEventListener("click", async () => {
    A.clearErrors(form);
    $("config-errors").hidden = true;
    $("config-close").textContent = "Cancel";
    form.elements.verify_token.type = "password";
    try {
      config = await A.api("GET", base + "/whatsapp/config");
    } catch (err) {
      A.toast(err.message, true);
    }
    fill(config);
    P.selectTab(tabs, tabs[0]);
    dialog.showModal();
    loadWebhook();
  });

  function showAll(err) {
    const list = err.errors && err.errors.length ? err.errors : [err];
    const first = A.showErrors(form, err, describe);
    const summary = $("config-errors");
    if (list.length > 1) {
      summary.textContent = `${list.length} things to fix: ${list.map(describe).join(" ")}`;
      summary.hidden = false;
    }
    focus(first);
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    A.clearErrors(form);
    $("config-errors").hidden = true;
    const { body: payload, web, business } = body();
    if (!web && !business) {
      focus(A.showError(form, { field: "api_type", message: "Choose at least one road: Web or Business API." }));
      return;
    }
    const save = $("config-save");
    save.disabled = true;
    try {
      config = await A.api("PUT", base + "/whatsapp/config", payload);
      renderRoads();
      renderVerification(config);
      loadWebhook();
      const status = config.verification && config.verification.status;
      if (status && status !== "verified") {
        // Saved, but not what "saved" alone would suggest: keep the dialog open on the reason.
        P.selectTab(tabs, tabs[1]);
        $("config-close").textContent = "Close";
        A.toast("Saved, but not verified: see the Business API tab", true);
      } else {
        dialog.close();
        A.toast(status === "verified" ? "Saved and verified with Meta" : "WhatsApp configuration saved");
      }
    } catch (err) {
      showAll(err);
    } finally {
      save.disabled = false;
    }
  });

  function focus(el) {
    if (!el) return;
    const panel = el.closest('[role="tabpanel"]');
    const tab = panel && tabs.find((t) => t.getAttribute("aria-controls") === panel.id);
    if (tab) P.selectTab(tabs, tab);
    if (el.focus) el.focus();
  }

  function renderRoads() {
    const roads = [];
    if (config.api_type === "web" || config.api_type === "both") roads.push("Web");
    if ((config.api_type === "business_api" || config.api_type === "both") && config.business_api_ready) {
      roads.push("Business API");
    }
    const box = $("roads");
    box.textContent = "";
    roads.forEach((r) => {
      const span = document.createElement("span");
      span.className = "badge badge-road";
      span.textContent = r;
      box.appendChild(span);
    });
  }

  renderRoads();
})();
