import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import type { ComponentChildren } from "preact";
import { Picker } from "emoji-picker-element";
import emojiData from "emoji-picker-element-data/en/emojibase/data.json?url";
import type { Message } from "./lib/frames";
import { openKey, type ConvView, type Outgoing, type Store } from "./store";
import { Modal } from "./modal";
import { Linkified } from "./text";
import { Devices } from "./devices";
import { GroupInfo, ReadBy } from "./group";

const RECALL_WINDOW_MS = 120_000;

function useStore(store: Store): Store {
  const [, setVersion] = useState(0);
  useEffect(() => store.subscribe(() => setVersion((v) => v + 1)), [store]);
  return store;
}

function initials(name: string): string {
  return name.replace(/[^A-Za-z0-9]/g, " ").trim().slice(0, 2).toUpperCase() || "?";
}

function Avatar({ name, group }: { name: string; group?: boolean }) {
  let hue = 0;
  for (const ch of name) hue = (hue * 31 + ch.charCodeAt(0)) % 360;
  return (
    <span class={`avatar${group ? " group" : ""}`} style={{ background: `hsl(${hue} 50% 27%)` }} aria-hidden="true">
      {group ? "#" : initials(name)}
    </span>
  );
}

function time(ms: number): string {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export function App({ store }: { store: Store }) {
  useStore(store);
  useEffect(() => {
    const total = store.totalUnread();
    document.title = total ? `(${total}) im chat` : "im chat";
  });
  if (!store.session || !store.client) return <Login store={store} />;
  const chatOpen = store.open !== null;
  return (
    <div class={`app${chatOpen ? " chat-open" : ""}`}>
      <Sidebar store={store} />
      <main class="pane">{store.open ? <Chat store={store} key={openKey(store.open)} /> : <Empty />}</main>
      {store.toast && (
        <div class="toast" role="alert" data-testid="toast">
          {store.toast}
        </div>
      )}
    </div>
  );
}

function Empty() {
  return (
    <div class="empty">
      <div class="empty-icon">💬</div>
      <p>Pick a conversation, or start one from Contacts.</p>
    </div>
  );
}

/** What to tell a person whose login or registration failed (not the server's wording). */
function loginError(error: unknown): string {
  const code = (error as { code?: string }).code;
  switch (code) {
    case "bad_username":
      return "Pick a username of 3 to 32 characters: lowercase letters, digits, dots, dashes or underscores.";
    case "bad_password":
      return "Pick a password of at least 8 characters.";
    case "username_taken":
      return "That username is taken. Try another one.";
    case "invalid_credentials":
      return "Wrong username or password.";
    case "too_many_attempts":
    case "rate_limited":
      return "Too many attempts. Wait a minute and try again.";
    case "offline":
    case "unavailable":
      return "The server cannot be reached right now. Try again in a moment.";
    default:
      return error instanceof Error ? error.message : String(error);
  }
}

function Login({ store }: { store: Store }) {
  const [mode, setMode] = useState<"login" | "register">("login");
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string | null>(store.toast);
  const [busy, setBusy] = useState(false);
  const submit = async (event: Event) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      if (mode === "register") await store.register(username.trim(), password);
      else await store.login(username.trim(), password);
    } catch (e) {
      setError(loginError(e));
    } finally {
      setBusy(false);
    }
  };
  return (
    <div class="login">
      <form class="card" onSubmit={submit} data-testid="login-form">
        <div class="brand">
          <span class="logo">💬</span> im chat
        </div>
        <div class="segmented">
          <button type="button" class={mode === "login" ? "on" : ""} onClick={() => setMode("login")}>
            Log in
          </button>
          <button type="button" class={mode === "register" ? "on" : ""} onClick={() => setMode("register")} data-testid="mode-register">
            Create account
          </button>
        </div>
        <label>
          Username
          <input name="username" autocomplete="username" value={username} onInput={(e) => setUsername(e.currentTarget.value)} placeholder="lowercase letters, digits, . _ -" required />
        </label>
        <label>
          Password
          <input name="password" type="password" autocomplete={mode === "login" ? "current-password" : "new-password"} value={password} onInput={(e) => setPassword(e.currentTarget.value)} placeholder="at least 8 characters" required />
        </label>
        {error && (
          <div class="error" role="alert">
            {error}
          </div>
        )}
        <button class="primary" type="submit" disabled={busy} data-testid="login-submit">
          {busy ? "Please wait…" : mode === "login" ? "Log in" : "Create account"}
        </button>
      </form>
    </div>
  );
}

