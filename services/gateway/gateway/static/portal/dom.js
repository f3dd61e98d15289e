// Small DOM helpers: elements are built with textContent only (never innerHTML), so text
// from the API can never become markup.

/** h("p", {class: "x"}, "text", child): an element with attributes and children. */
export function h(tag, attrs = {}, ...children) {
  const svg = ["svg", "g", "line", "polyline", "circle", "rect", "text", "title", "desc", "path"]
    .includes(tag);
  const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag)
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (value === true) {
      node.setAttribute(name, "");
    } else {
      node.setAttribute(name, String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace the children of `node`. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** A wide table in a focusable, labelled scroll box (keyboard users can scroll it). */
export function tableBox(label, table) {
  return h("div", { class: "table-box", role: "region", "aria-label": label, tabindex: "0" }, table);
}

let idCounter = 0;
/** A unique id for label/field pairs. */
export function uid(prefix = "f") {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}
