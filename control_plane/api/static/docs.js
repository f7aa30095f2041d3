// Renders /api/openapi.json as a browsable list of operations. Vendored, dependency-free.
"use strict";
(async function () {
  const res = await fetch("/api/openapi.json");
  const spec = await res.json();
  const schemas = (spec.components || {}).schemas || {};
  document.getElementById("intro").textContent = spec.info.description || "";
  const byTag = {};
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const tag = (op.tags || ["other"])[0];
      (byTag[tag] = byTag[tag] || []).push({ path, method, op });
    }
  }
  const resolve = (s, depth) => {
    if (!s || depth > 4) return s;
    if (s.$ref) return resolve(schemas[s.$ref.split("/").pop()], depth + 1);
    const out = Array.isArray(s) ? [] : {};
    for (const [k, v] of Object.entries(s)) out[k] = typeof v === "object" && v !== null ? resolve(v, depth + 1) : v;
    return out;
  };
  const el = (tag, attrs, ...kids) => {
    const e = document.createElement(tag);
    Object.assign(e, attrs || {});
    for (const k of kids) e.append(k);
    return e;
  };
  const main = document.getElementById("ops");
  main.textContent = "";
  for (const tag of Object.keys(byTag).sort()) {
    main.append(el("h2", { textContent: tag }));
    for (const { path, method, op } of byTag[tag]) {
      const body = el("div", { className: "body" });
      if (op.parameters) body.append(el("p", { textContent: "Parameters: " + op.parameters.map(p => `${p.name} (${p.in})`).join(", ") }));
      const req = op.requestBody && op.requestBody.content["application/json"];
      if (req) body.append(el("p", { textContent: "Request body" }), el("pre", { textContent: JSON.stringify(resolve(req.schema, 0), null, 2) }));
      for (const [code, r] of Object.entries(op.responses || {})) {
        const c = r.content && r.content["application/json"];
        body.append(el("p", { textContent: `${code}: ${r.description || ""}` }));
        if (c && code < "400") body.append(el("pre", { textContent: JSON.stringify(resolve(c.schema, 0), null, 2) }));
      }
      main.append(el("details", {},
        el("summary", {}, el("span", { className: `m ${method}`, textContent: method.toUpperCase() }),
          el("span", { className: "p", textContent: path }), el("span", { className: "s", textContent: op.summary || "" })),
        body));
    }
  }
})();
