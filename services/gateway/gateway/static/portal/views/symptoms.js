// Symptom check: the triage session asks its follow-up questions one at a time; age and
// sex come from the record; it ends with the next step as a button.
import { api, ApiError } from "../api.js";
import { fill, h, uid } from "../dom.js";
import { day } from "../format.js";
import { page, problem } from "./common.js";

const SEXES = { female: "Female", male: "Male", other: "Other", unknown: "Prefer not to say" };
const URGENCY = {
  emergency: "This could be an emergency",
  urgent: "You should be seen today",
  routine: "Book an appointment",
  "self-care": "You can probably look after this at home",
};

function nextStep(outcome) {
  const steps = {
    emergency: [h("a", { class: "button danger", href: "tel:911", id: "next-step" }, "Call 911 now")],
    urgent: [
      h("a", { class: "button", href: "#/appointments/book?date=today", id: "next-step" }, "See appointments for today"),
      h("a", { class: "button secondary", href: "#/messages/new?topic=clinical-question&subject=About%20my%20symptom%20check" },
        "Ask the nurse team to contact you"),
    ],
    routine: [h("a", { class: "button", href: "#/appointments/book", id: "next-step" }, "Book an appointment")],
    "self-care": [
      h("a", { class: "button", href: "#/", id: "next-step" }, "I will look after myself: back to home"),
      h("a", { class: "button secondary", href: "#/messages/new?topic=clinical-question&subject=About%20my%20symptom%20check" },
        "Ask my care team instead"),
    ],
  };
  return h("div", { class: `urgency urgency-${outcome.urgency}`, id: "triage-outcome", tabindex: "-1" },
    h("h2", {}, URGENCY[outcome.urgency] || "Your result"),
    h("p", { class: "advice" }, outcome.advice),
    h("div", { class: "actions" }, steps[outcome.urgency] || []),
    h("p", { class: "meta" }, "This check does not replace a clinician. If you get worse, call the clinic or 911."));
}

function questionForm(question, onAnswer, onFinish) {
  const id = uid("answer");
  const error = h("p", { class: "field-error", id: `${id}-error`, hidden: true });
  let control;
  if (question.kind === "yesno" || question.kind === "choice") {
    const options = question.kind === "yesno" ? [["yes", "Yes"], ["no", "No"]]
      : question.choices.map((c) => [c, c]);
    control = h("fieldset", { "aria-describedby": `${id}-error` },
      h("legend", { class: "triage-question" }, question.text), error,
      options.map(([value, label], i) => h("label", { class: "choice", for: `${id}-${i}` },
        h("input", { type: "radio", name: id, id: `${id}-${i}`, value }), label)));
  } else {
    control = h("div", {},
      h("label", { for: id, class: "triage-question" }, question.text), error,
      h("input", { id, type: "text", inputmode: "decimal", "aria-describedby": `${id}-error`, autocomplete: "off" }));
  }
  const form = h("form", {
    id: "triage-question", novalidate: true,
    onsubmit: (event) => {
      event.preventDefault();
      let value;
      if (question.kind === "yesno") {
        const checked = form.querySelector("input:checked");
        value = checked ? checked.value === "yes" : undefined;
      } else if (question.kind === "choice") {
        const checked = form.querySelector("input:checked");
        value = checked ? checked.value : undefined;
      } else {
        const text = form.querySelector("input").value.trim().replace(",", ".");
        value = text && !Number.isNaN(Number(text)) ? Number(text) : undefined;
      }
      if (value === undefined) {
        fill(error, h("span", { class: "visually-hidden" }, "Error: "),
          question.kind === "number" ? "Enter a number, for example 38.5." : "Choose an answer.");
        error.hidden = false;
        for (const c of form.querySelectorAll("input")) c.setAttribute("aria-invalid", "true");
        form.querySelector("input").focus();
        return;
      }
      onAnswer(value);
    },
  }, control,
  h("div", { class: "actions" }, h("button", { type: "submit" }, "Next"),
    h("button", { type: "button", class: "secondary", onclick: onFinish }, "Skip the other questions")));
  return form;
}

