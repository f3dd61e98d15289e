// People who can help me: let a family member (someone the clinic has on record for the
// patient) see chosen parts of the portal until a date, and take that back at any time.
import { api, ApiError } from "../api.js";
import { fill, h, uid } from "../dom.js";
import { day } from "../format.js";
import { page, problem } from "./common.js";

export const PARTS = [
  ["appointments", "Appointments", "book, move or cancel visits and answer the questions before them"],
  ["messages", "Messages", "read and write to the care team"],
  ["results", "Test results", "see results and their trends"],
  ["records", "Health summary", "medicines, allergies, conditions, immunizations, documents"],
  ["triage", "Symptom checks", "check symptoms for you"],
];
const PART_NAMES = Object.fromEntries(PARTS.map(([code, name]) => [code, name]));
const STATUS = { active: "Can help now", scheduled: "Starts later", expired: "Ended (date passed)", revoked: "Ended by you" };

function inMonths(n) {
  const d = new Date();
  d.setMonth(d.getMonth() + n);
  return d.toISOString().slice(0, 10);
}

export async function render(main, ctx) {
  const status = h("div", { id: "caregiver-status", "aria-live": "polite" });
  const list = await api("/v1/me/caregivers");
  const names = Object.fromEntries(list.related_persons.map((p) => [p.id, p.name]));
  const who = (id) => names[id] || "Someone you chose";

  async function reload(message) {
    await render(main, ctx);
    if (message) fill(main.querySelector("#caregiver-status"), h("p", { class: "callout success" }, message));
  }

  const rows = list.grants.map((g) => h("tr", {},
    h("th", { scope: "row" }, who(g.related_person)),
    h("td", { "data-label": "Can see" }, g.parts.map((p) => PART_NAMES[p] || p).join(", ")),
    h("td", { "data-label": "Until" }, day(g.end)),
    h("td", { "data-label": "Now" }, STATUS[g.status] || g.status),
    h("td", { "data-label": "Change" }, g.status === "active" || g.status === "scheduled"
      ? h("button", {
        type: "button", class: "secondary",
        onclick: async (event) => {
          event.target.disabled = true;
          try {
            await api(`/v1/me/caregivers/${encodeURIComponent(g.id)}`, { method: "DELETE" });
            await reload(`${who(g.related_person)} can no longer see your record.`);
          } catch (error) {
            event.target.disabled = false;
            fill(status, problem(error instanceof ApiError ? error.message : "That did not work."));
          }
        },
      }, "Stop access", h("span", { class: "visually-hidden" }, ` for ${who(g.related_person)}`))
      : "—")));

  const personId = uid("person"), untilId = uid("until");
  const form = list.related_persons.length ? h("form", {
    id: "grant-form", novalidate: true,
    onsubmit: async (event) => {
      event.preventDefault();
      for (const old of form.querySelectorAll(".field-error")) old.remove();
      const data = new FormData(form);
      const parts = data.getAll("part");
      const until = String(data.get("until") || "");
      const errors = [];
      if (!data.get("person")) errors.push([form.querySelector("fieldset"), "Choose who may help you."]);
      if (!parts.length) errors.push([form.querySelector("fieldset.parts"), "Choose at least one thing they may see."]);
      if (!until || until <= new Date().toISOString().slice(0, 10)) {
        errors.push([form.querySelector(`#${untilId}`), "Choose a date after today."]);
      }
      if (errors.length) {
        for (const [node, message] of errors) {
          node.prepend(h("p", { class: "field-error" }, h("span", { class: "visually-hidden" }, "Error: "), message));
        }
        const first = errors[0][0];
        (first.querySelector("input") || first).focus();
        return;
      }
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      try {
        const end = new Date(`${until}T23:59:59`).toISOString();
        const grant = await api("/v1/me/caregivers", {
          method: "POST", body: { related_person: data.get("person"), parts, end },
        });
        await reload(`${who(grant.related_person)} can now help you until ${day(grant.end)}.`);
      } catch (error) {
        button.disabled = false;
        fill(status, problem(error instanceof ApiError ? error.message : "That did not work."));
      }
    },
  },
  h("h2", {}, "Let someone help you"),
  h("fieldset", { id: personId },
    h("legend", {}, "Who"),
    list.related_persons.map((p, i) => h("label", { class: "choice", for: `${personId}-${i}` },
      h("input", { type: "radio", id: `${personId}-${i}`, name: "person", value: p.id }),
      p.relationship ? `${p.name} (${p.relationship})` : p.name))),
  h("fieldset", { class: "parts" },
    h("legend", {}, "What they may see and do"),
    PARTS.map(([code, name, hint]) => h("label", { class: "choice", for: `part-${code}` },
      h("input", { type: "checkbox", id: `part-${code}`, name: "part", value: code }),
      h("span", {}, name, h("span", { class: "hint" }, hint))))),
  h("label", { for: untilId }, "Until",
    h("span", { class: "hint", id: `${untilId}-hint` }, "You can stop it sooner at any time.")),
  h("input", { type: "date", id: untilId, name: "until", value: inMonths(3), "aria-describedby": `${untilId}-hint` }),
  h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Give access")))
    : h("p", {}, "The clinic has nobody on record who could help you. Ask the clinic to add a family member.");

  page(main, "People who can help me",
    h("p", {}, "A family member can see parts of your record and act for you, for as long as you choose. "
      + "Everything they do is in ", h("a", { href: "#/access-log" }, "Who saw my record"), "."),
    status,
    list.warnings.length ? h("p", { class: "callout warning" }, list.warnings.join(" ")) : null,
    list.grants.length
      ? h("div", { class: "table-box stack-box", role: "region", "aria-label": "People who can help you", tabindex: "0" },
        h("table", { id: "caregivers", class: "stack" },
          h("caption", {}, "People who can help you"),
          h("thead", {}, h("tr", {}, ["Who", "Can see", "Until", "Now", "Change"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, rows)))
      : h("p", {}, "Nobody can see your record but you."),
    form);
  return {};
}
