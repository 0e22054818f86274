// The app's state: session, contacts, conversations and their messages, fed by REST and the ChatClient.

import { Api, ApiError, type ConversationRow, type FriendRequest, type Profile } from "./api";
import { ChatClient, checkSend, type StatusEvent } from "./lib/client";
import type { Attrs, KickFrame, Message, NoticeFrame, SendFrame } from "./lib/frames";
import { deletePending, loadPending, savePending } from "./lib/pending";

export interface Session {
  token: string;
  userId: number;
  username: string;
  expiresAt: number;
}

export interface ConvView {
  id: number;
  kind: "direct" | "group";
  title: string;
  peer: number | null;
  lastMessage: Message | null;
  lastActivity: number;
}

/** A message of mine not acknowledged yet (or refused). */
export interface Outgoing {
  cid: string;
  conv: number | null;
  to: number | null;
  kind: SendFrame["kind"];
  body: string;
  attrs?: Attrs;
  ts: number;
  failed?: string;
  /** Why it failed, in words. */
  reason?: string;
}

/** One of my devices (`GET /v1/devices`). */
export interface DeviceRow {
  device: string;
  platform: string;
  first_seen_ms: number;
  last_seen_ms: number;
  online: boolean;
  this_login: boolean;
}

export interface DevicePolicy {
  one_session_per_platform: boolean | null;
  server_platforms: string[];
  platforms: string[];
}

export interface Upload {
  id: number;
  key: string;
  name: string;
  progress: number;
  error?: string;
}

/** Which chat is open: a conversation, or a 1:1 chat with a friend that has no conversation yet. */
export type Open = { conv: number } | { peer: number } | null;

const PAGE = 30;

/**
 * A node URL the page may send its token to: http(s) on the page's own host (any port). Anything else is refused,
 * so a crafted `?nodes=` link cannot send credentials to a foreign server.
 */
function acceptableNode(raw: string): string | null {
  try {
    const url = new URL(raw);
    if ((url.protocol !== "http:" && url.protocol !== "https:") || url.hostname !== location.hostname) return null;
    return url.origin;
  } catch {
    return null;
  }
}

export function configuredNodes(): string[] {
  const fromQuery = new URLSearchParams(location.search).get("nodes");
  if (fromQuery) {
    const nodes = fromQuery
      .split(",")
      .map((n) => acceptableNode(n.trim()))
      .filter((n): n is string => n !== null);
    if (nodes.length) {
      localStorage.setItem("im.nodes", JSON.stringify(nodes));
      return nodes;
    }
  }
  try {
    const saved = JSON.parse(localStorage.getItem("im.nodes") ?? "null");
    if (Array.isArray(saved)) {
      const nodes = saved.map((n) => acceptableNode(String(n))).filter((n): n is string => n !== null);
      if (nodes.length) return nodes;
    }
  } catch {
    /* ignore */
  }
  return [location.origin];
}

/** The platform this browser reports (`platform=` on connect): a phone's browser counts as that phone. */
export function platform(): string {
  const ua = navigator.userAgent;
  if (/Android/i.test(ua)) return "android";
  if (/iPhone|iPad|iPod/i.test(ua)) return "ios";
  return "web";
}

/** Words for an error code the server or the client gave a send. */
function failureText(code: string, msg?: string): string {
  switch (code) {
    case "too_large":
    case "limit_exceeded":
      return msg && code === "too_large" ? msg : "Too long to send";
    case "not_friends":
      return "You are no longer friends";
    case "blocked":
      return "This conversation is closed";
    case "not_member":
      return "You are not in this group any more";
    case "unknown_media":
      return "The attachment is no longer available";
    default:
      return "Not sent";
  }
}

function deviceId(): string {
  let id = sessionStorage.getItem("im.device");
  if (!id) {
    id = `web-${Math.random().toString(36).slice(2, 10)}`;
    sessionStorage.setItem("im.device", id);
  }
  return id;
}

