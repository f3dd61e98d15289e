// Files attached to a message: images and PDFs, read in the browser and sent as base64.
import { h, uid } from "../dom.js";

export const TYPES = ["image/png", "image/jpeg", "image/gif", "application/pdf"];
export const MAX_BYTES = 256 * 1024;
export const MAX_FILES = 2;

/** A labelled file input and a function that returns the files as the API wants them,
 * or throws an Error with a message for the patient. */
export function attachmentField() {
  const id = uid("file");
  const input = h("input", { id, type: "file", multiple: true, accept: TYPES.join(","), "aria-describedby": `${id}-hint` });
  const field = h("div", {},
    h("label", { for: id }, "Attach a photo or PDF (optional)"),
    h("p", { class: "hint", id: `${id}-hint` }, `Up to ${MAX_FILES} files, each smaller than 250 KB.`),
    input);
  async function read() {
    const files = [...input.files];
    if (files.length > MAX_FILES) throw new Error(`Attach at most ${MAX_FILES} files.`);
    const out = [];
    for (const file of files) {
      if (!TYPES.includes(file.type)) throw new Error(`${file.name} is not a photo or a PDF.`);
      if (file.size > MAX_BYTES) throw new Error(`${file.name} is too big: it must be smaller than 250 KB.`);
      const bytes = new Uint8Array(await file.arrayBuffer());
      let binary = "";
      for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      out.push({ content_type: file.type, title: file.name, data_base64: btoa(binary) });
    }
    return out;
  }
  return { field, input, read };
}
