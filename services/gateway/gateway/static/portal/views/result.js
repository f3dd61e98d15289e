// One test result: value, range and marker in words, what the test means in plain
// language, its trend over time (an SVG chart with a table alternative), and the earlier
// versions if the lab corrected it.
import { api } from "../api.js";
import { h, tableBox, uid } from "../dom.js";
import { day, number, sentence } from "../format.js";
import { flagBadge, page, rangeText, testName, valueText } from "./common.js";

const DIRECTION = { up: "going up", down: "going down", steady: "about the same" };

function chart(trend, name) {
  const points = trend.points.filter((p) => typeof p.value === "number");
  if (points.length < 2) return null;
  const width = 600, height = 260, left = 56, right = 16, top = 16, bottom = 44;
  const values = points.flatMap((p) => [p.value, p.low, p.high]).filter((v) => typeof v === "number");
  let lo = Math.min(...values), hi = Math.max(...values);
  const pad = (hi - lo) * 0.15 || 1;
  lo -= pad; hi += pad;
  const times = points.map((p) => Date.parse(p.at));
  const t0 = Math.min(...times), t1 = Math.max(...times);
  const x = (t) => left + ((t - t0) / (t1 - t0 || 1)) * (width - left - right);
  const y = (v) => top + (1 - (v - lo) / (hi - lo)) * (height - top - bottom);
  const titleId = uid("chart-title"), descId = uid("chart-desc");
  const latest = points[points.length - 1];
  const summary = `${points.length} results from ${day(points[0].at)} to ${day(latest.at)}. `
    + `Latest ${number(latest.value)} ${latest.unit || ""}, ${DIRECTION[trend.direction] || "changing"}.`;
  const band = points.find((p) => typeof p.low === "number" && typeof p.high === "number");
  return h("svg", {
    class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-labelledby": `${titleId} ${descId}`,
  },
  h("title", { id: titleId }, `${name} over time`),
  h("desc", { id: descId }, summary),
  band ? h("rect", { class: "range", x: left, width: width - left - right,
    y: y(band.high), height: Math.max(0, y(band.low) - y(band.high)) }) : null,
  band ? h("text", { x: left + 6, y: y(band.high) + 16 }, "Usual range") : null,
  h("line", { class: "axis", x1: left, y1: height - bottom, x2: width - right, y2: height - bottom }),
  h("line", { class: "axis", x1: left, y1: top, x2: left, y2: height - bottom }),
  h("text", { x: 4, y: y(hi - pad) + 4 }, number(hi - pad)),
  h("text", { x: 4, y: y(lo + pad) + 4 }, number(lo + pad)),
  h("polyline", { class: "line", points: points.map((p) => `${x(Date.parse(p.at))},${y(p.value)}`).join(" ") }),
  points.map((p) => h("circle", {
    class: `point${p.flag && p.flag !== "normal" ? " out" : ""}`,
    cx: x(Date.parse(p.at)), cy: y(p.value), r: 6,
  })),
  h("text", { x: left, y: height - 14 }, day(points[0].at)),
  h("text", { x: width - right, y: height - 14, "text-anchor": "end" }, day(latest.at)));
}

function trendTable(trend, name) {
  return tableBox(`${name}: all results`, h("table", { id: "trend-table" },
    h("caption", {}, `${name}: all results, oldest first`),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Date"), h("th", { scope: "col" }, "Result"),
      h("th", { scope: "col" }, "Usual range"), h("th", { scope: "col" }, "Compared with usual"))),
    h("tbody", {}, trend.points.map((p) => h("tr", {},
      h("th", { scope: "row" }, day(p.at)),
      h("td", {}, p.value !== null && p.value !== undefined ? `${number(p.value)} ${p.unit || ""}` : (p.text || "")),
      h("td", {}, typeof p.low === "number" && typeof p.high === "number"
        ? `${number(p.low)} to ${number(p.high)} ${p.unit || ""}`.trim() : "Not given"),
      h("td", {}, p.flag ? sentence(p.flag.replace("-", " ")) : "Not given"))))));
}

function history(obs) {
  if (!obs.history || !obs.history.length) return null;
  return h("section", { "aria-label": `Earlier versions of ${testName(obs)}` },
    h("h3", {}, "This result was corrected"),
    h("p", {}, "The lab changed this result after it was first sent. Earlier versions:"),
    h("ul", { class: "list history" }, obs.history.map((old) => h("li", {},
      `${valueText(old)} `, flagBadge(old.flag),
      h("span", { class: "meta" }, ` (replaced on ${day(old.replaced_at)})`)))));
}

async function observationSection(obs) {
  const name = testName(obs);
  const explained = obs.explanation || {};
  const flag = obs.flag ? obs.flag.code : "normal";
  const meaning = flag.includes("high") ? explained.if_high : flag.includes("low") ? explained.if_low : null;
  let trend = null;
  try {
    trend = await api(`/v1/me/lab-results/trends?code=${encodeURIComponent(obs.code.code)}`);
  } catch {
    trend = null;
  }
  const headingId = uid("obs");
  return h("section", { class: "card", "aria-labelledby": headingId },
    h("h2", { id: headingId }, name),
    h("dl", { class: "facts" },
      h("dt", {}, "Your result"), h("dd", { class: "value" }, valueText(obs)),
      h("dt", {}, "Usual range"), h("dd", {}, rangeText(obs)),
      h("dt", {}, "Compared with usual"), h("dd", {}, flagBadge(obs.flag) || "Not given")),
    explained.known ? [
      h("h3", {}, "What this test measures"),
      h("p", { class: "explanation" }, explained.what_it_measures),
      meaning ? [h("h3", {}, `What a ${flag.includes("high") ? "high" : "low"} result can mean`), h("p", {}, meaning)] : null,
      h("p", { class: "meta" }, explained.not_a_diagnosis),
      (explained.sources || []).map((s) => h("p", {}, "Read more: ", h("a", { href: s.url, rel: "noopener" }, `${s.title} (${s.publisher})`))),
    ] : h("p", {}, "Your care team can tell you what this result means for you."),
    history(obs),
    trend && trend.points.length > 1 ? [
      h("h3", {}, "How it has changed"),
      h("p", {}, `Your latest result is ${DIRECTION[trend.direction] || "changing"} compared with the one before.`),
      chart(trend, name),
      trendTable(trend, name),
    ] : null);
}

export async function render(main, ctx) {
  const [reportId] = ctx.params;
  const report = await api(`/v1/me/lab-results/${encodeURIComponent(reportId)}`);
  const sections = [];
  for (const obs of report.observations || []) sections.push(await observationSection(obs));
  const title = (report.observations || []).length === 1 ? testName(report.observations[0])
    : (report.code.display || "Test result");
  page(main, title,
    h("p", {}, h("a", { href: "#/results" }, "Back to all results")),
    h("p", {}, `Taken on ${day(report.effective)}`,
      report.performer && report.performer.length ? ` by ${report.performer.join(", ")}` : "", "."),
    report.status === "amended" || report.status === "corrected"
      ? h("p", { class: "callout" }, "The lab corrected this result. The earlier values are shown below.") : null,
    sections);
}