function StatusBar({ store }: { store: Store }) {
  const status = store.status;
  const [, tick] = useState(0);
  useEffect(() => {
    const timer = setInterval(() => tick((t) => t + 1), 1000);
    return () => clearInterval(timer);
  }, []);
  if (!status || status.status === "online") return null;
  const pending = store.outbox.size;
  let text: ComponentChildren;
  let cls = "status";
  if (status.status === "connecting" && status.failures === 0) {
    text = "Connecting…";
  } else if (status.status === "replaced") {
    cls += " error";
    text = (
      <>
        {store.kick?.reason === "replaced"
          ? "You logged in on another device of this kind, so this one was logged out (or this tab was opened again elsewhere)."
          : "This tab was signed in again elsewhere."}{" "}
        <button class="link" onClick={() => location.reload()}>
          Reconnect
        </button>
      </>
    );
  } else if (status.status === "stopped") {
    text = "Disconnected.";
  } else {
    cls += " offline";
    text = `Offline — ${pending ? `${pending} message${pending > 1 ? "s" : ""} will send when back` : "messages will send when back"}. Reconnecting…`;
  }
  return (
    <div class={cls} role="status" data-testid="status" data-status={status.status}>
      {text}
    </div>
  );
}

function Sidebar({ store }: { store: Store }) {
  const total = store.totalUnread();
  const requests = store.incoming.length + store.invitations.length;
  const me = store.session!;
  return (
    <aside class="sidebar">
      <header class="side-head">
        <Avatar name={me.username} />
        <div class="me">
          <div class="me-name" data-testid="me">
            {me.username}
          </div>
          <div class="me-node">
            <span class={`dot${store.client?.isOnline ? " on" : ""}`} data-testid="online-dot" aria-hidden="true" />
            {store.client?.isOnline ? "online" : "not connected"}
          </div>
        </div>
        <button class="ghost" onClick={() => void store.logout()} title="Log out">
          Log out
        </button>
      </header>
      <StatusBar store={store} />
      <nav class="tabs" aria-label="Sections">
        <button
          class={store.tab === "chats" ? "on" : ""}
          onClick={() => {
            store.tab = "chats";
            store.changed();
          }}
          data-testid="tab-chats"
        >
          Chats{" "}
          {total > 0 && (
            <span class="badge" data-testid="total-unread">
              {total}
            </span>
          )}
        </button>
        <button
          class={store.tab === "contacts" ? "on" : ""}
          onClick={() => {
            store.tab = "contacts";
            store.changed();
          }}
          data-testid="tab-contacts"
        >
          Contacts{" "}
          {requests > 0 && (
            <span class="badge" data-testid="request-count">
              {requests}
            </span>
          )}
        </button>
        <button
          class={store.tab === "devices" ? "on" : ""}
          onClick={() => {
            store.tab = "devices";
            store.changed();
          }}
          data-testid="tab-devices"
        >
          Devices
        </button>
      </nav>
      {store.tab === "chats" ? <ChatList store={store} /> : store.tab === "contacts" ? <Contacts store={store} /> : <Devices store={store} />}
    </aside>
  );
}

function preview(store: Store, msg: Message | null, group: boolean): string {
  if (!msg) return "No messages yet";
  const who = msg.from === store.session?.userId ? "You: " : group ? `${store.name(msg.from)}: ` : "";
  if (msg.recalled) return "Message recalled";
  switch (msg.kind) {
    case "image":
      return `${who}📷 Photo`;
    case "file":
      return `${who}📎 ${String(msg.attrs?.name ?? "File")}`;
    case "recall":
      return `${store.name(msg.from)} recalled a message`;
    case "system":
      return systemText(store, msg);
    default:
      return who + msg.body;
  }
}

