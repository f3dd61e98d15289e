// Messages: conversations with the care team, newest first, with unread counts.
import { api } from "../api.js";
import { fill, h } from "../dom.js";
import { dayAndTime } from "../format.js";
import { page } from "./common.js";

export function threadTitle(thread) {
  return thread.subject || "Conversation with your care team";
}

export async function render(main) {
  const list = h("ul", { class: "list", id: "threads" });
  async function load() {
    const threads = await api("/v1/me/threads");
    threads.sort((a, b) => Date.parse(b.updated_at) - Date.parse(a.updated_at));
    fill(list, threads.length ? threads.map((t) => h("li", { class: t.unread ? "unread" : "", "data-thread": t.id },
      h("h2", {}, h("a", { href: `#/messages/${t.id}` }, threadTitle(t),
        t.unread ? h("span", { class: "visually-hidden" }, `, ${t.unread} unread`) : null)),
      t.unread ? h("p", { class: "unread-count" }, h("strong", {}, t.unread === 1 ? "1 new message" : `${t.unread} new messages`)) : null,
      h("p", { class: "meta" }, `Sent to: ${t.sent_to}. Last message on ${dayAndTime(t.updated_at)}.`)))
      : h("li", {}, "No messages yet."));
  }
  page(main, "Messages",
    h("div", { class: "actions" }, h("a", { class: "button", href: "#/messages/new" }, "Write a new message")),
    h("p", {}, "Your care team answers within 2 working days. For anything urgent, call the clinic; in an emergency call ",
      h("a", { href: "tel:911" }, "911"), "."),
    list);
  await load();
  return {
    refresh: async (note) => {
      if (note.kind !== "message") return;
      const before = list.textContent;
      for (let attempt = 0; attempt < 10; attempt += 1) {
        await load();
        if (list.textContent !== before) return;
        await new Promise((resolve) => { setTimeout(resolve, 1000); });
      }
    },
  };
}
