// Pieces several screens share: result values and flags in words, headings, errors.
import { fill, h } from "../dom.js";
import { number } from "../format.js";

export function flagBadge(flag) {
  if (!flag) return null;
  return h("span", { class: `flag flag-${flag.code}` }, flag.label);
}

/** The name of a test as people say it ("Hemoglobin A1c (HbA1c)"), not its lab code name. */
export function testName(observation) {
  const explained = observation.explanation;
  if (explained && explained.known && explained.name) return explained.name;
  return (observation.code && (observation.code.display || observation.code.code)) || "Test";
}

export function valueText(observation) {
  const q = observation.value_quantity;
  if (q && q.value !== null && q.value !== undefined) return `${number(q.value)} ${q.unit || ""}`.trim();
  if (observation.value_string) return observation.value_string;
  if (observation.value_coding) return observation.value_coding.display || observation.value_coding.code;
  return "No value";
}

export function rangeText(observation) {
  const range = (observation.reference_ranges || [])[0];
  if (!range) return "No usual range given";
  if (range.text) return range.text;
  const unit = (range.low || range.high || {}).unit || "";
  if (range.low && range.high) return `${number(range.low.value)} to ${number(range.high.value)} ${unit}`.trim();
  if (range.high) return `Below ${number(range.high.value)} ${unit}`.trim();
  if (range.low) return `Above ${number(range.low.value)} ${unit}`.trim();
  return "No usual range given";
}

export function isAbnormal(observation) {
  return Boolean(observation.flag && observation.flag.code !== "normal");
}

export function page(main, title, ...children) {
  fill(main, h("h1", { tabindex: "-1" }, title), children);
}

export function problem(message) {
  return h("p", { class: "callout error", role: "alert" }, message);
}

/** Visit type as plain words ("Follow-up visit"), from the EHR's display text. */
export function visitType(code, display) {
  const words = {
    ROUTINE: "Routine appointment", FOLLOWUP: "Follow-up visit", WALKIN: "Walk-in visit",
    CHECKUP: "Check-up", EMERGENCY: "Urgent visit",
  };
  return words[code] || display || code || "Appointment";
}

/** A clinician's name from a slot or appointment (the name the EHR gave, else its id). */
export function clinician(id, names = {}) {
  if (names[id]) return names[id];
  if (!id) return "Any clinician";
  const [title, ...rest] = id.split("-");
  const family = rest.map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join(" ");
  const titles = { dr: "Dr.", np: "Nurse practitioner", rn: "Nurse" };
  return `${titles[title] || title} ${family}`.trim();
}
