// Test results: each value with its unit, the usual range and a marker in words; filters
// by test and by date.
import { api } from "../api.js";
import { fill, h, uid } from "../dom.js";
import { day, startOfLocalDay } from "../format.js";
import { flagBadge, page, rangeText, testName, valueText } from "./common.js";

const COLUMNS = ["Test", "Your result", "Usual range", "Compared with usual"];

// On a phone each row shows as a block with its column names (CSS), so the marker is never
// scrolled out of view; explicit roles keep it a table for screen readers either way.
function reportTable(report) {
  const caption = `Results from ${day(report.effective)}`;
  return h("div", { class: "table-box stack-box" }, h("table", { class: "stack", role: "table", "aria-label": caption },
    h("thead", { role: "rowgroup" }, h("tr", { role: "row" },
      COLUMNS.map((c) => h("th", { scope: "col", role: "columnheader" }, c)))),
    h("tbody", { role: "rowgroup" }, (report.observations || []).map((obs) => h("tr", { role: "row" },
      h("th", { scope: "row", role: "rowheader" }, testName(obs)),
      h("td", { role: "cell", "data-label": COLUMNS[1] }, valueText(obs)),
      h("td", { role: "cell", "data-label": COLUMNS[2] }, rangeText(obs)),
      h("td", { role: "cell", "data-label": COLUMNS[3] }, flagBadge(obs.flag) || "Not given"))))));
}

function reportItem(report) {
  const title = (report.observations || []).length === 1
    ? testName(report.observations[0]) : (report.code.display || "Test results");
  return h("li", { "data-report": report.id },
    h("h2", {}, h("a", { href: `#/results/${report.id}` }, title)),
    h("p", { class: "meta" }, `Taken on ${day(report.effective)}`,
      report.status === "amended" || report.status === "corrected"
        ? h("strong", {}, ". This result was corrected by the lab") : null,
      report.status === "preliminary" ? h("strong", {}, ". Early result: it may change") : null),
    reportTable(report),
    h("p", {}, h("a", { href: `#/results/${report.id}` }, "What this means and how it has changed",
      h("span", { class: "visually-hidden" }, ` (${title}, ${day(report.effective)})`))));
}

export async function render(main) {
  const first = await api("/v1/me/lab-results?limit=50");
  const tests = new Map();
  for (const report of first.items) {
    for (const obs of report.observations || []) tests.set(obs.code.code, testName(obs));
  }
  const testId = uid("test"), fromId = uid("from"), toId = uid("to");
  const list = h("ul", { class: "list", id: "results" });
  const count = h("p", { id: "results-count" });
  let current = first;

  function show(data) {
    current = data;
    fill(count, data.items.length === 1 ? "1 result" : `${data.items.length} results`);
    fill(list, data.items.length ? data.items.map(reportItem)
      : h("li", {}, "No results match. Try another test or dates."));
  }

  async function load(form) {
    const params = new URLSearchParams({ limit: "50" });
    const data = new FormData(form);
    if (data.get("code")) params.set("code", data.get("code"));
    if (data.get("from")) params.set("since", startOfLocalDay(data.get("from")));
    if (data.get("to")) {
      const next = new Date(`${data.get("to")}T12:00:00Z`);
      next.setUTCDate(next.getUTCDate() + 1);
      params.set("until", startOfLocalDay(next.toISOString().slice(0, 10)));
    }
    show(await api(`/v1/me/lab-results?${params}`));
  }

  const form = h("form", {
    class: "filters", "aria-label": "Filter results",
    onsubmit: async (event) => { event.preventDefault(); await load(event.target); count.focus(); },
  },
  h("label", { for: testId }, "Test"),
  h("select", { id: testId, name: "code" }, h("option", { value: "" }, "All tests"),
    [...tests.entries()].sort((a, b) => a[1].localeCompare(b[1]))
      .map(([code, name]) => h("option", { value: code }, name))),
  h("label", { for: fromId }, "From", h("span", { class: "hint" }, "Date, for example 1 March 2026")),
  h("input", { id: fromId, name: "from", type: "date" }),
  h("label", { for: toId }, "To"),
  h("input", { id: toId, name: "to", type: "date" }),
  h("div", { class: "actions" }, h("button", { type: "submit" }, "Show results"),
    h("button", { type: "reset", class: "secondary", onclick: () => setTimeout(() => load(form)) }, "Clear")));
  count.setAttribute("tabindex", "-1");
  page(main, "Test results",
    h("p", {}, "Your results, newest first. A marker in words tells you if a value is outside the usual range."),
    h("details", {}, h("summary", {}, "Filter by test or date"), form),
    count, list);
  show(first);
  return {
    refresh: async (note) => {
      if (note.kind !== "lab-result") return;
      // Records may take a moment to file the result the notice is about (the notice and
      // the filing come from one event, handled side by side: tens of milliseconds apart
      // on a busy machine), so look again soon, then every second (about 9 s in all).
      const attempts = 12;
      for (let attempt = 0; attempt < attempts; attempt += 1) {
        const data = await api("/v1/me/lab-results?limit=50");
        if (data.items.some((r) => r.id === note.ref) || attempt === attempts - 1) {
          if (current === first || !form.querySelector("select").value) show(data);
          return;
        }
        const wait = Math.min(1000, 100 * 2 ** attempt);
        await new Promise((resolve) => { setTimeout(resolve, wait); });
      }
    },
  };
}
