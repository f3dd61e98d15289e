// Health summary: medicines, allergies, conditions, immunizations, documents to download,
// and vital signs.
import { api } from "../api.js";
import { h, tableBox } from "../dom.js";
import { day, sentence } from "../format.js";
import { page, problem, valueText } from "./common.js";

const MED_STATUS = {
  active: "Taking now", stopped: "Stopped", completed: "Finished", "on-hold": "Paused",
  cancelled: "Cancelled", "entered-in-error": "Recorded in error", draft: "Not started yet",
};

function section(id, title, items, empty, renderItem) {
  return h("section", { "aria-labelledby": id },
    h("h2", { id }, title),
    items === null ? problem(`Your ${title.toLowerCase()} cannot be shown right now.`)
      : items.length ? h("ul", { class: "list" }, items.map(renderItem)) : h("p", {}, empty));
}

async function maybe(path, pick = (x) => x) {
  try { return pick(await api(path)); } catch { return null; }
}

async function download(doc, attachment, button) {
  button.disabled = true;
  try {
    const response = await api(`/v1/me/documents/${encodeURIComponent(doc.id)}/attachments/${attachment.position}`, { raw: true });
    if (!response.ok) throw new Error("not available");
    const url = URL.createObjectURL(await response.blob());
    const link = h("a", { href: url, download: `${attachment.title || doc.description || "document"}` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch {
    button.after(problem("The document could not be downloaded. Please try again later."));
  } finally {
    button.disabled = false;
  }
}

export async function render(main) {
  const [meds, allergies, conditions, immunizations, documents, vitals] = await Promise.all([
    maybe("/v1/me/medications"),
    maybe("/v1/me/allergies"),
    maybe("/v1/me/conditions"),
    maybe("/v1/me/immunizations"),
    maybe("/v1/me/documents?limit=50", (d) => d.items),
    maybe("/v1/me/vital-signs?limit=50", (d) => d.items),
  ]);
  const sortedMeds = meds && [...meds].sort((a, b) => (a.status === "active" ? -1 : 1) - (b.status === "active" ? -1 : 1));
  page(main, "Health summary",
    h("p", {}, "What your clinic has on record for you. If something is wrong, ",
      h("a", { href: "#/messages/new" }, "tell your care team"), "."),
    section("meds-h", "Medicines", sortedMeds, "No medicines on record.", (m) => h("li", {},
      h("h3", {}, sentence(m.medication.display || m.medication.code)),
      h("p", {}, m.dosage_text || "No instructions recorded."),
      h("p", { class: "meta" }, `${MED_STATUS[m.status] || sentence(m.status)}. Prescribed or last changed on ${day(m.authored_on)}.`))),
    section("allergies-h", "Allergies", allergies, "No allergies on record.", (a) => h("li", {},
      h("strong", {}, a.display || "Allergy"), h("span", { class: "meta" }, ` (recorded ${day(a.effective)})`))),
    section("conditions-h", "Conditions", conditions, "No conditions on record.", (c) => h("li", {},
      h("strong", {}, c.display), h("span", { class: "meta" }, ` (since ${day(c.effective)})`))),
    section("imm-h", "Immunizations", immunizations, "No immunizations on record.", (i) => h("li", {},
      h("strong", {}, i.display), h("span", { class: "meta" }, ` (given on ${day(i.effective)})`))),
    section("docs-h", "Documents", documents, "No documents yet.", (d) => h("li", {},
      h("h3", {}, d.description || (d.type && d.type.display) || "Document"),
      h("p", { class: "meta" }, `Dated ${day(d.date)}`),
      (d.attachments || []).filter((a) => a.downloadable).map((a) => {
        const button = h("button", { type: "button", class: "secondary" },
          `Download ${a.title || "document"}`, h("span", { class: "visually-hidden" }, ` from ${day(d.date)}`));
        button.addEventListener("click", () => download(d, a, button));
        return h("div", { class: "actions" }, button);
      }))),
    h("section", { "aria-labelledby": "vitals-h" },
      h("h2", { id: "vitals-h" }, "Vital signs"),
      vitals === null ? problem("Your vital signs cannot be shown right now.")
        : vitals.length ? tableBox("Vital signs", h("table", {},
          h("caption", { class: "visually-hidden" }, "Vital signs, newest first"),
          h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Date"), h("th", { scope: "col" }, "Measurement"), h("th", { scope: "col" }, "Value"))),
          h("tbody", {}, vitals.map((v) => h("tr", {},
            h("td", {}, day(v.effective)),
            h("th", { scope: "row" }, (v.code && v.code.display) || "Measurement"),
            h("td", {}, valueText(v)))))))
          : h("p", {}, "No vital signs on record.")));
}
