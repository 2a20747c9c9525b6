// Starts Swagger UI on /docs (service/routers/docs.py). A file of its own, not an
// inline script, so that the page's Content-Security-Policy can allow scripts from
// this origin only.
"use strict";

const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({
  url: root.dataset.openapiUrl,
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  // The online validator's badge would be an image from another host.
  validatorUrl: null,
  // A token typed into "Authorize" stays in this tab's memory, never in storage.
  persistAuthorization: false,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
