// Who read or changed the patient's record through the portal, and when.
import { api } from "../api.js";
import { h, tableBox } from "../dom.js";
import { dayAndTime } from "../format.js";
import { page } from "./common.js";

const WHAT = {
  Patient: "your name and details", DiagnosticReport: "your test results", Observation: "your test results or vital signs",
  MedicationRequest: "your medicines", AllergyIntolerance: "your allergies", Condition: "your conditions",
  Immunization: "your immunizations", DocumentReference: "your documents", Appointment: "your appointments",
  Slot: "free appointment times", Communication: "your messages", QuestionnaireResponse: "your forms and symptom checks",
  summary: "your summary", Consent: "who can help you", AuditEvent: "this list",
};
const WHO = { self: "You", delegate: "Someone you gave access to", caregiver: "A caregiver you let in" };
const ACTION = { read: "looked at", write: "changed or sent" };

export async function render(main) {
  const rows = await api("/v1/me/access-log");
  // A caregiver is named as the clinic has them on record (RelatedPerson/<id>).
  let names = {};
  if (rows.some((r) => r.actor === "caregiver")) {
    try {
      const people = (await api("/v1/me/caregivers")).related_persons;
      names = Object.fromEntries(people.map((p) => [`RelatedPerson/${p.id}`, p.name]));
    } catch {
      names = {};
    }
  }
  const who = (r) => (r.actor === "caregiver" && names[r.actor_id]
    ? `${names[r.actor_id]} (caregiver)` : WHO[r.actor] || r.actor);
  page(main, "Who saw my record",
    h("p", {}, "Every time your record is opened or changed through this portal, it is written down here. If something looks wrong, ",
      h("a", { href: "#/messages/new?topic=other&subject=My%20access%20log" }, "tell us"), "."),
    rows.length ? tableBox("Access log", h("table", { id: "access-log" },
      h("caption", {}, "Newest first"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "When"), h("th", { scope: "col" }, "Who"), h("th", { scope: "col" }, "What"))),
      h("tbody", {}, rows.slice(0, 200).map((r) => h("tr", {},
        h("td", {}, dayAndTime(r.at)),
        h("td", {}, who(r)),
        h("td", {}, `${ACTION[r.action] || r.action} ${WHAT[r.resource] || r.resource}`))))))
      : h("p", {}, "Nobody has opened your record yet."));
}
