// Small DOM helpers the page's modules share.

export const $ = (id) => document.getElementById(id);

// A plain (non-submitting) button; `label` names it for assistive technology when its text
// alone would be ambiguous ("Remove" of what).
export function button(text, onClick, label) {
  const el = document.createElement("button");
  el.type = "button";
  el.className = "quiet";
  el.textContent = text;
  if (label) el.setAttribute("aria-label", label);
  el.addEventListener("click", onClick);
  return el;
}