function ChatList({ store }: { store: Store }) {
  const [creating, setCreating] = useState(false);
  const convs = store.sortedConvs();
  return (
    <div class="list">
      <div class="list-actions">
        <button class="secondary" onClick={() => setCreating(true)} data-testid="new-group">
          + New group
        </button>
      </div>
      {creating && <GroupDialog store={store} onClose={() => setCreating(false)} />}
      {convs.length === 0 && <p class="hint">No conversations yet. Add a friend in Contacts and say hi.</p>}
      {convs.map((conv) => {
        const unread = store.unread(conv.id);
        const title = store.convTitle(conv);
        const active = store.open && "conv" in store.open && store.open.conv === conv.id;
        return (
          <button class={`item${active ? " active" : ""}`} key={conv.id} onClick={() => store.openConv({ conv: conv.id })} data-testid="conv-item" data-title={title}>
            <Avatar name={title} group={conv.kind === "group"} />
            <span class="item-main">
              <span class="item-title">{title}</span>
              <span class="item-sub">{preview(store, conv.lastMessage, conv.kind === "group")}</span>
            </span>
            <span class="item-side">
              {conv.lastMessage && <span class="item-time">{time(conv.lastMessage.ts)}</span>}
              {unread > 0 && (
                <span class="badge" data-testid="unread">
                  {unread}
                </span>
              )}
            </span>
          </button>
        );
      })}
    </div>
  );
}

function Contacts({ store }: { store: Store }) {
  const [username, setUsername] = useState("");
  const [busy, setBusy] = useState(false);
  const add = async (event: Event) => {
    event.preventDefault();
    setBusy(true);
    try {
      await store.addFriend(username.trim(), "Hi! Let's chat.");
      setUsername("");
      store.notify("Friend request sent");
    } catch (error) {
      store.showError(error);
    } finally {
      setBusy(false);
    }
  };
  const act = (id: number, action: "accept" | "reject") => store.answer(id, action).catch((e) => store.showError(e));
  return (
    <div class="list">
      <form class="add-friend" onSubmit={add}>
        <input placeholder="Add a friend by username" value={username} onInput={(e) => setUsername(e.currentTarget.value)} data-testid="add-friend-input" required />
        <button class="primary" disabled={busy} data-testid="add-friend-submit">
          Add
        </button>
      </form>
      {store.incoming.length > 0 && <h3>Friend requests</h3>}
      {store.incoming.map((r) => (
        <div class="item static" key={r.id} data-testid="incoming-request" data-from={store.name(r.from)}>
          <Avatar name={store.name(r.from)} />
          <span class="item-main">
            <span class="item-title">{store.name(r.from)}</span>
            <span class="item-sub">{r.note || "wants to be your friend"}</span>
          </span>
          <span class="req-actions">
            <button class="primary small" onClick={() => act(r.id, "accept")} data-testid="accept">
              Accept
            </button>
            <button class="secondary small" onClick={() => act(r.id, "reject")} data-testid="reject">
              Reject
            </button>
          </span>
        </div>
      ))}
      {store.invitations.length > 0 && <h3>Group invitations</h3>}
      {store.invitations.map((i) => (
        <div class="item static" key={i.group} data-testid="invitation" data-title={i.title}>
          <Avatar name={i.title} group />
          <span class="item-main">
            <span class="item-title">{i.title}</span>
            <span class="item-sub">{store.name(i.from)} invited you</span>
          </span>
          <span class="req-actions">
            <button class="primary small" onClick={() => store.answerInvitation(i.group, "accept").catch((e) => store.showError(e))} data-testid="accept-invitation">
              Join
            </button>
            <button class="secondary small" onClick={() => store.answerInvitation(i.group, "decline").catch((e) => store.showError(e))}>
              Decline
            </button>
          </span>
        </div>
      ))}
      {store.outgoing.length > 0 && <h3>Sent requests</h3>}
      {store.outgoing.map((r) => (
        <div class="item static" key={r.id} data-testid="outgoing-request">
          <Avatar name={store.name(r.to)} />
          <span class="item-main">
            <span class="item-title">{store.name(r.to)}</span>
            <span class="item-sub">waiting for an answer</span>
          </span>
        </div>
      ))}
      <h3>Friends</h3>
      {store.friends.length === 0 && <p class="hint">No friends yet.</p>}
      {store.friends.map((f) => (
        <button class="item" key={f.id} onClick={() => store.openConv({ peer: f.id })} data-testid="friend" data-name={f.username}>
          <Avatar name={f.username} />
          <span class="item-main">
            <span class="item-title">{f.display_name || f.username}</span>
            <span class="item-sub">{store.presence.get(f.id) ? "online" : "offline"}</span>
          </span>
          <span class={`dot${store.presence.get(f.id) ? " on" : ""}`} />
        </button>
      ))}
    </div>
  );
}

