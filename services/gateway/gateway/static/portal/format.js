// Dates in words ("4 September 2026") and times in the patient's own time zone (the
// device's), in plain English.

export const timeZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

const dateFmt = new Intl.DateTimeFormat("en-GB", {
  day: "numeric", month: "long", year: "numeric", timeZone,
});
const weekdayFmt = new Intl.DateTimeFormat("en-GB", {
  weekday: "long", day: "numeric", month: "long", year: "numeric", timeZone,
});
const timeFmt = new Intl.DateTimeFormat("en-GB", {
  hour: "numeric", minute: "2-digit", hour12: true, timeZone,
});
const dayKeyFmt = new Intl.DateTimeFormat("en-CA", {
  year: "numeric", month: "2-digit", day: "2-digit", timeZone,
});

function asDate(value) {
  if (!value) return null;
  // A bare date (birth date, "2026-09-04") is a calendar day, not midnight UTC.
  if (/^\d{4}-\d{2}-\d{2}$/.test(value)) {
    const [y, m, d] = value.split("-").map(Number);
    return new Date(Date.UTC(y, m - 1, d, 12));
  }
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** "4 September 2026" */
export function day(value) {
  const date = asDate(value);
  return date ? dateFmt.format(date) : "date not known";
}

/** "Friday 4 September 2026" */
export function longDay(value) {
  const date = asDate(value);
  return date ? weekdayFmt.format(date).replace(",", "") : "date not known";
}

/** "2:30 pm" in the patient's time zone. */
export function time(value) {
  const date = asDate(value);
  return date ? timeFmt.format(date).replace(/\s/g, " ") : "";
}

/** "Friday 4 September 2026 at 2:30 pm" */
export function dayAndTime(value) {
  return `${longDay(value)} at ${time(value)}`;
}

/** "2026-09-04" in the patient's time zone (for grouping and date inputs). */
export function dayKey(value) {
  const date = asDate(value);
  return date ? dayKeyFmt.format(date) : "";
}

/** The start of a local calendar day ("2026-09-04") as an RFC 3339 instant with offset. */
export function startOfLocalDay(key) {
  const [y, m, d] = key.split("-").map(Number);
  // The offset of the patient's zone at that day: find the UTC instant whose local
  // calendar date and time are the day's midnight.
  let guess = Date.UTC(y, m - 1, d, 0, 0);
  for (let i = 0; i < 2; i += 1) {
    const parts = Object.fromEntries(new Intl.DateTimeFormat("en-US", {
      timeZone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit",
    }).formatToParts(new Date(guess)).map((p) => [p.type, p.value]));
    const local = Date.UTC(+parts.year, +parts.month - 1, +parts.day, +parts.hour, +parts.minute);
    guess -= local - Date.UTC(y, m - 1, d, 0, 0);
  }
  return new Date(guess).toISOString();
}

/** A number as people write it (no trailing zeros). */
export function number(value) {
  if (value === null || value === undefined) return "";
  return new Intl.NumberFormat("en-GB", { maximumFractionDigits: 2 }).format(value);
}

/** Sentence case for codes and labels shown to people ("amended" -> "Amended"). */
export function sentence(text) {
  if (!text) return "";
  return text.charAt(0).toUpperCase() + text.slice(1);
}
