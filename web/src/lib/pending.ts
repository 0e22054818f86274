// Unsent messages kept in IndexedDB, so a reload (or a crash of the tab) does not lose what the user wrote: each
// entry is written when the message is queued, rewritten when it fails, and deleted on its ack or when the user
// deletes it. Entries carry their `cid`, so a message that did reach the server before the reload is stored once.

export interface PendingEntry {
  cid: string;
  /** The user the entry belongs to (another user logging in on this browser does not see it). */
  user: number;
  conv: number | null;
  to: number | null;
  kind: string;
  body: string;
  attrs?: Record<string, unknown>;
  ts: number;
  failed?: string;
  /** The reason in words, for a failed entry. */
  reason?: string;
}

const DB = "im-outbox";
const STORE = "pending";

let opened: Promise<IDBDatabase | null> | null = null;

function db(): Promise<IDBDatabase | null> {
  if (!opened) {
    opened = new Promise((resolve) => {
      if (typeof indexedDB === "undefined") return resolve(null);
      const request = indexedDB.open(DB, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "cid" });
      request.onsuccess = () => resolve(request.result);
      // Private modes may refuse IndexedDB: messages then live only as long as the page.
      request.onerror = () => resolve(null);
    });
  }
  return opened;
}

async function run<T>(mode: IDBTransactionMode, action: (store: IDBObjectStore) => IDBRequest<T>): Promise<T | undefined> {
  const database = await db();
  if (!database) return undefined;
  return new Promise((resolve) => {
    const tx = database.transaction(STORE, mode);
    const request = action(tx.objectStore(STORE));
    tx.oncomplete = () => resolve(request.result);
    tx.onerror = () => resolve(undefined);
    tx.onabort = () => resolve(undefined);
  });
}

export function savePending(entry: PendingEntry): Promise<unknown> {
  return run("readwrite", (store) => store.put(entry));
}

export function deletePending(cid: string): Promise<unknown> {
  return run("readwrite", (store) => store.delete(cid));
}

export async function loadPending(user: number): Promise<PendingEntry[]> {
  const all = ((await run("readonly", (store) => store.getAll())) ?? []) as PendingEntry[];
  return all.filter((e) => e.user === user).sort((a, b) => a.ts - b.ts);
}