function FriendPicker({ store, exclude, picked, setPicked }: { store: Store; exclude: number[]; picked: number[]; setPicked: (p: number[]) => void }) {
  const candidates = store.friends.filter((f) => !exclude.includes(f.id));
  if (!candidates.length) return <p class="hint">No friends to add.</p>;
  return (
    <div class="picker">
      {candidates.map((f) => (
        <label key={f.id} class="pick">
          <input
            type="checkbox"
            checked={picked.includes(f.id)}
            onChange={(e) => setPicked(e.currentTarget.checked ? [...picked, f.id] : picked.filter((p) => p !== f.id))}
            data-testid="pick"
            data-name={f.username}
          />
          <Avatar name={f.username} /> {f.username}
        </label>
      ))}
    </div>
  );
}

function GroupDialog({ store, onClose }: { store: Store; onClose: () => void }) {
  const [title, setTitle] = useState("");
  const [picked, setPicked] = useState<number[]>([]);
  const create = async (event: Event) => {
    event.preventDefault();
    try {
      await store.createGroup(title.trim(), picked);
      onClose();
    } catch (error) {
      store.showError(error);
    }
  };
  return (
    <Modal title="New group" onClose={onClose}>
      <form onSubmit={create}>
        <input placeholder="Group name" value={title} onInput={(e) => setTitle(e.currentTarget.value)} required data-testid="group-title" />
        <FriendPicker store={store} exclude={[]} picked={picked} setPicked={setPicked} />
        <div class="modal-actions">
          <button type="button" class="secondary" onClick={onClose}>
            Cancel
          </button>
          <button class="primary" data-testid="group-create">
            Create
          </button>
        </div>
      </form>
    </Modal>
  );
}

function AddMemberDialog({ store, conv, onClose }: { store: Store; conv: number; onClose: () => void }) {
  const [picked, setPicked] = useState<number[]>([]);
  const members = (store.groupMembers.get(conv) ?? []).map((m) => m.user);
  const add = async (event: Event) => {
    event.preventDefault();
    try {
      await store.addMembers(conv, picked);
      onClose();
    } catch (error) {
      store.showError(error);
    }
  };
  return (
    <Modal title="Add members" onClose={onClose}>
      <form onSubmit={add}>
        <FriendPicker store={store} exclude={members} picked={picked} setPicked={setPicked} />
        <div class="modal-actions">
          <button type="button" class="secondary" onClick={onClose}>
            Cancel
          </button>
          <button class="primary" disabled={!picked.length} data-testid="add-members-submit">
            Add
          </button>
        </div>
      </form>
    </Modal>
  );
}

