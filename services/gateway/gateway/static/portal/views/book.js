// Booking, and moving an appointment to another time: search free times by date,
// clinician and visit type, choose one, confirm.
import { api, ApiError, newKey } from "../api.js";
import { fill, h, uid } from "../dom.js";
import { dayAndTime, dayKey, longDay, startOfLocalDay, time, timeZone } from "../format.js";
import { clinician, page, problem, visitType } from "./common.js";

export async function render(main, ctx) {
  const [moving] = ctx.params;
  const appointments = await api("/v1/me/appointments");
  const names = Object.fromEntries(appointments.filter((a) => a.practitioner_name)
    .map((a) => [a.practitioner, a.practitioner_name]));
  const current = moving ? appointments.find((a) => a.id === moving) : null;
  // The clinicians and visit types on offer over the next weeks, for the filters.
  const sample = await api("/v1/slots?limit=200");
  const clinicians = [...new Set(sample.items.map((s) => s.practitioner).filter(Boolean))];
  const types = new Map(sample.items.map((s) => [s.visit_type, visitType(s.visit_type, s.visit_type_display)]));
  const dateId = uid("date"), whoId = uid("who"), typeId = uid("type");
  const results = h("div", { id: "slot-results", tabindex: "-1" });
  const confirm = h("div", { id: "confirm" });

  function choose(slot) {
    const reasonId = uid("reason");
    const status = h("div", { "aria-live": "polite" });
    fill(confirm,
      h("section", { class: "card", "aria-labelledby": "confirm-h" },
        h("h2", { id: "confirm-h", tabindex: "-1" }, moving ? "Move your appointment to this time?" : "Book this time?"),
        h("p", {}, h("strong", {}, dayAndTime(slot.start))),
        h("p", {}, `${visitType(slot.visit_type, slot.visit_type_display)} with ${clinician(slot.practitioner, names)}`),
        moving ? null : [
          h("label", { for: reasonId }, "Why do you want to come? (optional)",
            h("span", { class: "hint" }, "This helps the clinic get ready. Do not write anything urgent here.")),
          h("textarea", { id: reasonId, rows: "3", maxlength: "500" }),
        ],
        h("div", { class: "actions" },
          h("button", {
            type: "button", id: "confirm-booking",
            onclick: async (event) => {
              event.target.disabled = true;
              try {
                if (moving) {
                  await api(`/v1/me/appointments/${encodeURIComponent(moving)}/reschedule`, {
                    method: "POST", body: { slot_id: slot.id }, headers: { "Idempotency-Key": newKey() },
                  });
                } else {
                  const reason = confirm.querySelector("textarea").value.trim();
                  await api("/v1/me/appointments", {
                    method: "POST", body: reason ? { slot_id: slot.id, reason } : { slot_id: slot.id },
                    headers: { "Idempotency-Key": newKey() },
                  });
                }
                fill(confirm, h("div", { class: "callout success", role: "status", tabindex: "-1", id: "booked" },
                  h("p", {}, moving
                    ? `We asked the clinic to move your appointment to ${dayAndTime(slot.start)}. You will see a notice here when it is done.`
                    : `Your appointment on ${dayAndTime(slot.start)} is requested. You will see a notice here when the clinic confirms it.`),
                  h("p", {}, h("a", { href: "#/appointments" }, "See your appointments"))));
                confirm.querySelector("#booked").focus();
              } catch (error) {
                event.target.disabled = false;
                fill(status, problem(error instanceof ApiError ? error.message : "That did not work. Please try again."));
              }
            },
          }, moving ? "Yes, move it" : "Book this appointment"),
          h("button", { type: "button", class: "secondary", onclick: () => { fill(confirm); results.focus(); } }, "Choose another time")),
        status));
    confirm.querySelector("h2").focus();
  }

  async function search(form) {
    const data = new FormData(form);
    const params = new URLSearchParams({ limit: "60" });
    if (data.get("date")) params.set("start", startOfLocalDay(data.get("date")));
    if (data.get("practitioner")) params.set("practitioner", data.get("practitioner"));
    if (data.get("visit_type")) params.set("visit_type", data.get("visit_type"));
    fill(confirm);
    let page1;
    try {
      page1 = await api(`/v1/slots?${params}`);
    } catch (error) {
      fill(results, problem(error.message));
      return;
    }
    const byDay = new Map();
    for (const slot of page1.items) {
      const key = dayKey(slot.start);
      if (!byDay.has(key)) byDay.set(key, []);
      byDay.get(key).push(slot);
    }
    fill(results,
      h("h2", {}, page1.items.length ? `${page1.items.length} free times` : "No free times"),
      page1.items.length ? null : h("p", {}, "Try another date or clinician, or call the clinic."),
      [...byDay.entries()].slice(0, 7).map(([, slots]) => h("section", { "aria-label": longDay(slots[0].start) },
        h("h3", {}, longDay(slots[0].start)),
        h("ul", { class: "slots" }, slots.map((slot) => h("li", {},
          h("button", { type: "button", class: "secondary slot", "data-slot": slot.id, onclick: () => choose(slot) },
            time(slot.start), h("span", { class: "visually-hidden" },
              ` on ${longDay(slot.start)}, ${visitType(slot.visit_type, slot.visit_type_display)} with ${clinician(slot.practitioner, names)}`))))))));
    results.focus();
  }

  const form = h("form", {
    "aria-label": "Search free times",
    onsubmit: async (event) => { event.preventDefault(); await search(event.target); },
  },
  h("label", { for: dateId }, "From which day?"),
  h("input", { id: dateId, name: "date", type: "date", min: dayKey(new Date().toISOString()) }),
  h("label", { for: whoId }, "Clinician"),
  h("select", { id: whoId, name: "practitioner" }, h("option", { value: "" }, "Any clinician"),
    clinicians.map((id) => h("option", { value: id, selected: current && current.practitioner === id }, clinician(id, names)))),
  h("label", { for: typeId }, "Type of visit"),
  h("select", { id: typeId, name: "visit_type" }, h("option", { value: "" }, "Any type"),
    [...types.entries()].map(([code, label]) => h("option", { value: code }, label))),
  h("div", { class: "actions" }, h("button", { type: "submit" }, "Find free times")));

  const wanted = ctx.query.get("date") === "today" ? dayKey(new Date().toISOString()) : ctx.query.get("date");
  if (wanted) form.querySelector(`#${dateId}`).value = wanted;
  page(main, moving ? "Change the time of your appointment" : "Book an appointment",
    h("p", {}, h("a", { href: "#/appointments" }, "Back to appointments")),
    current ? h("p", { class: "callout" }, `Your appointment is now on ${dayAndTime(current.start)} with ${current.practitioner_name || "your care team"}. Choose a new time below; it keeps its time until the clinic has moved it.`) : null,
    h("p", {}, `Times are shown in your time zone (${timeZone}).`),
    ctx.query.get("date") === "today" ? h("p", { class: "callout" }, "These are the free times from today. If none is soon enough, call the clinic.") : null,
    form, results, confirm);
  if (wanted) await search(form);
}
