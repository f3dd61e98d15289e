// Appointments: what is coming up and what is past; move, cancel (with the clinic's rules
// explained) and the questions to answer before a visit.
import { api, ApiError, newKey } from "../api.js";
import { fill, h } from "../dom.js";
import { dayAndTime, timeZone } from "../format.js";
import { page, problem, visitType } from "./common.js";

const CUTOFF_HOURS = 24;
const STATUS = {
  pending: "Waiting for the clinic to confirm", booked: "Confirmed", proposed: "Waiting for the clinic to confirm",
  cancelled: "Cancelled", fulfilled: "Done", noshow: "Missed", arrived: "Checked in",
  "checked-in": "Checked in", waitlist: "On the waiting list", "entered-in-error": "Removed by the clinic",
};
const INTAKE = {
  missing: "Not answered yet", draft: "Started, not sent yet", submitted: "Sent to the clinic",
  amended: "Sent to the clinic (changed)",
};

// Looking again for the clinic's answer: after 1 s, then doubling, the last after ~1 minute.
const RECHECK_FIRST_MS = 1000;
const RECHECK_LAST_MS = 64_000;

function waiting(a) {
  return upcoming(a) && (a.status === "pending" || a.status === "proposed" || Boolean(a.pending_slot));
}

function upcoming(a) {
  return ["booked", "pending", "proposed"].includes(a.status) && Date.parse(a.end || a.start) > Date.now();
}

function cancelPanel(appt, item, reload) {
  const status = h("div", { "aria-live": "polite" });
  const panel = h("div", { class: "callout", role: "group", "aria-label": "Cancel this appointment" },
    h("p", {}, `Cancel your appointment on ${dayAndTime(appt.start)}?`),
    h("p", {}, `You can cancel online up to ${CUTOFF_HOURS} hours before the start. Closer to the time, please call the clinic instead: the time was kept for you.`),
    h("div", { class: "actions" },
      h("button", {
        type: "button", class: "danger",
        onclick: async (event) => {
          event.target.disabled = true;
          try {
            await api(`/v1/me/appointments/${encodeURIComponent(appt.id)}/cancel`, {
              method: "POST", body: { reason_code: "pat" }, headers: { "Idempotency-Key": newKey() },
            });
            fill(status, h("p", { class: "callout success" }, "Your appointment is cancelled."));
            await reload(`Your appointment on ${dayAndTime(appt.start)} is cancelled.`);
          } catch (error) {
            event.target.disabled = false;
            fill(status, problem(error instanceof ApiError ? error.message : "The appointment could not be cancelled."));
          }
        },
      }, "Yes, cancel it"),
      h("button", { type: "button", class: "secondary", onclick: () => { panel.remove(); item.querySelector(".cancel").focus(); } }, "No, keep it")),
    status);
  return panel;
}

function appointmentItem(appt, reload) {
  const soon = Date.parse(appt.start) - Date.now() < CUTOFF_HOURS * 3_600_000;
  const item = h("li", { "data-appointment": appt.id },
    h("h3", {}, dayAndTime(appt.start)),
    h("p", {}, `${visitType(appt.visit_type, appt.visit_type_display)} with ${appt.practitioner_name || "your care team"}`),
    appt.location_name ? h("p", {}, appt.location_name) : null,
    h("p", { class: "status" }, h("strong", {}, "Status: "), STATUS[appt.status] || appt.status,
      appt.pending_slot ? ". Moving to a new time: waiting for the clinic" : ""),
    appt.status_reason ? h("p", {}, appt.status_reason) : null);
  if (upcoming(appt)) {
    item.append(h("p", {}, h("strong", {}, "Questions before the visit: "), INTAKE[appt.intake] || appt.intake));
    const actions = h("div", { class: "actions" });
    if (appt.intake !== "submitted" && appt.intake !== "amended") {
      actions.append(h("a", { class: "button", href: `#/appointments/${appt.id}/intake` }, "Answer the questions",
        h("span", { class: "visually-hidden" }, ` for ${dayAndTime(appt.start)}`)));
    }
    if (soon) {
      item.append(h("p", { class: "meta" }, `This visit is less than ${CUTOFF_HOURS} hours away: to change it, please call the clinic.`));
    } else if (appt.status === "booked" && !appt.pending_slot) {
      actions.append(
        h("a", { class: "button secondary", href: `#/appointments/${appt.id}/move` }, "Change the time",
          h("span", { class: "visually-hidden" }, ` of ${dayAndTime(appt.start)}`)),
        h("button", {
          type: "button", class: "secondary cancel",
          onclick: () => { if (!item.querySelector("[role=group]")) item.append(cancelPanel(appt, item, reload)); item.querySelector("[role=group] button").focus(); },
        }, "Cancel", h("span", { class: "visually-hidden" }, ` the appointment on ${dayAndTime(appt.start)}`)));
    }
    item.append(actions);
  }
  return item;
}

export async function render(main) {
  const coming = h("ul", { class: "list", id: "upcoming" });
  const past = h("ul", { class: "list", id: "past" });
  const done = h("div", { "aria-live": "polite", id: "appointments-status" });

  // While the clinic has yet to answer (a booking or a move), look again now and then: the
  // live notice of the answer can arrive before the appointment list has it (the gateway
  // and scheduling each take the clinic's answer from the event stream on their own), and
  // no second notice would come to refresh the page.
  let recheck = null;
  let recheckDelay = RECHECK_FIRST_MS;
  function recheckWhileWaiting(all) {
    clearTimeout(recheck);
    recheck = null;
    if (!all.some(waiting)) { recheckDelay = RECHECK_FIRST_MS; return; }
    if (recheckDelay > RECHECK_LAST_MS) return; // the notice will still refresh the page
    recheck = setTimeout(() => {
      recheck = null;
      if (coming.isConnected) load().catch(() => {});
    }, recheckDelay);
    recheckDelay *= 2;
  }

  async function load(message) {
    const all = await api("/v1/me/appointments");
    const next = all.filter(upcoming).sort((a, b) => Date.parse(a.start) - Date.parse(b.start));
    const before = all.filter((a) => !upcoming(a)).sort((a, b) => Date.parse(b.start) - Date.parse(a.start));
    fill(coming, next.length ? next.map((a) => appointmentItem(a, load)) : h("li", {}, "No upcoming appointments."));
    fill(past, before.length ? before.map((a) => appointmentItem(a, load)) : h("li", {}, "None."));
    if (message) fill(done, h("p", { class: "callout success" }, message));
    recheckWhileWaiting(all);
  }

  page(main, "Appointments",
    h("div", { class: "actions" }, h("a", { class: "button", href: "#/appointments/book" }, "Book an appointment")),
    h("p", {}, `Times are shown in your time zone (${timeZone}). You can move or cancel an appointment online up to ${CUTOFF_HOURS} hours before it starts.`),
    done,
    h("h2", {}, "Coming up"), coming,
    h("h2", {}, "Cancelled and past"), past);
  await load();
  return {
    refresh: async (note) => {
      if (note.kind === "appointment" || note.kind === "intake-reminder") await load();
    },
  };
}
