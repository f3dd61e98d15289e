// One conversation: read it (marked read), download attachments, reply.
import { api, ApiError, newKey } from "../api.js";
import { updateUnread } from "../app.js";
import { fill, h, uid } from "../dom.js";
import { dayAndTime } from "../format.js";
import { attachmentField } from "./attachments.js";
import { page, problem } from "./common.js";
import { threadTitle } from "./messages.js";

async function download(attachment, button) {
  const response = await api(`/v1/me/attachments/${encodeURIComponent(attachment.id)}`, { raw: true });
  if (!response.ok) { button.after(problem("The file could not be downloaded.")); return; }
  const url = URL.createObjectURL(await response.blob());
  const link = h("a", { href: url, download: attachment.title });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

function messageItem(m) {
  const mine = m.direction === "outbound";
  return h("li", { class: mine ? "mine" : "theirs", "data-message": m.id },
    h("h2", { class: "h3" }, mine ? "You wrote" : `${m.sender || "Your care team"} wrote`,
      h("span", { class: "meta" }, ` on ${dayAndTime(m.sent_at)}`)),
    h("p", { class: "body" }, m.body),
    (m.attachments || []).map((a) => {
      const button = h("button", { type: "button", class: "link-button" }, `Download ${a.title}`);
      button.addEventListener("click", () => download(a, button));
      return h("p", {}, button);
    }),
    mine ? h("p", { class: "meta" }, m.read_by_care_team_at
      ? `Read by your care team on ${dayAndTime(m.read_by_care_team_at)}.` : "Not read by your care team yet.") : null);
}

export async function render(main, ctx) {
  const [threadId] = ctx.params;
  const threads = await api("/v1/me/threads");
  const thread = threads.find((t) => t.id === threadId);
  if (!thread) throw new Error("This conversation was not found.");
  const path = `/v1/me/threads/${encodeURIComponent(threadId)}`;
  const list = h("ol", { class: "list", id: "thread-messages" });

  async function load() {
    const messages = await api(`${path}/messages`);
    fill(list, messages.map(messageItem));
    if (messages.some((m) => m.direction === "inbound" && !m.read)) {
      await api(`${path}/read`, { method: "POST" });
      updateUnread();
    }
    return messages;
  }

  const replyId = uid("reply");
  const status = h("div", { "aria-live": "polite", id: "reply-status" });
  const files = attachmentField();
  let key = newKey();
  const form = h("form", {
    id: "reply-form", "aria-labelledby": "reply-h",
    onsubmit: async (event) => {
      event.preventDefault();
      const text = form.querySelector("textarea");
      fill(status);
      if (!text.value.trim()) {
        text.setAttribute("aria-invalid", "true");
        fill(status, problem("Write your message before sending it."));
        text.focus();
        return;
      }
      text.removeAttribute("aria-invalid");
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      try {
        const attachments = await files.read();
        await api(`${path}/messages`, {
          method: "POST", body: { body: text.value, attachments }, headers: { "Idempotency-Key": key },
        });
        key = newKey();
        text.value = "";
        files.input.value = "";
        await load();
        fill(status, h("p", { class: "callout success" }, `Your message was sent to ${thread.sent_to}.`));
      } catch (error) {
        fill(status, problem(error instanceof ApiError || error instanceof Error ? error.message : "Your message could not be sent."));
      } finally {
        button.disabled = false;
      }
    },
  },
  h("h2", { id: "reply-h" }, "Reply"),
  h("label", { for: replyId }, "Your message"),
  h("textarea", { id: replyId, rows: "5", maxlength: "10000" }),
  files.field,
  h("div", { class: "actions" }, h("button", { type: "submit" }, "Send reply")),
  status);

  page(main, threadTitle(thread),
    h("p", {}, h("a", { href: "#/messages" }, "Back to messages")),
    h("p", { class: "meta" }, `Sent to: ${thread.sent_to}`),
    list, form);
  await load();
  return {
    refresh: async (note) => {
      if (note.kind !== "message") return;
      const before = list.children.length;
      for (let attempt = 0; attempt < 10; attempt += 1) {
        const messages = await load();
        if (messages.length > before) return;
        await new Promise((resolve) => { setTimeout(resolve, 1000); });
      }
    },
  };
}