export async function render(main, ctx) {
  const profile = ctx.profile || {};
  const area = h("div", { id: "triage-area" });
  const textId = uid("text"), ageId = uid("age"), sexId = uid("sex");
  let session = null;
  let asked = 0;

  function show(outcome) {
    session = outcome;
    const pending = outcome.status === "open" ? outcome.questions : [];
    if (pending.length) {
      asked += 1;
      const question = pending[0];
      fill(area,
        h("p", { class: "meta", id: "question-count" }, `Question ${asked}`),
        questionForm(question, (value) => answer({ [question.id]: value }), () => answer({}, true)));
      area.querySelector("input").focus();
      return;
    }
    fill(area, nextStep(outcome));
    area.querySelector("#triage-outcome").focus();
  }

  async function answer(answers, finish = false) {
    try {
      const next = await api(`/v1/me/triage/sessions/${encodeURIComponent(session.session_id)}/answers`, {
        method: "POST", body: { answers, finish },
      });
      // Nothing left to ask (or the same question again): finish with what we know.
      const stuck = next.questions.length && next.questions[0].id in answers;
      if (next.status === "open" && (!next.questions.length || stuck)) {
        show(await api(`/v1/me/triage/sessions/${encodeURIComponent(session.session_id)}/answers`, {
          method: "POST", body: { answers: {}, finish: true },
        }));
        return;
      }
      show(next);
    } catch (error) {
      fill(area, problem(error instanceof ApiError ? error.message : "The check could not go on. If you are worried, call the clinic."));
    }
  }

  const start = h("form", {
    id: "triage-start", novalidate: true,
    onsubmit: async (event) => {
      event.preventDefault();
      const text = start.querySelector(`#${textId}`);
      const error = start.querySelector(`#${textId}-error`);
      if (text.value.trim().length < 3) {
        fill(error, h("span", { class: "visually-hidden" }, "Error: "), "Tell us what is wrong, in a few words.");
        error.hidden = false;
        text.setAttribute("aria-invalid", "true");
        text.focus();
        return;
      }
      error.hidden = true;
      text.removeAttribute("aria-invalid");
      asked = 0;
      try {
        show(await api("/v1/me/triage/sessions", {
          method: "POST",
          body: {
            age: Number(start.querySelector(`#${ageId}`).value),
            sex: start.querySelector(`#${sexId}`).value,
            text: text.value.trim(),
          },
        }));
      } catch (failure) {
        fill(area, problem(failure instanceof ApiError ? failure.message : "The check could not start. If you are worried, call the clinic."));
      }
    },
  },
  h("label", { for: textId }, "What is wrong? Describe it in your own words.",
    h("span", { class: "hint" }, "For example: a cough and a fever since yesterday.")),
  h("p", { class: "field-error", id: `${textId}-error`, hidden: true }),
  h("textarea", { id: textId, rows: "3", maxlength: "2000", "aria-describedby": `${textId}-error` }),
  h("details", {},
    h("summary", {}, `About you, from your record: ${profile.age ?? "age not known"}${profile.age !== undefined && profile.age !== null ? " years old" : ""}, ${(SEXES[profile.sex] || "sex not recorded").toLowerCase()}`),
    h("p", { class: "hint" }, "Change these only if they are wrong or the check is for a child in your care."),
    h("label", { for: ageId }, "Age in years"),
    h("input", { id: ageId, type: "number", min: "0", max: "130", value: profile.age ?? 40, inputmode: "numeric" }),
    h("label", { for: sexId }, "Sex"),
    h("select", { id: sexId }, Object.entries(SEXES).map(([value, label]) => h("option", { value, selected: (profile.sex || "unknown") === value }, label)))),
  h("div", { class: "actions" }, h("button", { type: "submit" }, "Start the check")));

  const past = await api("/v1/me/triage").catch(() => []);
  page(main, "Check your symptoms",
    h("p", { class: "callout error" }, "If you have chest pain, trouble breathing, or signs of a stroke, call ",
      h("a", { href: "tel:911" }, "911"), " now."),
    h("p", {}, "Answer a few questions, one at a time. At the end you will see what to do next."),
    start, area,
    past.length ? h("section", { "aria-labelledby": "past-h" },
      h("h2", { id: "past-h" }, "Your earlier checks"),
      h("ul", { class: "list" }, past.slice(0, 5).map((s) => h("li", {},
        `${day(s.completed_at)}: ${URGENCY[s.urgency] || s.urgency}`)))) : null);
}
