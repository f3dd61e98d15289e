// Signing in with the EHR's identity provider (authorization code + PKCE), the access
// token kept in this tab only, and a clear "signed out" when it ends.

const config = JSON.parse(document.getElementById("config").textContent);
const redirectUri = `${location.origin}/`;
const SCOPE = "openid fhirUser launch/patient patient/*.rs patient/Appointment.cu "
  + "patient/Communication.cu patient/QuestionnaireResponse.cu patient/Consent.cu";

const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
  .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");

export function token() {
  const expires = Number(sessionStorage.getItem("expires_at") || 0);
  if (expires && Date.now() > expires) {
    signOut("expired");
    return null;
  }
  return sessionStorage.getItem("token");
}

export function expiresAt() {
  return Number(sessionStorage.getItem("expires_at") || 0);
}

/** Go to the identity provider; come back to `returnTo` (a route of this page). */
export async function signIn(returnTo = location.hash || "#/") {
  const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
  const state = b64url(crypto.getRandomValues(new Uint8Array(16)));
  const challenge = b64url(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)),
  );
  sessionStorage.setItem("pkce", JSON.stringify({ verifier, state, returnTo }));
  const query = new URLSearchParams({
    response_type: "code", client_id: config.clientId, redirect_uri: redirectUri,
    scope: SCOPE, state, code_challenge: challenge, code_challenge_method: "S256",
  });
  location.assign(`${config.issuer}/auth/authorize?${query}`);
}

/** Finish a sign-in the identity provider redirected back with; returns an error text. */
export async function finishSignIn(params) {
  const pkce = JSON.parse(sessionStorage.getItem("pkce") || "{}");
  sessionStorage.removeItem("pkce");
  history.replaceState(null, "", `/${pkce.returnTo || "#/"}`);
  if (params.get("error")) {
    return params.get("error") === "access_denied"
      ? "You cancelled signing in." : "Signing in did not work. Please try again.";
  }
  if (!pkce.state || params.get("state") !== pkce.state) {
    return "Signing in did not work. Please try again.";
  }
  const response = await fetch("/v1/session", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      code: params.get("code"), code_verifier: pkce.verifier, redirect_uri: redirectUri,
    }),
  });
  if (!response.ok) return "Signing in did not work. Please try again.";
  const body = await response.json();
  sessionStorage.setItem("token", body.access_token);
  sessionStorage.setItem("expires_at", String(Date.now() + body.expires_in * 1000));
  sessionStorage.removeItem("signed_out");
  return null;
}

/** Forget the token; `why` is shown on the sign-in screen ("expired" or "chosen"). */
export function signOut(why = "chosen") {
  sessionStorage.removeItem("token");
  sessionStorage.removeItem("expires_at");
  sessionStorage.setItem("signed_out", why);
}

export function signedOutReason() {
  return sessionStorage.getItem("signed_out");
}
