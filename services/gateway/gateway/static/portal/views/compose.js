// A new conversation: choose what it is about (which says who it goes to), write, attach.
import { api, ApiError, newKey } from "../api.js";
import { fill, h, uid } from "../dom.js";
import { attachmentField } from "./attachments.js";
import { page, problem } from "./common.js";

export async function render(main, ctx) {
  const topics = await api("/v1/message-topics");
  const topicId = uid("topic"), subjectId = uid("subject"), bodyId = uid("body");
  const status = h("div", { "aria-live": "polite", id: "compose-status" });
  const sentTo = h("p", { class: "hint", id: `${topicId}-to`, "aria-live": "polite" });
  const files = attachmentField();
  const key = newKey();
  const select = h("select", {
    id: topicId, name: "topic", required: true, "aria-describedby": `${topicId}-to`,
    onchange: (event) => {
      const topic = topics.find((t) => t.code === event.target.value);
      fill(sentTo, topic ? `This goes to: ${topic.sent_to}` : "");
    },
  }, h("option", { value: "" }, "Choose a topic"), topics.map((t) => h("option", { value: t.code }, t.label)));

  function fieldError(control, message) {
    control.setAttribute("aria-invalid", "true");
    const id = `${control.id}-error`;
    control.setAttribute("aria-describedby", `${id} ${control.getAttribute("aria-describedby") || ""}`.trim());
    const existing = document.getElementById(id);
    if (existing) fill(existing, message);
    else control.before(h("p", { class: "field-error", id }, h("span", { class: "visually-hidden" }, "Error: "), message));
  }

  const form = h("form", {
    id: "compose-form", novalidate: true,
    onsubmit: async (event) => {
      event.preventDefault();
      for (const old of form.querySelectorAll(".field-error")) old.remove();
      for (const c of form.querySelectorAll("[aria-invalid]")) c.removeAttribute("aria-invalid");
      fill(status);
      const data = new FormData(form);
      const missing = [];
      if (!data.get("topic")) { fieldError(select, "Choose what your message is about."); missing.push(select); }
      const subject = form.querySelector(`#${subjectId}`);
      const body = form.querySelector(`#${bodyId}`);
      if (!String(data.get("subject")).trim()) { fieldError(subject, "Write a short title."); missing.push(subject); }
      if (!String(data.get("body")).trim()) { fieldError(body, "Write your message."); missing.push(body); }
      if (missing.length) { missing[0].focus(); return; }
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      try {
        const attachments = await files.read();
        const answer = await api("/v1/me/threads", {
          method: "POST",
          body: { topic: data.get("topic"), subject: data.get("subject"), body: data.get("body"), attachments },
          headers: { "Idempotency-Key": key },
        });
        const advice = answer.emergency_check && answer.emergency_check.advice;
        fill(main, h("h1", { tabindex: "-1" }, "Your message was sent"),
          advice ? h("p", { class: "callout error", role: "alert" }, advice, " ", h("a", { href: "tel:911" }, "Call 911")) : null,
          h("p", { class: "callout success", id: "sent-to" }, `Sent to: ${answer.thread.sent_to}.`),
          h("p", {}, h("a", { href: `#/messages/${answer.thread.id}` }, "Open the conversation")),
          h("p", {}, h("a", { href: "#/messages" }, "Back to messages")));
        main.querySelector("h1").focus();
      } catch (error) {
        button.disabled = false;
        fill(status, problem(error instanceof ApiError || error instanceof Error ? error.message : "Your message could not be sent."));
      }
    },
  },
  h("label", { for: topicId }, "What is it about?"), select, sentTo,
  h("label", { for: subjectId }, "Title"),
  h("input", { id: subjectId, name: "subject", type: "text", maxlength: "200", required: true }),
  h("label", { for: bodyId }, "Your message", h("span", { class: "hint" }, "Do not use messages for emergencies.")),
  h("textarea", { id: bodyId, name: "body", rows: "6", maxlength: "10000", required: true }),
  files.field,
  h("div", { class: "actions" }, h("button", { type: "submit" }, "Send message"),
    h("a", { href: "#/messages", class: "button secondary" }, "Cancel")),
  status);
  const preset = ctx.query.get("topic");
  if (preset && topics.some((t) => t.code === preset)) {
    select.value = preset;
    select.dispatchEvent(new Event("change"));
  }
  if (ctx.query.get("subject")) form.querySelector(`#${subjectId}`).value = ctx.query.get("subject");
  page(main, "Write a message",
    h("p", {}, "For anything urgent, call the clinic. In an emergency call ", h("a", { href: "tel:911" }, "911"), "."),
    form);
}