export class Store {
  readonly nodes = configuredNodes();
  readonly api: Api;
  client: ChatClient | null = null;
  session: Session | null = null;
  status: StatusEvent | null = null;
  profiles = new Map<number, Profile>();
  friends: Profile[] = [];
  incoming: FriendRequest[] = [];
  outgoing: FriendRequest[] = [];
  /** Pending invitations to groups (from people who are not my friends). */
  invitations: { group: number; title: string; from: number; created_ms: number }[] = [];
  presence = new Map<number, boolean>();
  convs = new Map<number, ConvView>();
  messages = new Map<number, Map<number, Message>>();
  hasOlder = new Map<number, boolean>();
  outbox = new Map<string, Outgoing>();
  uploads: Upload[] = [];
  typing = new Map<number, Map<number, number>>();
  groupMembers = new Map<number, { user: number; role: string; username: string }[]>();
  /** Group read receipts of my latest message per group. */
  groupReads = new Map<number, { seq: number; read: number[]; unread: number[] }>();
  open: Open = null;
  tab: "chats" | "contacts" | "devices" = "chats";
  devices: DeviceRow[] = [];
  devicePolicy: DevicePolicy | null = null;
  /** The last kick, for the status bar (replaced: moved out by another login or device). */
  kick: KickFrame | null = null;
  toast: string | null = null;
  private listeners = new Set<() => void>();
  private scheduled = false;
  private uploadCounter = 0;
  private refreshTimer?: ReturnType<typeof setTimeout>;

