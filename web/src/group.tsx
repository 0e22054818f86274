// Group screens: the member list with roles, rename, invite (friends are added, anyone else invited — the
// server's consent rules), remove, leave; and the "read by" list of a group message.

import { useEffect, useState } from "preact/hooks";
import { Modal } from "./modal";
import type { Store } from "./store";

const RANK: Record<string, number> = { owner: 0, admin: 1, member: 2 };

export function GroupInfo({ store, conv, onClose }: { store: Store; conv: number; onClose: () => void }) {
  const members = [...(store.groupMembers.get(conv) ?? [])].sort((a, b) => (RANK[a.role] ?? 3) - (RANK[b.role] ?? 3) || a.username.localeCompare(b.username));
  const me = store.session!.userId;
  const myRole = members.find((m) => m.user === me)?.role ?? "member";
  const view = store.convs.get(conv);
  const [title, setTitle] = useState(view?.title ?? "");
  const [invite, setInvite] = useState("");
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    void store.loadMembers(conv);
  }, [conv]);
  const act = async (work: () => Promise<unknown>) => {
    setBusy(true);
    try {
      await work();
    } catch (error) {
      store.showError(error);
    } finally {
      setBusy(false);
    }
  };
  const canRemove = (role: string) => myRole === "owner" || (myRole === "admin" && role === "member");
  return (
    <Modal title="Group info" onClose={onClose}>
      {(myRole === "owner" || myRole === "admin") && (
        <form
          class="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            void act(() => store.renameGroup(conv, title.trim()));
          }}
        >
          <label class="sr-only" for="group-rename">
            Group name
          </label>
          <input id="group-rename" value={title} maxLength={64} onInput={(e) => setTitle(e.currentTarget.value)} data-testid="group-rename-input" required />
          <button class="secondary small" disabled={busy || !title.trim() || title.trim() === view?.title} data-testid="group-rename">
            Rename
          </button>
        </form>
      )}
      <h3 class="section">{members.length} members</h3>
      <ul class="plain members" data-testid="members">
        {members.map((m) => (
          <li key={m.user} class="member" data-testid="member" data-name={m.username} data-role={m.role}>
            <span class="item-main">
              <span class="item-title">{m.user === me ? `${m.username} (you)` : m.username}</span>
            </span>
            <span class={`role role-${m.role}`}>{m.role}</span>
            {m.user !== me && canRemove(m.role) && (
              <button class="ghost small danger" disabled={busy} onClick={() => void act(() => store.removeMember(conv, m.user))} data-testid="remove-member" aria-label={`Remove ${m.username}`}>
                Remove
              </button>
            )}
          </li>
        ))}
      </ul>
      <form
        class="inline-form"
        onSubmit={(e) => {
          e.preventDefault();
          void act(async () => {
            const user = await store.findUser(invite.trim());
            const answer = await store.addMembers(conv, [user.id]);
            store.notify(answer.invited.length ? `${user.username} was invited: they join when they accept` : `${user.username} was added`);
            setInvite("");
          });
        }}
      >
        <label class="sr-only" for="group-invite">
          Add or invite by username
        </label>
        <input id="group-invite" placeholder="Add or invite by username" value={invite} onInput={(e) => setInvite(e.currentTarget.value)} data-testid="group-invite-input" required />
        <button class="secondary small" disabled={busy} data-testid="group-invite">
          Add
        </button>
      </form>
      <p class="hint">Friends are added at once; anyone else gets an invitation to accept.</p>
      <div class="modal-actions">
        <button
          type="button"
          class="secondary danger"
          disabled={busy}
          onClick={() => {
            if (confirm("Leave this group?")) void act(() => store.leaveGroup(conv)).then(onClose);
          }}
          data-testid="group-leave"
        >
          Leave group
        </button>
        <button type="button" class="primary" onClick={onClose}>
          Close
        </button>
      </div>
    </Modal>
  );
}

export function ReadBy({ store, conv, onClose }: { store: Store; conv: number; onClose: () => void }) {
  const reads = store.groupReads.get(conv);
  return (
    <Modal title="Read by" onClose={onClose}>
      <h3 class="section">Read by {reads?.read.length ?? 0}</h3>
      <ul class="plain" data-testid="read-by">
        {(reads?.read ?? []).map((u) => (
          <li key={u}>{store.name(u)}</li>
        ))}
      </ul>
      <h3 class="section">Not yet</h3>
      <ul class="plain">
        {(reads?.unread ?? []).map((u) => (
          <li key={u}>{store.name(u)}</li>
        ))}
      </ul>
      <div class="modal-actions">
        <button type="button" class="primary" onClick={onClose}>
          Close
        </button>
      </div>
    </Modal>
  );
}
