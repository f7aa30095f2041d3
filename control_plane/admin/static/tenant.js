/* A tenant's page: the live QR code and session controls (with why a session failed), the sandbox
   phone and the conversations tab. Everything goes through /api/tenants/{id}/... with the admin
   session. The WhatsApp config modal (tenant_config.js) and the API keys tab (tenant_keys.js) load
   after this file and use window.TenantPage. */
(function () {
  "use strict";
  const A = window.Admin;
  const $ = (id) => document.getElementById(id);
  const page = JSON.parse($("page-data").textContent);
  const T = page.tenant.id;
  const base = "/api/tenants/" + encodeURIComponent(T);
  A.wireDialogs();

  let facts = A.sessionFacts(page.tenant.session);
  let factsAt = Date.now(); // when facts.uptime was measured
  let qr = page.qr || null; // {qr, attempt, expires_at}
  const qrTtlS = Number(page.qr_ttl_s) || 60; // QR_TTL_S: how long the codes keep coming without a scan
  let lastSeq = null;
  let clockOffset = 0; // browser clock minus server clock, from event timestamps (QR countdown)
  let offsetKnown = false;
  const serverNow = () => Date.now() - clockOffset;

  // ------------------------------------------------------------------------------------- tabs
  function selectTab(tabs, selected) {
    tabs.forEach((tab) => {
      const on = tab === selected;
      tab.setAttribute("aria-selected", String(on));
      $(tab.getAttribute("aria-controls")).hidden = !on;
    });
  }
  const pageTabs = [$("tab-session"), $("tab-conversations"), $("tab-keys")];
  const tabShown = []; // callbacks(tabId) run when a page tab is shown
  function showPageTab(tab) {
    selectTab(pageTabs, tab);
    history.replaceState(null, "", "#" + tab.id.replace("tab-", ""));
    if (tab.id === "tab-conversations") loadConversations();
    tabShown.forEach((fn) => fn(tab.id));
  }
  pageTabs.forEach((tab) => tab.addEventListener("click", () => showPageTab(tab)));
  const hashTab = pageTabs.find((tab) => location.hash === "#" + tab.id.replace("tab-", ""));
  if (hashTab) selectTab(pageTabs, hashTab);
  window.TenantPage = { page, base, tenantId: T, selectTab, onTabShown: (fn) => tabShown.push(fn) };

  // ---------------------------------------------------------------------------------- session
  const LIVE = new Set(["starting", "qr", "authenticated", "ready", "disconnected", "stopping"]);
  const STATE_TEXT = {
    stopped: "The session is not running. Press Start to get a QR code.",
    logged_out: "Logged out: the phone is unlinked. Press Start to link it again.",
    starting: "Starting the session…",
    authenticated: "Scanned. Linking the phone…",
    stopping: "Stopping…",
    backoff: "The session stopped unexpectedly and restarts shortly.",
    disconnected: "The phone disconnected.",
    unknown: "Session state unknown.",
  };
  // Why a session is where it is, in words, when the session gives no `detail` of its own.
  const REASON_TEXT = {
    qr_expired: "Nobody scanned the QR code in time.",
    crash_loop: "The session's browser kept crashing, so it was stopped.",
    init_failed: "The session's browser could not open WhatsApp Web (check this server's internet access or proxy).",
    memory_limit: "The session used more memory than MEMORY_LIMIT_MB allows.",
    heartbeat_timeout: "The session stopped answering.",
    logged_out: "The phone unlinked this session.",
  };
  let qrKey = null;
  let scanned = false; // the sandbox phone scanned; no QR fetches until the next state change
  let qrLoading = null;

  function qrView() {
    if (facts.state === "ready") return "connected";
    if (facts.state === "failed" && facts.reason === "qr_expired") return "expired";
    if (facts.state === "qr") return "qr";
    return "message";
  }

  function renderSession() {
    const badge = $("session-state");
    badge.dataset.state = facts.state;
    badge.textContent = facts.state;
    $("session-reason").textContent = facts.reason && facts.state !== "ready" ? facts.reason : "";
    renderDetail();
    const view = qrView();
    $("qr-box").dataset.view = view;
    $("qr-figure").hidden = view !== "qr";
    $("qr-howto").hidden = view !== "qr";
    $("connected").hidden = view !== "connected";
    $("qr-expired").hidden = view !== "expired";
    $("qr-message").hidden = view !== "message";
    if (view === "connected") $("own-number").textContent = A.formatPhone(facts.ownNumber) || "this phone";
    if (view === "message") {
      $("qr-message").textContent = facts.state === "failed"
        ? "The session failed. Press Start to try again."
        : STATE_TEXT[facts.state] || facts.state;
    }
    if (view === "qr") showQr();
    $("start-button").disabled = LIVE.has(facts.state);
    renderFacts();
  }

  /* The cause of a failure (or of a restart coming), in words an admin can act on: the session's own
     `detail` when it has one, else what its reason code means. */
  function renderDetail() {
    const box = $("session-detail");
    const troubled = facts.state === "failed" || facts.state === "backoff" || facts.state === "disconnected";
    const text = troubled ? facts.detail || REASON_TEXT[facts.reason] || (facts.reason ? `Reason: ${facts.reason}.` : "") : "";
    box.textContent = text;
    box.hidden = !text || qrView() === "expired";
  }

  function renderFacts() {
    const set = (k, v) => { document.querySelector(`[data-fact="${k}"]`).textContent = v; };
    const since = A.toMillis(facts.since);
    set("since", since ? new Date(since).toLocaleString() : "—");
    set("restarts", facts.restarts === null ? "—" : String(facts.restarts));
    set("memory", A.formatBytes(facts.memory));
    const uptime = facts.uptime === null ? null : facts.uptime + (Date.now() - factsAt) / 1000;
    set("uptime", A.formatDuration(LIVE.has(facts.state) ? uptime : facts.uptime));
    set("pid", facts.pid === null ? "—" : String(facts.pid));
  }

  async function showQr() {
    if (!qr || !qr.qr) {
      $("qr-meta").textContent = "Waiting for a QR code…";
      return;
    }
    const key = `${qr.attempt}:${qr.qr}`;
    tickQr();
    if (key === qrKey || qrLoading === key) return;
    // Scanned from the sandbox panel, or (on the server's clock) about to expire: the server has, or
    // is about to have, no code to give, and asking would only earn a 404. The next event says what
    // comes next.
    const expires = A.toMillis(qr.expires_at);
    if (scanned || (offsetKnown && expires && expires - serverNow() < 100)) return;
    qrLoading = key;
    try {
      const url = await A.fetchImage(base + "/session/qr?format=svg");
      const img = $("qr-img");
      const old = img.src;
      img.src = url;
      img.dataset.attempt = String(qr.attempt || "");
      qrKey = key;
      if (old && old.startsWith("blob:")) URL.revokeObjectURL(old);
    } catch (err) {
      // The code rotated or the phone scanned it meanwhile: the next event brings the next one.
    } finally {
      if (qrLoading === key) qrLoading = null;
    }
  }

  /* How long the codes keep coming: QR_TTL_S from the first code (the qr state's `since`), said
     before it runs out. */
  function tickWindow() {
    const box = $("qr-window");
    const since = A.toMillis(facts.since);
    if (qrView() !== "qr" || !since) { box.hidden = true; return; }
    const left = Math.max(0, Math.round((since + qrTtlS * 1000 - serverNow()) / 1000));
    box.hidden = false;
    box.textContent = left > 0
      ? `Scan within ${left} s. New codes come by themselves for ${Math.round(qrTtlS)} s; then the session stops and Start brings new ones.`
      : "Time is up for these codes: the session is stopping. Press Start for new ones.";
  }

  function tickQr() {
    tickWindow();
    if (qrView() !== "qr" || !qr) return;
    const expires = A.toMillis(qr.expires_at);
    const attempt = qr.attempt ? `Attempt ${qr.attempt}` : "QR code";
    if (!expires) {
      $("qr-meta").textContent = attempt;
      return;
    }
    const left = Math.round((expires - serverNow()) / 1000);
    $("qr-meta").textContent = left > 0 ? `${attempt} · ${left} s left` : `${attempt} · expired, waiting for the next code…`;
  }
  setInterval(() => { tickQr(); renderFacts(); }, 1000);

  async function refreshSession() {
    try {
      facts = A.sessionFacts(await A.api("GET", base + "/session"));
      factsAt = Date.now();
      if (facts.state === "qr" && (!qr || !qr.qr)) {
        qr = await A.api("GET", base + "/session/qr?format=json");
      }
    } catch (err) {
      if (err.status !== 404) A.toast("Session status: " + err.message, true);
    }
    renderSession();
  }

  document.querySelectorAll("[data-session]").forEach((btn) => btn.addEventListener("click", async () => {
    const action = btn.dataset.session;
    if (action === "logout" && !window.confirm("Log this phone out? It will need a new QR scan.")) return;
    btn.disabled = true;
    try {
      const status = await A.api("POST", `${base}/session/${action}`);
      if (status && status.state) { facts = A.sessionFacts(status); factsAt = Date.now(); renderSession(); }
      A.toast(`Session: ${action} requested`);
    } catch (err) {
      A.toast(err.message, true);
    } finally {
      btn.disabled = action === "start" && LIVE.has(facts.state);
    }
  }));

  // ---------------------------------------------------------------------------------- sandbox
  let lastOutbound = null; // our id of the last message sent from this page
  const sandbox = $("sandbox-panel");
  if (sandbox) {
    $("sandbox-scan").addEventListener("click", async () => {
      scanned = true;
      try {
        await A.api("POST", base + "/sandbox/scan", {});
        A.toast("Scanned");
      } catch (err) {
        scanned = false;
        A.toast(err.message, true);
      }
    });
    const incoming = $("sandbox-incoming");
    incoming.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      A.clearErrors(incoming);
      try {
        await A.api("POST", base + "/sandbox/incoming",
          { from: incoming.elements.from.value.trim(), text: incoming.elements.text.value });
        A.toast("Message sent from the sandbox phone");
      } catch (err) {
        A.showError(incoming, err);
      }
    });
    sandbox.querySelectorAll("[data-ack]").forEach((btn) => btn.addEventListener("click", async () => {
      if (!lastOutbound) { A.toast("Send a message from the Conversations tab first", true); return; }
      try {
        const msg = await A.api("GET", `${base}/messages/${encodeURIComponent(lastOutbound)}`);
        if (!msg.provider_message_id) { A.toast("That message has not left yet", true); return; }
        await A.api("POST", base + "/sandbox/ack", { id: msg.provider_message_id, status: btn.dataset.ack });
      } catch (err) {
        A.toast(err.message, true);
      }
    }));
  }

  // ---------------------------------------------------------------------------- conversations
  const chat = $("chat");
  const list = $("conversation-list");
  const thread = $("messages");
  const sendForm = $("send-form");
  let conversations = [];
  let current = null; // the open conversation
  const TICKS = { queued: "◷", sending: "◷", sent: "✓", delivered: "✓✓", read: "✓✓", played: "✓✓", failed: "!" };
  const items = (data, key) => (Array.isArray(data) ? data : (data && (data[key] || data.items || data.data)) || []);

  function messageText(m) {
    const c = m.content;
    if (typeof c === "string") return c;
    if (c && typeof c === "object") {
      if (typeof c.text === "string") return c.text;
      if (c.text && typeof c.text.body === "string") return c.text.body;
      if (typeof c.body === "string" && c.body) return c.body;
      if (typeof c.caption === "string" && c.caption) return c.caption;
    }
    if (typeof m.text === "string") return m.text;
    if (typeof m.body === "string") return m.body;
    return `[${m.type || "message"}]`;
  }

  function contactLabel(c) {
    return c.contact_name ? `${c.contact_name} (${A.formatPhone(c.wa_id)})` : A.formatPhone(c.wa_id);
  }

  function renderConversations() {
    list.textContent = "";
    if (!conversations.length) {
      const li = document.createElement("li");
      li.className = "muted empty";
      li.textContent = "No conversations yet.";
      list.appendChild(li);
    }
    let unread = 0;
    conversations.forEach((c) => {
      const li = document.createElement("li");
      const btn = document.createElement("button");
      btn.type = "button";
      btn.dataset.conversationId = String(c.id);
      if (current && String(current.id) === String(c.id)) btn.setAttribute("aria-current", "true");
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = contactLabel(c);
      btn.appendChild(who);
      const count = Number(c.unread_count || 0);
      unread += count;
      const badge = document.createElement("span");
      if (count) { badge.className = "unread"; badge.textContent = String(count); }
      btn.appendChild(badge);
      const preview = document.createElement("span");
      preview.className = "preview";
      preview.textContent = c.last_message ? messageText(c.last_message) : "";
      btn.appendChild(preview);
      btn.addEventListener("click", () => openConversation(c));
      li.appendChild(btn);
      list.appendChild(li);
    });
    $("unread-total").hidden = !unread;
    $("unread-total").textContent = String(unread);
  }

  let listTimer = null;
  function loadConversationsSoon() {
    clearTimeout(listTimer);
    listTimer = setTimeout(loadConversations, 150);
  }
  async function loadConversations() {
    try {
      conversations = items(await A.api("GET", base + "/conversations"), "conversations");
      if (current) {
        current = conversations.find((c) => String(c.id) === String(current.id)) || current;
        const reading = !$("panel-conversations").hidden && chat.dataset.view === "thread";
        if (reading && Number(current.unread_count || 0)) markReadSoon();
      }
      renderConversations();
    } catch (err) {
      if (err.status !== 404) A.toast("Conversations: " + err.message, true);
    }
  }

  function messageNode(m) {
    const li = document.createElement("li");
    li.className = "msg " + (m.direction === "outbound" ? "outbound" : "inbound");
    li.dataset.messageId = m.id;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = messageText(m);
    li.appendChild(text);
    const meta = document.createElement("span");
    meta.className = "meta";
    const at = A.toMillis(m.created_at || m.timestamp);
    meta.textContent = at ? new Date(at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
    if (m.direction === "outbound") {
      const ticks = document.createElement("span");
      ticks.className = "ticks";
      meta.appendChild(ticks);
    }
    li.appendChild(meta);
    setStatus(li, m.status, m.error_message);
    return li;
  }

  const RANK = { queued: 0, sending: 1, sent: 2, failed: 3, delivered: 4, read: 5, played: 6 };
  function setStatus(li, status, error) {
    const ticks = li.querySelector(".ticks");
    if (!ticks || !status) return;
    const before = ticks.dataset.status;
    if (before && (RANK[status] ?? -1) < (RANK[before] ?? -1)) return; // never backwards
    ticks.dataset.status = status;
    ticks.textContent = TICKS[status] || "";
    ticks.title = status + (error ? `: ${error}` : "");
    li.dataset.status = status;
  }

  function scrollToNewest() {
    thread.scrollTop = thread.scrollHeight;
    requestAnimationFrame(() => { thread.scrollTop = thread.scrollHeight; }); // after layout, too
  }

  function appendMessage(m) {
    const existing = thread.querySelector(`[data-message-id="${CSS.escape(String(m.id))}"]`);
    if (existing) { setStatus(existing, m.status, m.error_message); return; }
    thread.appendChild(messageNode(m));
    thread.scrollTop = thread.scrollHeight;
  }

  let readTimer = null;
  function markReadSoon() {
    clearTimeout(readTimer);
    const c = current;
    readTimer = setTimeout(() => {
      A.api("POST", `${base}/conversations/${c.id}/read`).then(loadConversationsSoon, () => {});
    }, 300);
  }

  async function openConversation(c) {
    current = c;
    chat.dataset.view = "thread";
    $("thread-title").textContent = contactLabel(c);
    $("send-text").disabled = false;
    $("send-button").disabled = false;
    renderConversations();
    await loadThread();
    if (Number(c.unread_count || 0)) markReadSoon();
  }

  async function loadThread() {
    if (!current) return;
    try {
      const msgs = items(await A.api("GET", `${base}/conversations/${current.id}/messages?limit=100`), "messages");
      msgs.sort((a, b) => (A.toMillis(a.created_at) || 0) - (A.toMillis(b.created_at) || 0));
      thread.textContent = "";
      msgs.forEach(appendMessage);
      scrollToNewest();
    } catch (err) {
      A.toast("Messages: " + err.message, true);
    }
  }

  $("thread-back").addEventListener("click", () => { chat.dataset.view = "list"; });

  sendForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = $("send-text");
    const text = input.value.trim();
    if (!current || !text) return;
    $("send-error").hidden = true;
    $("send-button").disabled = true;
    try {
      const res = await A.api("POST", base + "/messages", { to: current.wa_id, type: "text", text });
      lastOutbound = res.id;
      input.value = "";
      appendMessage({ id: res.id, direction: "outbound", type: "text", content: { text },
        status: res.status || "queued", created_at: new Date().toISOString() });
    } catch (err) {
      $("send-error").textContent = err.message;
      $("send-error").hidden = false;
    } finally {
      $("send-button").disabled = false;
    }
  });

  // ------------------------------------------------------------------------------- live events
  function onMessageEvent(env) {
    // docs/EVENTS.md: {message_id, conversation_id, direction, type, content, status, timestamp, error?}
    const d = env.data || {};
    const id = d.message_id || d.id;
    const m = Object.assign({}, d, { id });
    const convId = d.conversation_id;
    if (env.type === "message.received") {
      if (current && String(convId) === String(current.id)) {
        appendMessage(m);
        if (!$("panel-conversations").hidden && chat.dataset.view === "thread") markReadSoon();
      }
      loadConversationsSoon();
      return;
    }
    // message.sent / message.status / message.failed: move the ticks of a message we show
    const status = d.status || m.status || (env.type === "message.failed" ? "failed" : null);
    const li = id ? thread.querySelector(`[data-message-id="${CSS.escape(String(id))}"]`) : null;
    if (li) setStatus(li, status, d.error_message || (d.error && d.error.message));
    else if (current && String(convId) === String(current.id)) loadThread();
    loadConversationsSoon();
  }

  A.connectEvents({
    auth: () => (lastSeq === null ? { tenant_id: T } : { tenant_id: T, since: lastSeq }),
    onConnect: () => {
      refreshSession();
      if (!$("panel-conversations").hidden) loadConversations();
      if (current) loadThread();
    },
    onEvent: (env) => {
      if (env.tenant_id !== T) return;
      if (typeof env.seq === "number") lastSeq = Math.max(lastSeq || 0, env.seq);
      const sentAt = A.toMillis(env.ts);
      // Every delay seen is the clock offset plus some latency: the smallest is the best estimate.
      if (sentAt) clockOffset = offsetKnown ? Math.min(clockOffset, Date.now() - sentAt) : Date.now() - sentAt;
      offsetKnown = offsetKnown || Boolean(sentAt);
      const d = env.data || {};
      if (env.type === "session.qr") {
        qr = d;
        if (facts.state !== "qr") facts.state = "qr";
        renderSession();
      } else if (env.type === "session.state") {
        const news = A.sessionFacts(d);
        facts = Object.assign({}, facts, { state: news.state, reason: news.reason, detail: news.detail });
        if (news.since) facts.since = news.since;
        if (news.ownNumber) facts.ownNumber = news.ownNumber;
        if (news.state !== "qr") qr = null;
        scanned = false;
        renderSession();
        refreshSession(); // restarts, memory, pid... and the QR when one is showing
      } else if (env.type.startsWith("message.")) {
        onMessageEvent(env);
      }
    },
  });

  renderSession();
  if (location.hash === "#conversations") loadConversations();
})();
