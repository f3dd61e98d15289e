// Swagger UI on the gateway's own OpenAPI document; "Authorize" takes a patient access
// token (see the gateway README: POST /dev/patient-token on the sandbox in development).
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: false,
  presets: [SwaggerUIBundle.presets.apis],
});
