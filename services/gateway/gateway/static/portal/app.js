// The portal's entry point: sign-in, the screens (one module each, loaded on demand), the
// live notices from the gateway's event stream, and the session's end.
import { api, SignedOut } from "./api.js";
import { fill, h } from "./dom.js";
import { time } from "./format.js";
import { expiresAt, finishSignIn, signIn, signOut, signedOutReason, token } from "./session.js";

const main = document.getElementById("content");
const notices = document.getElementById("notices");
const nav = document.getElementById("nav");

const ROUTES = [
  [/^#?\/?$/, "home", "Home"],
  [/^#\/results$/, "results", "Test results"],
  [/^#\/results\/([\w.:-]+)$/, "result", "Test result"],
  [/^#\/health$/, "health", "Health summary"],
  [/^#\/appointments$/, "appointments", "Appointments"],
  [/^#\/appointments\/book$/, "book", "Book an appointment"],
  [/^#\/appointments\/([\w.:-]+)\/move$/, "book", "Move an appointment"],
  [/^#\/appointments\/([\w.:-]+)\/intake$/, "intake", "Questions before your visit"],
  [/^#\/messages$/, "messages", "Messages"],
  [/^#\/messages\/new$/, "compose", "Write a message"],
  [/^#\/messages\/([\w.:-]+)$/, "thread", "Conversation"],
  [/^#\/symptoms$/, "symptoms", "Check your symptoms"],
  [/^#\/access-log$/, "accesslog", "Who saw my record"],
  [/^#\/caregivers$/, "caregivers", "People who can help me"],
];
// A caregiver sees the links of the parts the patient shared with them, nothing else.
const NAV_PARTS = {
  "#/results": "results", "#/health": "records", "#/appointments": "appointments",
  "#/messages": "messages", "#/symptoms": "triage", "#/access-log": null, "#/caregivers": null,
};

const state = { profile: null, view: null, started: Date.now(), me: null };

/** Show a notice in the live area at the top of the screen; it stays until dismissed. */
export function announce(text, { action } = {}) {
  const item = h("div", { class: "notice" },
    h("p", {}, h("span", { class: "notice-time" }, `${time(new Date().toISOString())}: `), text),
    action || null,
    h("button", {
      type: "button", class: "link-button",
      onclick: () => { item.remove(); main.focus(); },
    }, "Dismiss", h("span", { class: "visually-hidden" }, ` notice: ${text}`)));
  notices.append(item);
  while (notices.children.length > 3) notices.firstElementChild.remove();
}

export function clearNotices() { notices.replaceChildren(); }

function showSignIn(message) {
  nav.hidden = true;
  fill(document.getElementById("account"));
  document.title = "Sign in - My health portal";
  const reason = signedOutReason();
  const why = message
    || (reason === "expired"
      ? "You have been signed out because your session ended. Please sign in again to carry on."
      : reason === "chosen" ? "You have signed out." : null);
  fill(main,
    h("h1", { tabindex: "-1" }, "Welcome to your health portal"),
    why ? h("p", { class: "callout", id: "signed-out-reason" }, why) : null,
    h("p", {}, "See your test results and medicines, book appointments, and write to your care team."),
    h("p", {}, "You sign in with your clinic's sign-in page."),
    h("button", { type: "button", id: "sign-in", class: "primary", onclick: () => signIn("#/") },
      "Sign in"));
  main.querySelector("h1").focus();
}

async function setUpAccount() {
  try {
    state.profile = await api("/v1/me/profile");
  } catch (error) {
    if (error instanceof SignedOut) throw error;
    state.profile = null;
  }
  try {
    state.me = await api("/v1/me");
  } catch (error) {
    if (error instanceof SignedOut) throw error;
    state.me = null;
  }
  const caregiver = Boolean(state.me && state.me.actor === "caregiver");
  const name = state.profile ? state.profile.name : caregiver ? "the patient" : "you";
  for (const link of nav.querySelectorAll("a")) {
    const href = link.getAttribute("href");
    const part = NAV_PARTS[href];
    link.parentElement.hidden = caregiver && part !== undefined
      && !(part && (state.me.parts || []).includes(part));
  }
  fill(document.getElementById("account"),
    caregiver
      ? h("p", { class: "who" }, "Signed in as a caregiver of ", h("strong", {}, name))
      : h("p", { class: "who" }, "Signed in as ", h("strong", {}, name)),
    h("button", {
      type: "button", class: "secondary", id: "sign-out",
      onclick: () => { signOut("chosen"); clearNotices(); showSignIn(); },
    }, "Sign out"));
  nav.hidden = false;
}

/** Whether the signed-in user may use a part: always the patient; a caregiver, what the
 * patient shared (the page never calls what the consent refuses). */
export function mayUse(part) {
  const me = state.me;
  return !(me && me.actor === "caregiver") || (me.parts || []).includes(part);
}

export async function updateUnread() {
  if (!mayUse("messages")) return null;
  try {
    const threads = await api("/v1/me/threads");
    const unread = threads.reduce((sum, t) => sum + Number(t.unread || 0), 0);
    fill(document.getElementById("unread-badge"), unread ? `(${unread} unread)` : "");
    return threads;
  } catch {
    return null;
  }
}

function markCurrent(path) {
  for (const link of nav.querySelectorAll("a")) {
    const target = link.getAttribute("href");
    const current = target === "#/" ? path === "#/" || path === "" : path.startsWith(target);
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

let routing = 0;

/** Show the screen of the current address. A screen renders into its own container, put
 * on the page only if the patient has not moved on meanwhile (a slow screen never
 * replaces a newer one). Focus goes to the heading when the patient navigated. */
async function route(event) {
  if (!token()) { showSignIn(); return; }
  routing += 1;
  const mine = routing;
  const [path, queryText] = (location.hash || "#/").split("?");
  const query = new URLSearchParams(queryText || "");
  const match = ROUTES.map(([re, name, title]) => [path.match(re), name, title])
    .find(([m]) => m);
  const [found, name, title] = match || [[], "home", "Home"];
  markCurrent(path);
  document.title = `${title} - My health portal`;
  fill(main, h("p", { class: "loading" }, "Loading..."));
  const container = h("div", { class: "view" });
  let view = null;
  try {
    const module = await import(`./views/${name}.js`);
    view = await module.render(container, {
      params: found.slice(1), query, profile: state.profile, announce, path, mayUse,
    });
  } catch (error) {
    if (error instanceof SignedOut) { showSignIn(); return; }
    fill(container, h("h1", { tabindex: "-1" }, title),
      h("p", { class: "callout error" }, error.message || "This page could not be shown."),
      h("p", {}, h("a", { href: "#/" }, "Go to the home page")));
  }
  if (mine !== routing) return;
  state.view = view || null;
  fill(main, container);
  const heading = main.querySelector("h1");
  if (heading && event) { heading.setAttribute("tabindex", "-1"); heading.focus(); }
}

// -- live notices from the gateway's Server-Sent Events stream ---------------------------
async function listen() {
  let last = sessionStorage.getItem("last_event") || "";
  while (token()) {
    try {
      const headers = { Authorization: `Bearer ${token()}` };
      if (last) headers["Last-Event-ID"] = last;
      const response = await fetch("/v1/me/events", { headers });
      if (response.status === 401) { signOut("expired"); showSignIn(); return; }
      // A caregiver whose access ended: nothing more will come on this stream.
      if (response.status === 403) return;
      if (!response.ok || !response.body) throw new Error("stream unavailable");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const id = block.match(/^id: (.*)$/m);
          const data = block.match(/^data: (.*)$/m);
          if (id) { last = id[1]; sessionStorage.setItem("last_event", last); }
          if (/^event: access-ended$/m.test(block)) {
            announce("The patient has stopped your access, or it has ended.");
            return;
          }
          if (data) onNotification(JSON.parse(data[1]));
        }
      }
    } catch {
      // The connection dropped: reconnect below, replaying from the last event id.
    }
    await new Promise((resolve) => { setTimeout(resolve, 3000); });
  }
}

const LINKS = {
  "lab-result": ["#/results", "See your results"],
  message: ["#/messages", "Read your messages"],
  appointment: ["#/appointments", "See your appointments"],
  "intake-reminder": ["#/appointments", "Answer the questions"],
  medication: ["#/health", "See your medicines"],
  triage: ["#/symptoms", "See your symptom checks"],
};

function onNotification(note) {
  // What happened before this page was opened is history, not news.
  if (Date.parse(note.at) < state.started - 5000) return;
  const [href, label] = LINKS[note.kind] || ["#/", "Go to the home page"];
  announce(note.text, { action: h("a", { href, class: "notice-link" }, label) });
  if (note.kind === "message") updateUnread();
  if (state.view && state.view.refresh) state.view.refresh(note);
}

// -- the session's end ------------------------------------------------------------------
function watchExpiry() {
  const warnAt = expiresAt() - 60_000;
  const endAt = expiresAt();
  if (!endAt) return;
  setTimeout(() => {
    if (!token()) return;
    announce("For your safety you will be signed out in 1 minute.", {
      action: h("button", { type: "button", class: "secondary", onclick: () => signIn() },
        "Stay signed in"),
    });
  }, Math.max(0, warnAt - Date.now()));
  setTimeout(() => {
    signOut("expired");
    clearNotices();
    showSignIn();
  }, Math.max(0, endAt - Date.now()));
}

async function start() {
  const params = new URLSearchParams(location.search);
  let problem = null;
  if (params.has("code") || params.has("error")) problem = await finishSignIn(params);
  if (!token()) { showSignIn(problem); return; }
  state.started = Date.now();
  try {
    await setUpAccount();
  } catch {
    showSignIn();
    return;
  }
  window.addEventListener("hashchange", route);
  // Any call that finds the session over leads to the sign-in screen, wherever it was made.
  window.addEventListener("unhandledrejection", (event) => {
    if (event.reason instanceof SignedOut) {
      event.preventDefault();
      clearNotices();
      showSignIn();
    }
  });
  window.addEventListener("portal:signed-out", () => { clearNotices(); showSignIn(); });
  await route();
  updateUnread();
  watchExpiry();
  listen();
}

start();