function systemText(store: Store, msg: Message): string {
  const who = store.name(msg.from);
  const users = (msg.attrs?.users ?? []).map((u) => store.name(u)).join(", ");
  switch (msg.attrs?.event) {
    case "created":
      return `${who} created the group “${msg.attrs?.title ?? ""}”`;
    case "members_added":
      // Accepting an invitation records the invitee adding themselves: they joined.
      return msg.attrs?.users?.length === 1 && msg.attrs.users[0] === msg.from ? `${who} joined` : `${who} added ${users}`;
    case "member_removed":
      return `${who} removed ${users}`;
    case "member_left":
      return `${who} left`;
    case "renamed":
      return `${who} renamed the group to “${msg.attrs?.title ?? ""}”`;
    case "owner_changed":
      return `${users} is now the owner`;
    case "admin_added":
      return `${users} is now an admin`;
    case "admin_removed":
      return `${users} is no longer an admin`;
    default:
      return "The group changed";
  }
}

const thumbCache = new Map<string, Promise<string>>();

function Thumb({ store, hash, full }: { store: Store; hash: string; full?: boolean }) {
  const [url, setUrl] = useState<string | null>(null);
  const [failed, setFailed] = useState(false);
  useEffect(() => {
    const key = `${hash}${full ? "" : "/thumb"}`;
    let promise = thumbCache.get(key);
    if (!promise) {
      promise = store.api.blob(`/v1/media/${key}`).then((blob) => URL.createObjectURL(blob));
      promise.catch(() => thumbCache.delete(key));
      thumbCache.set(key, promise);
    }
    let live = true;
    promise.then(
      (u) => live && setUrl(u),
      () => live && setFailed(true),
    );
    return () => {
      live = false;
    };
  }, [hash, full]);
  if (failed) return <div class="thumb missing">Image unavailable</div>;
  if (!url) return <div class="thumb loading" />;
  return <img class={full ? "full" : "thumb"} src={url} alt="image" data-testid={full ? "full-image" : "thumb"} />;
}


/** The emoji picker of the `emoji-picker-element` package (its data served with the app, not from a CDN). */
function EmojiPicker({ onPick, onClose }: { onPick: (emoji: string) => void; onClose: () => void }) {
  const host = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const picker = new Picker({ dataSource: emojiData });
    picker.setAttribute("data-testid", "emoji-picker");
    const onClick = (event: Event) => {
      const unicode = (event as CustomEvent<{ unicode?: string }>).detail?.unicode;
      if (unicode) onPick(unicode);
    };
    const onKey = (event: Event) => {
      if ((event as KeyboardEvent).key === "Escape") onClose();
    };
    picker.addEventListener("emoji-click", onClick);
    picker.addEventListener("keydown", onKey);
    host.current?.appendChild(picker);
    return () => {
      picker.removeEventListener("emoji-click", onClick);
      picker.removeEventListener("keydown", onKey);
      picker.remove();
    };
  }, []);
  return <div class="emoji-pop" ref={host} />;
}

