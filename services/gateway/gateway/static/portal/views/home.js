// Home: a greeting by name, what needs attention first, and the next appointment.
import { api } from "../api.js";
import { h } from "../dom.js";
import { day, dayAndTime, timeZone } from "../format.js";
import { flagBadge, isAbnormal, page, testName, valueText, visitType } from "./common.js";

function greeting() {
  const hour = Number(new Intl.DateTimeFormat("en-GB", { hour: "numeric", hour12: false, timeZone })
    .format(new Date()));
  if (hour < 12) return "Good morning";
  if (hour < 18) return "Good afternoon";
  return "Good evening";
}

const RECENT_DAYS = 120;

async function build(main, ctx) {
  const [summary, triage] = await Promise.all([
    api("/v1/me/summary"),
    ctx.mayUse && !ctx.mayUse("triage") ? [] : api("/v1/me/triage").catch(() => []),
  ]);
  const name = ctx.profile ? ctx.profile.given_name : "";
  const attention = [];
  const recent = Date.now() - RECENT_DAYS * 86_400_000;
  for (const report of summary.lab_results || []) {
    for (const obs of report.observations || []) {
      if (isAbnormal(obs) && Date.parse(report.issued || report.effective) > recent) {
        attention.push(h("li", {},
          h("a", { href: `#/results/${report.id}` }, `${testName(obs)}: ${valueText(obs)} `),
          flagBadge(obs.flag), h("span", { class: "meta" }, ` (${day(report.effective)})`)));
      }
    }
  }
  if (summary.unread_messages) {
    attention.push(h("li", {}, h("a", { href: "#/messages" },
      summary.unread_messages === 1 ? "1 new message from your care team"
        : `${summary.unread_messages} new messages from your care team`)));
  }
  const upcoming = (a) => ["booked", "pending", "proposed"].includes(a.status) && Date.parse(a.start) > Date.now();
  const coming = (summary.appointments || []).filter(upcoming)
    .sort((a, b) => Date.parse(a.start) - Date.parse(b.start));
  for (const appt of coming) {
    if (appt.intake === "missing" || appt.intake === "draft") {
      attention.push(h("li", {}, h("a", { href: `#/appointments/${appt.id}/intake` },
        `Answer the questions before your visit on ${day(appt.start)}`)));
    }
  }
  // The latest symptom check of the past week, when it said "book" or "be seen today".
  const week = Date.now() - 7 * 86_400_000;
  const latest = (triage || []).filter((c) => Date.parse(c.completed_at) > week)
    .sort((a, b) => Date.parse(b.completed_at) - Date.parse(a.completed_at))[0];
  const followUp = latest && ["urgent", "routine"].includes(latest.urgency) ? latest : null;
  if (followUp) {
    attention.push(h("li", {}, h("a", { href: followUp.urgency === "urgent" ? "#/appointments/book?date=today" : "#/appointments/book" },
      `Your symptom check on ${day(followUp.completed_at)} said to ${followUp.urgency === "urgent" ? "be seen today" : "book an appointment"}`)));
  }
  const next = coming[0];
  page(main, name ? `${greeting()}, ${name}` : greeting(),
    (summary.warnings || []).map((w) => h("p", { class: "callout warning" },
      `Some of your information cannot be shown right now (${w.part.replace(/_/g, " ")}). Please try again later.`)),
    h("section", { "aria-labelledby": "attention-h" },
      h("h2", { id: "attention-h" }, "What needs your attention"),
      attention.length ? h("ul", { class: "list", id: "attention" }, attention)
        : h("p", { id: "attention" }, "Nothing needs your attention right now.")),
    h("section", { "aria-labelledby": "next-h" },
      h("h2", { id: "next-h" }, "Your next appointment"),
      next ? h("div", { class: "card", id: "next-appointment" },
        h("p", {}, h("strong", {}, dayAndTime(next.start))),
        h("p", {}, `${visitType(next.visit_type, next.visit_type_display)} with ${next.practitioner_name || "your care team"}`),
        h("p", {}, next.location_name || ""),
        next.status === "pending" ? h("p", {}, "Waiting for the clinic to confirm.") : null,
        h("p", {}, h("a", { href: "#/appointments" }, "See or change your appointments")))
        : summary.appointments === null
          // Left out of the summary (scheduling slow or away): not "no appointments".
          ? h("p", {}, "Your appointments cannot be shown right now. ", h("a", { href: "#/appointments" }, "Try your appointments page"))
          : h("p", {}, "You have no appointments booked. ", h("a", { href: "#/appointments/book" }, "Book an appointment"))),
    h("section", { "aria-labelledby": "todo-h" },
      h("h2", { id: "todo-h" }, "What you can do here"),
      h("ul", { class: "cards" },
        h("li", { class: "card" }, h("a", { href: "#/results" }, "See your test results")),
        h("li", { class: "card" }, h("a", { href: "#/messages/new" }, "Write to your care team")),
        h("li", { class: "card" }, h("a", { href: "#/appointments/book" }, "Book an appointment")),
        h("li", { class: "card" }, h("a", { href: "#/symptoms" }, "Check your symptoms")))));
}

export async function render(main, ctx) {
  await build(main, ctx);
  return {
    refresh: async () => {
      await build(main, ctx);
    },
  };
}
