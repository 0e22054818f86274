// Message text with clickable links. Only http(s) and mailto URLs become links (never `javascript:` or `data:`),
// they open in a new tab without access to this page (`noopener noreferrer`), and everything else stays text.

import type { ComponentChildren } from "preact";

const URL_PATTERN = /\b(?:https?:\/\/|mailto:|www\.)[^\s<>"']+/gi;
const TRAILING = /[.,;:!?)\]}'"]+$/;

/** The safe href for a piece of text that looks like a link, or null. */
export function safeHref(raw: string): string | null {
  const candidate = /^www\./i.test(raw) ? `https://${raw}` : raw;
  try {
    const url = new URL(candidate);
    if (url.protocol === "http:" || url.protocol === "https:" || url.protocol === "mailto:") return url.href;
  } catch {
    /* not a URL */
  }
  return null;
}

export function Linkified({ text }: { text: string }) {
  const parts: ComponentChildren[] = [];
  let last = 0;
  for (const match of text.matchAll(URL_PATTERN)) {
    let raw = match[0];
    const trailing = raw.match(TRAILING)?.[0] ?? "";
    raw = raw.slice(0, raw.length - trailing.length);
    const start = match.index ?? 0;
    const href = safeHref(raw);
    if (!href) continue;
    if (start > last) parts.push(text.slice(last, start));
    parts.push(
      <a href={href} target="_blank" rel="noopener noreferrer" data-testid="link" key={start}>
        {raw}
      </a>,
    );
    last = start + raw.length;
  }
  if (last < text.length) parts.push(text.slice(last));
  return <>{parts}</>;
}