function Chat({ store }: { store: Store }) {
  const open = store.open!;
  const conv: ConvView | undefined = "conv" in open ? store.convs.get(open.conv) : undefined;
  const convId = "conv" in open ? open.conv : null;
  const peer = conv ? conv.peer : "peer" in open ? open.peer : null;
  const title = conv ? store.convTitle(conv) : store.name(peer);
  const isGroup = conv?.kind === "group";
  const messages = convId != null ? store.sortedMessages(convId) : [];
  const pending = store.pendingIn(open);
  const info = convId != null ? store.client?.conversation(convId) : undefined;
  const me = store.session!.userId;
  const uploads = store.uploads.filter((u) => u.key === openKey(open));
  const typing = convId != null ? store.typingIn(convId) : [];
  const [text, setText] = useState("");
  const [problem, setProblem] = useState<string | null>(null);
  const [emoji, setEmoji] = useState(false);
  const [adding, setAdding] = useState(false);
  const [groupInfo, setGroupInfo] = useState(false);
  const [readBy, setReadBy] = useState(false);
  const [dragging, setDragging] = useState(false);
  const [menu, setMenu] = useState<number | null>(null);
  const [viewing, setViewing] = useState<string | null>(null);
  const scroller = useRef<HTMLDivElement>(null);
  const composer = useRef<HTMLTextAreaElement>(null);
  const stick = useRef(true);
  const lastTyping = useRef(0);
  const fileInput = useRef<HTMLInputElement>(null);
  const prevHeight = useRef<{ height: number; first: number } | null>(null);
  const lastMine = [...messages].reverse().find((m) => m.from === me && m.kind !== "recall" && m.kind !== "system");
  const members = convId != null ? store.groupMembers.get(convId) : undefined;
  const reads = convId != null ? store.groupReads.get(convId) : undefined;

  // Keep the view at the bottom for new messages, and in place when older ones are prepended.
  useLayoutEffect(() => {
    const el = scroller.current;
    if (!el) return;
    const first = messages[0]?.seq ?? 0;
    if (prevHeight.current && prevHeight.current.first !== first && !stick.current) {
      el.scrollTop += el.scrollHeight - prevHeight.current.height;
    } else if (stick.current) {
      el.scrollTop = el.scrollHeight;
    }
    prevHeight.current = { height: el.scrollHeight, first };
  });

  // The composer grows with its text, up to a few lines.
  useLayoutEffect(() => {
    const el = composer.current;
    if (!el) return;
    el.style.height = "auto";
    el.style.height = `${Math.min(el.scrollHeight, 160)}px`;
  }, [text]);

  // Group read receipts of my latest message: groups get no live read frames, so they are polled while open.
  useEffect(() => {
    if (!isGroup || convId == null || !lastMine) return;
    void store.loadReads(convId, lastMine.seq);
    const timer = setInterval(() => void store.loadReads(convId, lastMine.seq), 3000);
    return () => clearInterval(timer);
  }, [isGroup, convId, lastMine?.seq]);

  const onScroll = () => {
    const el = scroller.current;
    if (!el) return;
    stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
    if (el.scrollTop < 60 && convId != null && store.hasOlder.get(convId) !== false) {
      void store.loadOlder(convId);
    }
  };

  const submit = (event?: Event) => {
    event?.preventDefault();
    const body = text.trim();
    if (!body) return;
    stick.current = true;
    const refused = store.send("text", body);
    // Refused before sending (too long): the text stays, with the reason.
    if (refused) {
      setProblem(refused);
      return;
    }
    setProblem(null);
    setText("");
  };
  const onInput = (value: string) => {
    setText(value);
    if (problem) setProblem(null);
    if (convId != null && Date.now() - lastTyping.current > 2000) {
      lastTyping.current = Date.now();
      store.client?.typing(convId);
    }
  };
  const sendFiles = (files: FileList | File[] | null | undefined) => {
    const list = [...(files ?? [])];
    if (!list.length) return false;
    stick.current = true;
    for (const file of list) void store.sendFile(file);
    return true;
  };
  const pickFile = (event: Event) => {
    const input = event.currentTarget as HTMLInputElement;
    const files = [...(input.files ?? [])];
    input.value = "";
    sendFiles(files);
  };
  const online = store.client?.isOnline;

  return (
    <section
      class={`chat${dragging ? " dragging" : ""}`}
      data-testid="chat"
      data-title={title}
      aria-label={`Chat with ${title}`}
      onDragOver={(e) => {
        if (e.dataTransfer?.types.includes("Files")) {
          e.preventDefault();
          setDragging(true);
        }
      }}
      onDragLeave={() => setDragging(false)}
      onDrop={(e) => {
        setDragging(false);
        if (sendFiles(e.dataTransfer?.files)) e.preventDefault();
      }}
    >
      <header class="chat-head">
        <button class="ghost back" onClick={() => store.openConv(null)} aria-label="Back to the list">
          ‹
        </button>
        <Avatar name={title || "?"} group={isGroup} />
        <div class="chat-title">
          <h1 class="chat-name" data-testid="chat-title">
            {title}
          </h1>
          <div class="chat-sub" data-testid="chat-sub">
            {typing.length
              ? `${typing.map((u) => store.name(u)).join(", ")} ${typing.length > 1 ? "are" : "is"} typing…`
              : isGroup
                ? `${members?.length ?? "…"} members`
                : peer != null && store.presence.get(peer)
                  ? "online"
                  : ""}
          </div>
        </div>
        {isGroup && (
          <>
            <button class="secondary small" onClick={() => setAdding(true)} data-testid="add-member">
              Add member
            </button>
            <button class="secondary small" onClick={() => setGroupInfo(true)} data-testid="group-info">
              Info
            </button>
          </>
        )}
      </header>
      {adding && convId != null && <AddMemberDialog store={store} conv={convId} onClose={() => setAdding(false)} />}
      {groupInfo && convId != null && <GroupInfo store={store} conv={convId} onClose={() => setGroupInfo(false)} />}
      {readBy && convId != null && <ReadBy store={store} conv={convId} onClose={() => setReadBy(false)} />}
      <div class="messages" ref={scroller} onScroll={onScroll} data-testid="messages" role="log" tabIndex={0} aria-label="Messages">
        {convId != null && store.hasOlder.get(convId) && (
          <button class="link older" onClick={() => void store.loadOlder(convId)} data-testid="load-older">
            Load earlier messages
          </button>
        )}
        {messages.map((msg) => {
          if (msg.kind === "recall") return null;
          if (msg.kind === "system")
            return (
              <div class="system" key={msg.seq} data-testid="system">
                {systemText(store, msg)}
              </div>
            );
          const mine = msg.from === me;
          const recallable = mine && !msg.recalled && Date.now() - msg.ts < RECALL_WINDOW_MS;
          const read = info && info.peerReadSeq >= msg.seq;
          const media = msg.attrs?.media ? String(msg.attrs.media) : null;
          return (
            <div class={`row${mine ? " mine" : ""}${menu === msg.seq ? " menu-open" : ""}`} key={msg.seq} data-testid="message" data-seq={msg.seq} data-body={msg.recalled ? "" : msg.body}>
              <div class={`bubble kind-${msg.kind}${msg.recalled ? " recalled" : ""}`} onClick={() => setMenu(menu === msg.seq ? null : msg.seq)}>
                {isGroup && !mine && <div class="sender">{store.name(msg.from)}</div>}
                {msg.recalled ? (
                  <em data-testid="recalled">{mine ? "You recalled a message" : `${store.name(msg.from)} recalled a message`}</em>
                ) : msg.kind === "image" && media ? (
                  <>
                    <button
                      class="thumb-button"
                      aria-label="Open the image"
                      data-testid="open-image"
                      onClick={(e) => {
                        e.stopPropagation();
                        setViewing(media);
                      }}
                    >
                      <Thumb store={store} hash={media} />
                    </button>
                    {msg.body && <div>{msg.body}</div>}
                  </>
                ) : msg.kind === "file" ? (
                  <span class="file" data-testid="file">
                    <span aria-hidden="true">📎 </span>
                    <span class="file-name">{String(msg.attrs?.name ?? "file")}</span>
                    {typeof msg.attrs?.size === "number" && <span class="file-size"> · {Math.max(1, Math.round(msg.attrs.size / 1024))} KB</span>}
                    {media && (
                      <button
                        class={`download${mine ? " on-mine" : ""}`}
                        onClick={(e) => {
                          e.stopPropagation();
                          void store.download(media, String(msg.attrs?.name ?? "file"));
                        }}
                        data-testid="download"
                      >
                        Download
                      </button>
                    )}
                  </span>
                ) : (
                  <span class="text">
                    <Linkified text={msg.body} />
                  </span>
                )}
                <span class="meta">
                  {time(msg.ts)}
                  {mine && !isGroup && !msg.recalled && (
                    <span class={`tick${read ? " read" : ""}`} aria-label={read ? "read" : "delivered"}>
                      {read ? " ✓✓" : " ✓"}
                    </span>
                  )}
                </span>
              </div>
              {recallable && (
                <div class="actions">
                  <button
                    class="menu"
                    onClick={() => {
                      setMenu(null);
                      store.recall(msg.conv, msg.seq);
                    }}
                    data-testid="recall"
                  >
                    Recall
                  </button>
                </div>
              )}
              {mine && !isGroup && lastMine && lastMine.seq === msg.seq && (
                <div class="receipt" data-testid="receipt">
                  {read ? "Read" : "Delivered"}
                </div>
              )}
              {mine && isGroup && lastMine && lastMine.seq === msg.seq && reads && reads.seq === msg.seq && (
                <button class="receipt link" onClick={() => setReadBy(true)} data-testid="group-receipt">
                  Read by {reads.read.length} of {reads.read.length + reads.unread.length}
                </button>
              )}
            </div>
          );
        })}
        {pending.map((out: Outgoing) => (
          <div class="row mine" key={out.cid} data-testid="pending" data-body={out.body} data-failed={out.failed ? "true" : "false"}>
            <div class={`bubble pending kind-${out.kind}${out.failed ? " failed" : ""}`}>
              <span class="text">{out.kind === "image" ? "📷 Photo" : out.kind === "file" ? `📎 ${String(out.attrs?.name ?? "file")}` : out.body}</span>
              <span class="meta">{out.failed ? "" : online ? " sending…" : " waiting for connection"}</span>
            </div>
            {out.failed && (
              <div class="receipt failed" role="alert">
                Not sent: {out.reason ?? out.failed.replace(/_/g, " ")}.{" "}
                <button class="link" onClick={() => store.retryFailed(out.cid)} data-testid="retry">
                  Retry
                </button>{" "}
                <button class="link" onClick={() => store.dismissFailed(out.cid)} data-testid="delete-unsent">
                  Delete
                </button>
              </div>
            )}
          </div>
        ))}
        {uploads.map((u) => (
          <div class="row mine" key={u.id} data-testid="upload">
            <div class="bubble upload">
              <div class="upload-name">📎 {u.name}</div>
              {u.error ? (
                <div class="receipt failed" role="alert">
                  {u.error}{" "}
                  <button class="link" onClick={() => store.dismissUpload(u.id)}>
                    Dismiss
                  </button>
                </div>
              ) : (
                <progress max={1} value={u.progress} data-testid="upload-progress" aria-label={`Uploading ${u.name}`} />
              )}
            </div>
          </div>
        ))}
      </div>
      {emoji && (
        <EmojiPicker
          onPick={(e) => {
            setText((t) => t + e);
            composer.current?.focus();
          }}
          onClose={() => {
            setEmoji(false);
            composer.current?.focus();
          }}
        />
      )}
      {problem && (
        <div class="composer-error" role="alert" data-testid="composer-error">
          {problem}
        </div>
      )}
      <form class="composer" onSubmit={submit}>
        <button type="button" class="icon" onClick={() => setEmoji(!emoji)} aria-label="Emoji" aria-expanded={emoji} data-testid="emoji-button">
          😊
        </button>
        <button type="button" class="icon" onClick={() => fileInput.current?.click()} aria-label="Attach a photo or file" data-testid="image-button">
          📎
        </button>
        <input ref={fileInput} type="file" multiple hidden onChange={pickFile} data-testid="file-input" />
        <textarea
          ref={composer}
          class="text-input"
          rows={1}
          aria-label="Message"
          placeholder={online ? "Message" : "Message (will send when back online)"}
          value={text}
          onInput={(e) => onInput(e.currentTarget.value)}
          onKeyDown={(e) => {
            // Enter sends, Shift+Enter starts a new line (and Enter while composing with an IME is left to it).
            if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
              e.preventDefault();
              submit();
            }
          }}
          onPaste={(e) => {
            if (sendFiles(e.clipboardData?.files)) e.preventDefault();
          }}
          data-testid="composer"
        />
        <button class="primary send" type="submit" disabled={!text.trim()} data-testid="send">
          Send
        </button>
      </form>
      {viewing && (
        <Modal title="Image" onClose={() => setViewing(null)} bare>
          <button class="viewer-close" onClick={() => setViewing(null)} aria-label="Close the image" data-testid="viewer-close">
            ✕
          </button>
          <Thumb store={store} hash={viewing} full />
        </Modal>
      )}
    </section>
  );
}
