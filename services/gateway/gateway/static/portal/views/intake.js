// The questions before a visit, rendered from the EHR's Questionnaire: required items,
// questions shown only when they apply (enableWhen), messages next to the field, save a
// draft, send.
import { api, ApiError, newKey } from "../api.js";
import { fill, h, uid } from "../dom.js";
import { dayAndTime } from "../format.js";
import { page, problem } from "./common.js";

function flatten(items) {
  return items.flatMap((item) => [item, ...flatten(item.item || [])]);
}

function valueOf(item, field) {
  if (!field) return undefined;
  if (item.type === "boolean" || item.type === "choice") {
    const checked = field.querySelector("input:checked");
    if (!checked) return undefined;
    if (item.type === "boolean") return checked.value === "true";
    return checked.value;
  }
  const input = field.querySelector("input, textarea");
  const text = input.value.trim();
  if (!text) return undefined;
  if (item.type === "integer") return /^-?\d+$/.test(text) ? Number(text) : { invalid: text };
  return text;
}

function holds(condition, answers) {
  const actual = answers.get(condition.question);
  if (condition.operator === "exists") return (actual !== undefined) === Boolean(condition.answerBoolean);
  if (actual === undefined) return false;
  const key = Object.keys(condition).find((k) => k.startsWith("answer"));
  let wanted = condition[key];
  if (key === "answerCoding") wanted = wanted.code;
  switch (condition.operator) {
    case "=": return actual === wanted;
    case "!=": return actual !== wanted;
    case ">": return actual > wanted;
    case "<": return actual < wanted;
    case ">=": return actual >= wanted;
    case "<=": return actual <= wanted;
    default: return false;
  }
}

function enabled(item, answers) {
  const conditions = item.enableWhen || [];
  if (!conditions.length) return true;
  const results = conditions.map((c) => holds(c, answers));
  return item.enableBehavior === "any" ? results.some(Boolean) : results.every(Boolean);
}

function fieldFor(item, previous) {
  const id = uid("q");
  const errorId = `${id}-error`;
  const label = [item.text, item.required ? h("span", { class: "hint" }, "Required") : h("span", { class: "hint" }, "Optional")];
  const error = h("p", { class: "field-error", id: errorId, hidden: true });
  const wrap = h("div", { class: "field", "data-link-id": item.linkId });
  if (item.type === "boolean" || item.type === "choice") {
    const options = item.type === "boolean"
      ? [["true", "Yes"], ["false", "No"]]
      : (item.answerOption || []).map((o) => [o.valueCoding.code, o.valueCoding.display || o.valueCoding.code]);
    const current = previous === undefined ? undefined : String(previous);
    wrap.append(h("fieldset", { "aria-describedby": errorId },
      h("legend", {}, label), error,
      options.map(([value, text], i) => h("label", { class: "choice", for: `${id}-${i}` },
        h("input", { type: "radio", id: `${id}-${i}`, name: id, value, checked: current === value }), text))));
  } else {
    const common = { id, name: id, "aria-describedby": errorId, required: Boolean(item.required) };
    const input = item.type === "text"
      ? h("textarea", { ...common, rows: "3", maxlength: item.maxLength || 2000 })
      : h("input", { ...common, type: "text", inputmode: item.type === "integer" ? "numeric" : null,
        autocomplete: "off" });
    if (previous !== undefined) input.value = String(previous);
    wrap.append(h("label", { for: id }, label), error, input);
  }
  return wrap;
}

function previousAnswers(intake) {
  const out = new Map();
  for (const a of intake.answers || []) {
    const value = a.value_coding ? a.value_coding.code
      : a.value_boolean ?? a.value_integer ?? a.value_string;
    out.set(a.link_id, value);
  }
  return out;
}

