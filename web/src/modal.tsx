// A dialog: labelled, focus moved into it and kept there (Tab cycles), Escape or the backdrop closes it, and focus
// returns to where it was.

import { useEffect, useRef } from "preact/hooks";
import type { ComponentChildren } from "preact";

const FOCUSABLE = 'a[href], button:not([disabled]), input:not([disabled]), textarea:not([disabled]), select:not([disabled]), [tabindex]:not([tabindex="-1"])';

export function Modal({ title, onClose, children, bare }: { title: string; onClose: () => void; children: ComponentChildren; bare?: boolean }) {
  const box = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const before = document.activeElement as HTMLElement | null;
    const first = box.current?.querySelector<HTMLElement>("[data-autofocus]") ?? box.current?.querySelector<HTMLElement>(FOCUSABLE);
    first?.focus();
    const onKey = (event: KeyboardEvent) => {
      if (event.key === "Escape") {
        event.stopPropagation();
        onClose();
        return;
      }
      if (event.key !== "Tab" || !box.current) return;
      const items = [...box.current.querySelectorAll<HTMLElement>(FOCUSABLE)];
      if (!items.length) return;
      const at = items.indexOf(document.activeElement as HTMLElement);
      if (event.shiftKey && at <= 0) {
        items[items.length - 1].focus();
        event.preventDefault();
      } else if (!event.shiftKey && at === items.length - 1) {
        items[0].focus();
        event.preventDefault();
      }
    };
    document.addEventListener("keydown", onKey, true);
    return () => {
      document.removeEventListener("keydown", onKey, true);
      before?.focus?.();
    };
  }, []);
  return (
    <div class="modal-back" onClick={onClose}>
      <div class={bare ? "viewer" : "modal"} ref={box} onClick={(e) => e.stopPropagation()} role="dialog" aria-modal="true" aria-label={title} data-testid="dialog">
        {!bare && <h2>{title}</h2>}
        {children}
      </div>
    </div>
  );
}
