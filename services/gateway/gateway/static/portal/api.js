// The gateway's public /v1 API, with the patient's bearer token. Errors become an
// ApiError carrying the problem details' text, for the screen to show in plain words.
import { signOut, token } from "./session.js";

export class ApiError extends Error {
  constructor(status, detail, body) {
    super(detail);
    this.status = status;
    this.body = body;
  }
}

export class SignedOut extends Error {}

function problemText(status, body) {
  const detail = body && (body.detail || body.title);
  if (typeof detail === "string" && detail) return detail;
  if (Array.isArray(detail)) return "Some of the information is not valid.";
  if (status === 429) return "Too many requests in a short time. Please wait a moment.";
  if (status >= 500) return "Something went wrong on our side. Please try again in a minute.";
  return "That did not work. Please try again.";
}

/** Call the API; JSON in and out. `raw: true` returns the Response itself. */
export async function api(path, { method = "GET", body, headers = {}, raw = false } = {}) {
  const bearer = token();
  if (!bearer) throw new SignedOut();
  const init = { method, headers: { ...headers, Authorization: `Bearer ${bearer}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    signOut("expired");
    window.dispatchEvent(new CustomEvent("portal:signed-out"));
    throw new SignedOut();
  }
  if (raw) return response;
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = null; }
  if (!response.ok) throw new ApiError(response.status, problemText(response.status, parsed), parsed);
  return parsed;
}

/** A fresh idempotency key for one command the patient sends. */
export function newKey() {
  return crypto.randomUUID();
}
