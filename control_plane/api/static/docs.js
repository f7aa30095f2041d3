/* The API reference: Swagger UI (vendored under vendor/swagger-ui/, see its README.md) rendering
   /api/openapi.json, with "Try it out" against this server (Authorize with a tenant API key or the
   admin token). Nothing is loaded from another origin. */
"use strict";
window.addEventListener("DOMContentLoaded", function () {
  window.ui = window.SwaggerUIBundle({
    url: "/api/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    displayOperationId: false,
    displayRequestDuration: true,
    tryItOutEnabled: false,
    persistAuthorization: false,
    validatorUrl: null, // never send the document to an outside validator
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
