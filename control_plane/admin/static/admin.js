/* Shared helpers for the admin pages: the JSON API (session cookie + CSRF header), live events over
   Socket.IO, dialogs, field errors and a toast. No framework; loaded with `defer`. */
(function () {
  "use strict";

  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const CSRF = csrfMeta ? csrfMeta.content : "";

  class ApiError extends Error {
    constructor(status, error) {
      super((error && error.message) || "HTTP " + status);
      this.status = status;
      this.code = (error && error.code) || "http_" + status;
      this.field = (error && error.field) || null;
      // Every field found wrong at once ({field, code, message} each), when the API lists them.
      this.errors = (error && Array.isArray(error.errors) && error.errors) || null;
    }
  }

  /* Call the gateway's JSON API as the logged-in admin. Unsafe methods carry the CSRF header. */
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = CSRF;
    const init = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, { code: "network", message: "The gateway cannot be reached." });
    }
    let data = null;
    if (resp.status !== 204) {
      const text = await resp.text();
      if (text) {
        try { data = JSON.parse(text); } catch (_) { data = null; }
      }
    }
    if (resp.status === 401) {
      window.location.assign("/admin/login?next=" + encodeURIComponent(location.pathname));
    }
    if (!resp.ok) throw new ApiError(resp.status, data && data.error);
    return data;
  }

  /* An image (e.g. the QR code) as a blob: URL, so a rotating image never hits the HTTP cache. */
  async function fetchImage(path) {
    const resp = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    if (!resp.ok) throw new ApiError(resp.status, null);
    return URL.createObjectURL(await resp.blob());
  }

  /* Live events. `auth()` returns the Socket.IO auth payload (called again on every reconnect, so it can
     carry `since`); `onEvent(envelope)` gets each {seq, tenant_id, type, ts, data}; `onConnect()` runs
     after every (re)connection so the page can refresh what it may have missed. */
  function connectEvents({ auth, onEvent, onConnect }) {
    const indicator = document.getElementById("live-indicator");
    const mark = (state, title) => {
      if (!indicator) return;
      indicator.dataset.state = state;
      indicator.title = title;
    };
    if (typeof window.io !== "function") {
      mark("error", "Live updates unavailable");
      return null;
    }
    const socket = window.io({
      auth: (cb) => cb(auth ? auth() : {}),
      withCredentials: true,
      reconnectionDelayMax: 5000,
    });
    socket.on("connect", () => {
      mark("connected", "Live updates on");
      if (onConnect) onConnect();
    });
    socket.on("disconnect", () => mark("connecting", "Reconnecting…"));
    socket.on("connect_error", (err) => mark("error", "Live updates: " + ((err && err.message) || "error")));
    socket.onAny((name, envelope) => {
      if (envelope && typeof envelope === "object" && envelope.type) onEvent(envelope);
    });
    return socket;
  }

  /* Dialogs: [data-close] buttons close the nearest <dialog>. */
  function wireDialogs(root) {
    (root || document).querySelectorAll("dialog [data-close]").forEach((btn) => {
      btn.addEventListener("click", () => btn.closest("dialog").close());
    });
  }

  /* Field errors shown in place: an element [data-error-for=<field>] next to the input named <field>. */
  function clearErrors(form) {
    form.querySelectorAll("[data-error-for]").forEach((el) => { el.hidden = true; el.textContent = ""; });
    form.querySelectorAll('[aria-invalid="true"]').forEach((el) => el.removeAttribute("aria-invalid"));
  }

  function showError(form, err) {
    const field = err.field ? String(err.field).split(".").pop() : null;
    let slot = field ? form.querySelector(`[data-error-for="${CSS.escape(field)}"]`) : null;
    if (!slot) slot = form.querySelector('[data-error-for="_form"]');
    if (!slot) { toast(err.message, true); return null; }
    // "phone_number_id: String should match ..." reads oddly under that very field: drop the prefix.
    const text = field ? String(err.message).replace(new RegExp("^" + field + ": "), "") : err.message;
    slot.textContent = slot.hidden || !slot.textContent ? text : slot.textContent + " " + text;
    slot.hidden = false;
    const input = field ? form.querySelector(`[name="${CSS.escape(field)}"]`) : null;
    if (input) {
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", slot.id || (slot.id = "err-" + field));
    }
    return input || slot;
  }

  /* Every field error of `err` at once (the API lists them in error.errors; a single one otherwise),
     each worded by `describe(fieldError)` when given. Returns the first element to focus. */
  function showErrors(form, err, describe) {
    const list = err.errors && err.errors.length ? err.errors : [{ field: err.field, code: err.code, message: err.message }];
    let first = null;
    list.forEach((e) => {
      const message = describe ? describe(e) : e.message;
      const el = showError(form, { field: e.field, code: e.code, message });
      first = first || el;
    });
    return first;
  }

  /* [data-copy="<input id>"] buttons copy that input's value, and say so. */
  function wireCopyButtons(root) {
    (root || document).querySelectorAll("[data-copy]").forEach((btn) => btn.addEventListener("click", async () => {
      const input = document.getElementById(btn.dataset.copy);
      if (!input || !input.value) return;
      try {
        await navigator.clipboard.writeText(input.value);
      } catch (_) {
        input.select(); // no clipboard permission (plain http): leave it selected for Ctrl+C
        if (document.execCommand) document.execCommand("copy");
      }
      btn.textContent = "Copied";
      setTimeout(() => { btn.textContent = "Copy"; }, 2000);
    }));
  }

  let toastTimer = null;
  function toast(message, isError) {
    const el = document.getElementById("toast");
    if (!el) return;
    el.textContent = message;
    el.classList.toggle("error", Boolean(isError));
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, isError ? 6000 : 3000);
  }

  function formatBytes(n) {
    if (n === null || n === undefined || isNaN(n)) return "—";
    const units = ["B", "KB", "MB", "GB"];
    let i = 0;
    let v = Number(n);
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return (i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)) + " " + units[i];
  }

  function formatDuration(s) {
    if (s === null || s === undefined || isNaN(s)) return "—";
    s = Math.max(0, Math.round(Number(s)));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    if (h) return `${h} h ${m} min`;
    if (m) return `${m} min ${sec} s`;
    return `${sec} s`;
  }

  /* A time from the API or an event: ISO string, epoch seconds or epoch milliseconds -> ms. */
  function toMillis(value) {
    if (value === null || value === undefined || value === "") return null;
    if (typeof value === "number") return value < 1e12 ? value * 1000 : value;
    let text = String(value);
    if (/^\d{4}-\d\d-\d\dT[\d:.]+$/.test(text)) text += "Z"; // naive UTC
    const ms = Date.parse(text);
    return isNaN(ms) ? null : ms;
  }

  function formatPhone(number) {
    if (!number) return "";
    // A group (<id>@g.us) or a contact known only by its @lid is no phone number: shown as it is.
    if (/@(g\.us|lid)$/.test(String(number))) return String(number);
    const digits = String(number).split("@")[0].replace(/[^\d]/g, "");
    return digits ? "+" + digits : String(number);
  }

  /* The supervisor's session status, whatever optional facts it carries, in one shape. */
  function sessionFacts(s) {
    s = s || {};
    const pick = (...keys) => {
      for (const k of keys) if (s[k] !== undefined && s[k] !== null) return s[k];
      return null;
    };
    let memory = pick("memory_bytes", "rss_bytes", "memory_rss_bytes", "memory");
    const memoryMb = pick("memory_mb");
    if (memory === null && memoryMb !== null) memory = memoryMb * 1024 * 1024;
    return {
      state: pick("state") || "unknown",
      reason: pick("reason"),
      detail: pick("detail"),
      since: pick("since", "state_since"),
      restarts: pick("restarts", "restart_count"),
      memory,
      pid: pick("pid"),
      uptime: pick("uptime_s", "uptime"),
      ownNumber: pick("own_number", "number", "phone"),
    };
  }

  window.Admin = {
    CSRF, ApiError, api, fetchImage, connectEvents, wireDialogs, clearErrors, showError, showErrors,
    wireCopyButtons, toast,
    formatBytes, formatDuration, toMillis, formatPhone, sessionFacts,
  };
})();