  constructor() {
    this.api = new Api(this.nodes, () => this.client?.currentNode ?? this.nodes[0]);
    try {
      const saved = JSON.parse(localStorage.getItem("im.session") ?? "null") as Session | null;
      if (saved && saved.expiresAt * 1000 > Date.now()) this.session = saved;
    } catch {
      /* ignore */
    }
    window.addEventListener("storage", (event) => {
      // Another tab logged out or in as someone else.
      if (event.key === "im.session" && (event.newValue ?? "") !== JSON.stringify(this.session)) location.reload();
    });
    document.addEventListener("visibilitychange", () => this.markOpenRead());
    setInterval(() => this.expireTyping(), 1000);
  }

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Schedules one re-render for any number of changes in the same task. */
  changed(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      for (const listener of this.listeners) listener();
    });
  }

  showError(error: unknown): void {
    this.notify(error instanceof Error ? error.message : String(error));
  }

  /** Shows a short message for a few seconds. */
  notify(text: string): void {
    this.toast = text;
    this.changed();
    const shown = this.toast;
    setTimeout(() => {
      if (this.toast === shown) {
        this.toast = null;
        this.changed();
      }
    }, 6000);
  }

  // ---- session ----

  async register(username: string, password: string): Promise<void> {
    await this.api.request("POST", "/v1/users", { username, password });
    await this.login(username, password);
  }

  async login(username: string, password: string): Promise<void> {
    const answer = await this.api.request<{ user_id: number; token: string; expires_at: number }>("POST", "/v1/sessions", {
      username,
      password,
    });
    this.session = { token: answer.token, userId: answer.user_id, username, expiresAt: answer.expires_at };
    localStorage.setItem("im.session", JSON.stringify(this.session));
    await this.startSession();
  }

  async logout(): Promise<void> {
    this.client?.stop();
    // Revoke the token on the server too (every node closes its connections); leaving works even if this fails.
    await this.api.request("POST", "/v1/auth/logout").catch(() => undefined);
    localStorage.removeItem("im.session");
    location.reload();
  }

  async startSession(): Promise<void> {
    const session = this.session;
    if (!session) return;
    this.api.token = session.token;
    const client = new ChatClient({
      nodes: this.nodes,
      token: session.token,
      device: deviceId(),
      platform: platform(),
      // A device new to a conversation fetches only its latest page; older ones come with scroll-back.
      initialCursor: (c) => Math.max(0, c.last_seq - PAGE),
      checkAuth: async () => {
        try {
          await this.api.request("GET", "/v1/users/me");
          return true;
        } catch (error) {
          return !(error instanceof ApiError && error.status === 401);
        }
      },
    });
    this.client = client;
    client.on("status", (status) => {
      this.status = status;
      if (status.status === "unauthorized") {
        localStorage.removeItem("im.session");
        this.session = null;
        this.toast = "Your session expired: log in again.";
      }
      this.changed();
    });
    client.on("hello", () => void this.refresh());
    client.on("message", ({ msg }) => this.onMessage(msg));
    client.on("conv", () => this.changed());
    client.on("typing", (t) => {
      if (t.user === session.userId) return;
      let users = this.typing.get(t.conv);
      if (!users) this.typing.set(t.conv, (users = new Map()));
      users.set(t.user, Date.now() + 4000);
      this.changed();
    });
    client.on("notice", (notice) => void this.onNotice(notice));
    client.on("sendFailed", (failure) => {
      const out = this.outbox.get(failure.cid);
      if (out) {
        out.failed = failure.code;
        out.reason = failureText(failure.code, failure.msg);
        this.persist(out);
      }
      this.changed();
    });
    client.on("kick", (kick) => {
      this.kick = kick;
      this.changed();
    });
    // Messages that were not sent before the last reload: queued again with their cid (stored at most once).
    for (const entry of await loadPending(session.userId)) {
      const out: Outgoing = { ...entry, kind: entry.kind as SendFrame["kind"], attrs: entry.attrs as Attrs | undefined };
      this.outbox.set(out.cid, out);
      if (!out.failed) this.transmit(out);
    }
    const reopen = sessionStorage.getItem("im.open");
    if (reopen) {
      try {
        this.open = JSON.parse(reopen) as Open;
      } catch {
        /* ignore */
      }
    }
    client.start();
    this.changed();
    await this.refresh();
    // A chat reopened after a reload loads its history and receipts like one opened by hand.
    if (this.open) this.openConv(this.open);
  }

  /** Reloads everything REST knows (after login and after every reconnect). */
  async refresh(): Promise<void> {
    try {
      const [friends, requests, conversations, invitations] = await Promise.all([
        this.api.request<{ friends: Profile[] }>("GET", "/v1/friends"),
        this.api.request<{ incoming: FriendRequest[]; outgoing: FriendRequest[] }>("GET", "/v1/friends/requests"),
        this.api.request<{ conversations: ConversationRow[]; total_unread: number }>("GET", "/v1/conversations"),
        this.api.request<{ invitations: Store["invitations"] }>("GET", "/v1/invitations"),
      ]);
      this.invitations = invitations.invitations;
      this.friends = friends.friends;
      for (const friend of friends.friends) this.profiles.set(friend.id, friend);
      this.incoming = requests.incoming.filter((r) => r.status === "pending");
      this.outgoing = requests.outgoing.filter((r) => r.status === "pending");
      for (const row of conversations.conversations) this.noteConversation(row);
      const unknown = new Set<number>();
      for (const r of [...this.incoming, ...this.outgoing]) unknown.add(r.from === this.session?.userId ? r.to : r.from);
      for (const i of this.invitations) unknown.add(i.from);
      for (const c of this.convs.values()) if (c.peer) unknown.add(c.peer);
      await Promise.all([...unknown].map((id) => this.profile(id)));
      if (this.friends.length) {
        const presence = await this.api.request<{ online: Record<string, boolean> }>(
          "GET",
          `/v1/presence?users=${this.friends.map((f) => f.id).join(",")}`,
        );
        for (const [id, online] of Object.entries(presence.online)) this.presence.set(Number(id), online);
      }
    } catch (error) {
      if (!isOffline(error)) this.showError(error);
    }
    this.changed();
  }

  private noteConversation(row: ConversationRow): void {
    const existing = this.convs.get(row.id);
    this.convs.set(row.id, {
      id: row.id,
      kind: row.kind,
      title: row.title,
      peer: row.peer,
      lastMessage: pickLater(existing?.lastMessage ?? null, row.last_message),
      lastActivity: Math.max(existing?.lastActivity ?? 0, row.last_activity_ms),
    });
    this.client?.noteConversation(row.id, row.last_seq, row.read_seq, row.peer, row.kind === "group" ? row.title : null);
  }

  private scheduleRefresh(): void {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => void this.refresh(), 150);
  }

  async profile(id: number): Promise<Profile | undefined> {
    if (this.profiles.has(id)) return this.profiles.get(id);
    try {
      const profile = await this.api.request<Profile>("GET", `/v1/users/${id}`);
      this.profiles.set(id, profile);
      this.changed();
      return profile;
    } catch {
      return undefined;
    }
  }

  name(id: number | null | undefined): string {
    if (id == null) return "";
    if (id === this.session?.userId) return "You";
    const profile = this.profiles.get(id);
    if (!profile) {
      void this.profile(id);
      return `user ${id}`;
    }
    return profile.display_name || profile.username;
  }

  // ---- live events ----

  private onMessage(msg: Message): void {
    let map = this.messages.get(msg.conv);
    if (!map) this.messages.set(msg.conv, (map = new Map()));
    map.set(msg.seq, msg);
    if (msg.kind === "recall" && typeof msg.attrs?.target_seq === "number") {
      const target = map.get(msg.attrs.target_seq);
      if (target) map.set(target.seq, { ...target, recalled: true, body: "", attrs: null });
    }
    const outgoing = this.outbox.get(msg.cid);
    if (outgoing && msg.from === this.session?.userId) {
      this.outbox.delete(msg.cid);
      void deletePending(msg.cid);
      if (this.open && "peer" in this.open && outgoing.to === this.open.peer) {
        this.open = { conv: msg.conv };
        sessionStorage.setItem("im.open", JSON.stringify(this.open));
        // Until the next refresh lists it, the new 1:1 conversation is known from here (no blank header).
        if (!this.convs.has(msg.conv)) {
          this.convs.set(msg.conv, { id: msg.conv, kind: "direct", title: "", peer: outgoing.to, lastMessage: msg, lastActivity: msg.ts });
        }
      }
    }
    this.typing.get(msg.conv)?.delete(msg.from);
    const conv = this.convs.get(msg.conv);
    if (!conv) {
      this.scheduleRefresh();
    } else {
      conv.lastMessage = pickLater(conv.lastMessage, msg);
      conv.lastActivity = Math.max(conv.lastActivity, msg.ts);
      if (msg.kind === "system") {
        // Membership or roles may have changed: the open group reloads its members, others forget them.
        if (this.open && "conv" in this.open && this.open.conv === msg.conv) void this.loadMembers(msg.conv);
        else this.groupMembers.delete(msg.conv);
        if (msg.attrs?.event === "renamed" && typeof msg.attrs.title === "string") conv.title = msg.attrs.title;
      }
    }
    if (msg.from !== this.session?.userId) void this.profile(msg.from);
    this.markOpenRead();
    this.changed();
  }

  private async onNotice(notice: NoticeFrame): Promise<void> {
    if (notice.kind === "presence") {
      this.presence.set(notice.user, Boolean(notice.online));
      this.changed();
      return;
    }
    await this.profile(notice.user);
    if (notice.kind === "friend_request") this.notify(`${this.name(notice.user)} wants to be your friend`);
    if (notice.kind === "friend_accepted") this.notify(`${this.name(notice.user)} accepted your friend request`);
    if (notice.kind === "group_invitation") this.notify(`${this.name(notice.user)} invited you to a group`);
    await this.refresh();
  }

  private expireTyping(): void {
    const now = Date.now();
    let changed = false;
    for (const users of this.typing.values()) {
      for (const [user, until] of users) {
        if (until < now) {
          users.delete(user);
          changed = true;
        }
      }
    }
    if (changed) this.changed();
  }

  typingIn(conv: number): number[] {
    return [...(this.typing.get(conv)?.keys() ?? [])];
  }

  // ---- conversations ----

  openConv(open: Open): void {
    if (open && "peer" in open) {
      const peer = open.peer;
      const existing = [...this.convs.values()].find((c) => c.kind === "direct" && c.peer === peer);
      if (existing) open = { conv: existing.id };
    }
    this.open = open;
    sessionStorage.setItem("im.open", JSON.stringify(open));
    if (open && "conv" in open) {
      const conv = this.convs.get(open.conv);
      const id = open.conv;
      // Receipts are asked once my messages are loaded, so scrolling back on a new device shows ✓✓ where due.
      const loaded = (this.messages.get(id)?.size ?? 0) < PAGE ? this.loadOlder(id) : Promise.resolve();
      if (conv?.kind === "direct") void loaded.then(() => this.loadPeerRead(id));
      if (conv?.kind === "group") void this.loadMembers(open.conv);
    }
    this.markOpenRead();
    this.changed();
  }

  sortedConvs(): ConvView[] {
    return [...this.convs.values()].sort((a, b) => b.lastActivity - a.lastActivity);
  }

  convTitle(conv: ConvView): string {
    return conv.kind === "group" ? conv.title || `Group ${conv.id}` : this.name(conv.peer);
  }

  sortedMessages(conv: number): Message[] {
    return [...(this.messages.get(conv)?.values() ?? [])].sort((a, b) => a.seq - b.seq);
  }

  /** Unread messages of `conv`: events (a group created, renamed, a member added; recalls) are not counted. */
  unread(conv: number): number {
    const client = this.client;
    if (!client) return 0;
    const unread = client.unread(conv);
    if (!unread) return 0;
    const readSeq = client.conversation(conv)?.readSeq ?? 0;
    let events = 0;
    for (const msg of this.messages.get(conv)?.values() ?? []) {
      if (msg.seq > readSeq && (msg.kind === "system" || msg.kind === "recall")) events += 1;
    }
    return Math.max(0, unread - events);
  }

  totalUnread(): number {
    let total = 0;
    for (const id of this.convs.keys()) total += this.unread(id);
    return total;
  }

  markOpenRead(): void {
    const open = this.open;
    if (!open || !("conv" in open) || document.visibilityState !== "visible" || !this.client) return;
    const info = this.client.conversation(open.conv);
    if (info && info.lastSeq > info.readSeq) this.client.markRead(open.conv, info.lastSeq);
  }

  /** Loads the page of history before the oldest loaded message (REST, newest first). */
  async loadOlder(conv: number): Promise<void> {
    const loaded = this.sortedMessages(conv);
    const before = loaded.length ? loaded[0].seq : (this.client?.conversation(conv)?.lastSeq ?? 0) + 1;
    if (before <= 1) {
      this.hasOlder.set(conv, false);
      this.changed();
      return;
    }
    try {
      const page = await this.api.request<{ messages: Message[]; more: boolean }>(
        "GET",
        `/v1/conversations/${conv}/messages?before_seq=${before}&limit=${PAGE}`,
      );
      let map = this.messages.get(conv);
      if (!map) this.messages.set(conv, (map = new Map()));
      for (const msg of page.messages) if (!map.has(msg.seq)) map.set(msg.seq, msg);
      for (const msg of page.messages) {
        if (msg.kind === "recall" && typeof msg.attrs?.target_seq === "number") {
          const target = map.get(msg.attrs.target_seq);
          if (target && !target.recalled) map.set(target.seq, { ...target, recalled: true, body: "", attrs: null });
        }
        void this.profile(msg.from);
      }
      this.hasOlder.set(conv, page.more);
    } catch (error) {
      if (!isOffline(error)) this.showError(error);
    }
    this.changed();
  }

  private async loadPeerRead(conv: number): Promise<void> {
    const mine = this.sortedMessages(conv).filter((m) => m.from === this.session?.userId);
    const last = mine[mine.length - 1];
    if (!last) return;
    try {
      const reads = await this.api.request<{ read: number[] }>("GET", `/v1/conversations/${conv}/reads?seq=${last.seq}`);
      if (reads.read.length) this.client?.notePeerRead(conv, last.seq);
    } catch {
      /* receipts are best effort */
    }
  }

  async loadMembers(conv: number): Promise<void> {
    try {
      const answer = await this.api.request<{ members: { user: number; role: string; username: string }[] }>(
        "GET",
        `/v1/groups/${conv}/members`,
      );
      this.groupMembers.set(conv, answer.members);
      this.changed();
    } catch (error) {
      if (!isOffline(error)) this.showError(error);
    }
  }

  // ---- actions ----

  /**
   * Sends a message to the open chat. Returns why it cannot be sent (over the node's limits) without queueing it —
   * the caller keeps what the user wrote — or null once it is queued (kept in IndexedDB until acknowledged).
   */
  send(kind: SendFrame["kind"], body: string, attrs?: Attrs, open: Open = this.open): string | null {
    const client = this.client;
    const session = this.session;
    if (!client || !open || !session) return "Not connected";
    const cid = client.newCid();
    const target = "conv" in open ? { conv: open.conv } : { to: open.peer };
    const limits = client.limits;
    if (limits) {
      const problem = checkSend({ t: "send", cid, kind, body, ...target, ...(attrs ? { attrs } : {}) }, limits);
      if (problem) return problem;
    }
    const out: Outgoing = {
      cid,
      conv: "conv" in open ? open.conv : null,
      to: "peer" in open ? open.peer : null,
      kind,
      body,
      attrs,
      ts: Date.now(),
    };
    this.outbox.set(cid, out);
    this.persist(out);
    this.transmit(out);
    this.changed();
    return null;
  }

  /** Hands a queued message to the client (same cid every time). */
  private transmit(out: Outgoing): void {
    const target = out.conv != null ? { conv: out.conv } : { to: out.to ?? 0 };
    this.client?.send(target, out.kind, out.body, out.attrs, out.cid).done.catch(() => undefined);
  }

  private persist(out: Outgoing): void {
    const user = this.session?.userId;
    if (user == null) return;
    void savePending({ ...out, user, attrs: out.attrs as Record<string, unknown> | undefined });
  }

  /** Sends a failed message again (same cid: if it was stored after all, it is not stored twice). */
  retryFailed(cid: string): void {
    const out = this.outbox.get(cid);
    if (!out) return;
    const limits = this.client?.limits;
    if (limits) {
      const target = out.conv != null ? { conv: out.conv } : { to: out.to ?? 0 };
      const problem = checkSend({ t: "send", cid, kind: out.kind, body: out.body, ...target, ...(out.attrs ? { attrs: out.attrs } : {}) }, limits);
      if (problem) {
        this.notify(problem);
        return;
      }
    }
    out.failed = undefined;
    out.reason = undefined;
    this.persist(out);
    this.transmit(out);
    this.changed();
  }

  pendingIn(open: Open): Outgoing[] {
    if (!open) return [];
    return [...this.outbox.values()].filter((o) => ("conv" in open ? o.conv === open.conv : o.to === open.peer));
  }

  /** Deletes an unsent message for good. */
  dismissFailed(cid: string): void {
    this.outbox.delete(cid);
    void deletePending(cid);
    this.changed();
  }

  // ---- devices ----

  async loadDevices(): Promise<void> {
    try {
      const answer = await this.api.request<{ devices: DeviceRow[]; policy: DevicePolicy }>("GET", "/v1/devices");
      this.devices = answer.devices;
      this.devicePolicy = answer.policy;
    } catch (error) {
      if (!isOffline(error)) this.showError(error);
    }
    this.changed();
  }

  /** Logs one of my devices out (its whole login: the tabs of that browser too). */
  async revokeDevice(device: string): Promise<void> {
    await this.api.request("DELETE", `/v1/devices/${encodeURIComponent(device)}`);
    await this.loadDevices();
  }

  async setDevicePolicy(choice: boolean | null): Promise<void> {
    const answer = await this.api.request<{ policy: DevicePolicy }>("PUT", "/v1/devices/policy", { one_session_per_platform: choice });
    this.devicePolicy = answer.policy;
    this.changed();
  }

  /**
   * Uploads a file (with progress) and sends it: PNG, JPEG, GIF and WebP as an image message, anything else as a
   * file message with its name. Refused before uploading when larger than the node's limit.
   */
  async sendFile(file: File): Promise<void> {
    const open = this.open;
    if (!open) return;
    const limit = this.client?.limits?.media_bytes;
    const upload: Upload = { id: ++this.uploadCounter, key: openKey(open), name: file.name || "file", progress: 0 };
    this.uploads = [...this.uploads, upload];
    this.changed();
    if (limit && file.size > limit) {
      upload.error = `${upload.name} is ${megabytes(file.size)}; files can be at most ${megabytes(limit)}.`;
      this.uploads = [...this.uploads];
      this.changed();
      return;
    }
    const image = IMAGE_TYPES.includes(file.type);
    const type = image || UPLOAD_TYPES.includes(file.type) ? file.type : "application/octet-stream";
    try {
      const result = await this.api.upload(file.type === type ? file : new Blob([file], { type }), (fraction) => {
        upload.progress = fraction;
        this.uploads = [...this.uploads];
        this.changed();
      });
      const problem = image
        ? this.send("image", "", { media: result.hash }, open)
        : this.send("file", "", { media: result.hash, name: (file.name || "file").slice(0, 200) }, open);
      if (problem) throw new Error(problem);
      this.uploads = this.uploads.filter((u) => u !== upload);
    } catch (error) {
      upload.error = error instanceof Error ? error.message : String(error);
      this.uploads = [...this.uploads];
    }
    this.changed();
  }

  /** Downloads a file message's medium and hands it to the browser as a download named like the original. */
  async download(hash: string, name: string): Promise<void> {
    try {
      const blob = await this.api.blob(`/v1/media/${hash}`);
      const url = URL.createObjectURL(blob);
      const a = document.createElement("a");
      a.href = url;
      a.download = name || "download";
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (error) {
      this.showError(error);
    }
  }

  dismissUpload(id: number): void {
    this.uploads = this.uploads.filter((u) => u.id !== id);
    this.changed();
  }

  recall(conv: number, seq: number): void {
    const recall = this.client?.recall(conv, seq);
    recall?.done.catch((failure: { code?: string }) =>
      this.showError(failure.code === "forbidden" ? "Too late to recall that message" : `Recall failed: ${failure.code}`),
    );
  }

  async addFriend(username: string, note: string): Promise<void> {
    const found = await this.api.request<{ users: Profile[] }>("GET", `/v1/users?username=${encodeURIComponent(username)}`);
    const user = found.users[0];
    if (!user) throw new Error(`No user called “${username}”`);
    this.profiles.set(user.id, user);
    await this.api.request("POST", "/v1/friends/requests", { user: user.id, note });
    await this.refresh();
  }

  async answerInvitation(group: number, action: "accept" | "decline"): Promise<void> {
    await this.api.request("POST", `/v1/invitations/${group}/${action}`);
    await this.refresh();
    if (action === "accept") this.openConv({ conv: group });
  }

  async answer(request: number, action: "accept" | "reject"): Promise<void> {
    await this.api.request("POST", `/v1/friends/requests/${request}/${action}`);
    await this.refresh();
  }

  async createGroup(title: string, members: number[]): Promise<void> {
    const group = await this.api.request<{ id: number; title: string }>("POST", "/v1/groups", { title, members });
    this.convs.set(group.id, { id: group.id, kind: "group", title: group.title, peer: null, lastMessage: null, lastActivity: Date.now() });
    await this.refresh();
    this.openConv({ conv: group.id });
  }

  /** Adds friends and invites everyone else (consent rules); says how many were invited. */
  async addMembers(conv: number, users: number[]): Promise<{ added: number[]; invited: number[] }> {
    const answer = await this.api.request<{ added: number[]; invited: number[] }>("POST", `/v1/groups/${conv}/members`, { users });
    await this.loadMembers(conv);
    return answer;
  }

  /** Finds a user by exact username (for inviting someone who is not a friend). */
  async findUser(username: string): Promise<Profile> {
    const found = await this.api.request<{ users: Profile[] }>("GET", `/v1/users?username=${encodeURIComponent(username)}`);
    const user = found.users[0];
    if (!user) throw new Error(`No one is called “${username}”`);
    this.profiles.set(user.id, user);
    return user;
  }

  async renameGroup(conv: number, title: string): Promise<void> {
    await this.api.request("PATCH", `/v1/groups/${conv}`, { title });
    const view = this.convs.get(conv);
    if (view) view.title = title;
    this.changed();
  }

  async removeMember(conv: number, user: number): Promise<void> {
    await this.api.request("DELETE", `/v1/groups/${conv}/members/${user}`);
    await this.loadMembers(conv);
  }

  async leaveGroup(conv: number): Promise<void> {
    await this.api.request("POST", `/v1/groups/${conv}/leave`);
    this.convs.delete(conv);
    this.openConv(null);
  }

  /** Group read receipts for my message `seq`: who read it and who has not (members only). */
  async loadReads(conv: number, seq: number): Promise<void> {
    try {
      const answer = await this.api.request<{ read: number[]; unread: number[] }>("GET", `/v1/conversations/${conv}/reads?seq=${seq}`);
      this.groupReads.set(conv, { seq, read: answer.read, unread: answer.unread });
      for (const u of [...answer.read, ...answer.unread]) void this.profile(u);
      this.changed();
    } catch {
      /* receipts are best effort */
    }
  }
}

const IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/webp"];
/** Non-image types the server stores as declared (docs/openapi.yaml, POST /v1/media); others go as octet-stream. */
const UPLOAD_TYPES = ["application/pdf", "application/zip", "text/plain", "audio/mpeg", "audio/ogg", "video/mp4"];

function megabytes(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

function isOffline(error: unknown): boolean {
  return error instanceof ApiError && error.code === "offline";
}

export function openKey(open: Open): string {
  if (!open) return "";
  return "conv" in open ? `c${open.conv}` : `p${open.peer}`;
}

function pickLater(a: Message | null, b: Message | null): Message | null {
  if (!a) return b;
  if (!b) return a;
  return b.seq >= a.seq ? b : a;
}