export async function render(main, ctx) {
  const [appointmentId] = ctx.params;
  const path = `/v1/me/appointments/${encodeURIComponent(appointmentId)}`;
  const [appointment, intake] = await Promise.all([api(path), api(`${path}/intake`)]);
  const items = flatten(intake.form.item || []).filter((i) => i.type !== "group" && i.type !== "display");
  const before = previousAnswers(intake);
  const fields = new Map(items.map((item) => [item.linkId, fieldFor(item, before.get(item.linkId))]));
  const summary = h("div", { id: "error-summary" });
  const status = h("div", { "aria-live": "polite", id: "intake-status" });
  const sent = intake.status === "submitted" || intake.status === "amended";

  function answers() {
    const out = new Map();
    for (const item of items) {
      const value = valueOf(item, fields.get(item.linkId));
      if (value !== undefined) out.set(item.linkId, value);
    }
    return out;
  }

  function applyEnableWhen() {
    const given = answers();
    for (const item of items) {
      const on = enabled(item, given);
      const field = fields.get(item.linkId);
      field.hidden = !on;
      for (const control of field.querySelectorAll("input, textarea")) control.disabled = !on;
    }
  }

  function payload() {
    const given = answers();
    const out = [];
    for (const item of items) {
      if (!given.has(item.linkId) || fields.get(item.linkId).hidden) continue;
      const value = given.get(item.linkId);
      const answer = { link_id: item.linkId };
      if (item.type === "boolean") answer.value_boolean = value;
      else if (item.type === "integer") answer.value_integer = value;
      else if (item.type === "choice") {
        const option = (item.answerOption || []).find((o) => o.valueCoding.code === value);
        answer.value_coding = { ...option.valueCoding };
      } else answer.value_string = value;
      out.push(answer);
    }
    return out;
  }

  function showErrors(problems) {
    for (const field of fields.values()) {
      field.classList.remove("invalid");
      const error = field.querySelector(".field-error");
      error.hidden = true;
      fill(error);
      for (const control of field.querySelectorAll("input, textarea")) control.removeAttribute("aria-invalid");
    }
    if (!problems.length) { fill(summary); return; }
    const links = [];
    for (const { linkId, message } of problems) {
      const field = fields.get(linkId);
      if (!field) continue;
      field.classList.add("invalid");
      const error = field.querySelector(".field-error");
      fill(error, h("span", { class: "visually-hidden" }, "Error: "), message);
      error.hidden = false;
      const control = field.querySelector("input, textarea");
      for (const c of field.querySelectorAll("input, textarea")) c.setAttribute("aria-invalid", "true");
      links.push(h("li", {}, h("a", { href: `#${control.id}`, onclick: (e) => { e.preventDefault(); control.focus(); } }, message)));
    }
    fill(summary, h("div", { class: "error-summary", role: "alert", tabindex: "-1" },
      h("h2", {}, "Please check your answers"), h("ul", {}, links)));
    summary.firstChild.focus();
  }

  function check() {
    const given = answers();
    const problems = [];
    for (const item of items) {
      if (fields.get(item.linkId).hidden) continue;
      const value = given.get(item.linkId);
      if (value && typeof value === "object" && "invalid" in value) {
        problems.push({ linkId: item.linkId, message: `Enter a whole number for "${item.text}", for example 3.` });
      } else if (item.type === "integer" && /from 0 .* to 10/.test(item.text) && (value < 0 || value > 10)) {
        problems.push({ linkId: item.linkId, message: "Enter a number from 0 to 10." });
      } else if (item.required && value === undefined) {
        problems.push({ linkId: item.linkId, missing: true, message: `Please answer: ${item.text}` });
      }
    }
    return problems;
  }

  async function send(kind) {
    fill(status);
    const problems = kind === "draft" ? check().filter((p) => !p.missing) : check();
    showErrors(problems);
    if (problems.length) return;
    try {
      if (kind === "draft") {
        await api(`${path}/intake/draft`, { method: "PUT", body: { answers: payload() } });
        fill(status, h("p", { class: "callout success" }, "Your answers are saved. They are not sent to the clinic yet: come back to finish and send them."));
      } else {
        const url = sent ? `${path}/intake/amend` : `${path}/intake`;
        await api(url, { method: "POST", body: { answers: payload() }, headers: { "Idempotency-Key": newKey() } });
        fill(status, h("div", { class: "callout success", tabindex: "-1", id: "intake-sent" },
          h("p", {}, "Thank you. Your answers were sent to the clinic."),
          h("p", {}, h("a", { href: "#/appointments" }, "Back to appointments"))));
        status.querySelector("#intake-sent").focus();
      }
    } catch (error) {
      if (error instanceof ApiError && error.body && Array.isArray(error.body.items)) {
        showErrors(error.body.items.map((p) => ({
          linkId: p.link_id,
          message: `${(items.find((i) => i.linkId === p.link_id) || {}).text || "This question"}: ${p.problem}.`,
        })));
      } else {
        fill(status, problem(error.message || "Your answers could not be sent. Please try again."));
      }
    }
  }

  const form = h("form", {
    id: "intake-form", novalidate: true,
    onsubmit: (event) => { event.preventDefault(); send("submit"); },
    oninput: applyEnableWhen, onchange: applyEnableWhen,
  },
  [...fields.values()],
  h("div", { class: "actions" },
    h("button", { type: "submit" }, sent ? "Send the changes" : "Send to the clinic"),
    h("button", { type: "button", class: "secondary", onclick: () => send("draft") }, "Save and finish later")));
  page(main, intake.form.title || "Questions before your visit",
    h("p", {}, h("a", { href: "#/appointments" }, "Back to appointments")),
    h("p", {}, `For your appointment on ${dayAndTime(appointment.start)} with ${appointment.practitioner_name || "your care team"}.`),
    sent ? h("p", { class: "callout" }, "You already sent your answers. You can change them and send them again.") : null,
    intake.status === "draft" ? h("p", { class: "callout" }, "You saved some answers earlier. Finish them and send them to the clinic.") : null,
    summary, form, status);
  applyEnableWhen();
}
