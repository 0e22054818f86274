// ChatClient: one user's device connection to the cluster, applying the client rules of docs/protocol.md §6.
//
// - connects to one of `nodes` (rotating through the list on every failure or drop, with exponential backoff and
//   jitter), the token and device in the query string;
// - tracks, per conversation, the cursor (highest seq up to which it has every message) and syncs from it after
//   `hello` and whenever a pushed message leaves a gap; a gap that a sync requested after the message arrived does
//   not fill is settled (rule 4) and is skipped;
// - drops duplicates by id and by seq;
// - keeps every send (and recall) in an outbox until its `ack` or a final error, resending it with the same `cid`
//   after a timeout, a retryable error or a reconnect;
// - keeps read cursors and re-sends a read that could not go out while offline;
// - checks every send against the node's limits (`hello.limits`) before it goes out: a message over them fails at
//   once (`too_large`) and is never written, and a frame the server closed the connection over (1009) is failed,
//   never resent as it is.

import { encodeFrame, decodeFrame } from "./codec";
import type {
  AckFrame,
  Attrs,
  ClientFrame,
  ConvState,
  ErrorFrame,
  HelloFrame,
  KickFrame,
  Limits,
  Message,
  MsgFrame,
  NoticeFrame,
  ReadFrame,
  RecallFrame,
  SendFrame,
  ServerFrame,
  SyncedFrame,
  TypingFrame,
} from "./frames";

export type Status = "connecting" | "online" | "offline" | "stopped" | "replaced" | "unauthorized";

export interface StatusEvent {
  status: Status;
  /** The node of the current (or last) attempt. */
  node: string;
  /** Consecutive failed attempts. */
  failures: number;
  /** Milliseconds until the next attempt, when offline. */
  retryInMs?: number;
  reason?: string;
}

export interface MessageEvent {
  msg: Message;
  /** False when it came from a sync (history catching up), true for a live push or our own ack. */
  live: boolean;
}

export interface SendFailed {
  cid: string;
  code: string;
  msg: string;
}

export interface ClientEvents {
  status: StatusEvent;
  hello: HelloFrame;
  ack: AckFrame;
  msg: MsgFrame;
  read: ReadFrame;
  typing: TypingFrame;
  notice: NoticeFrame;
  synced: SyncedFrame;
  error: ErrorFrame;
  kick: KickFrame;
  /** A new message, in seq order per conversation, each id once. */
  message: MessageEvent;
  /** A send or recall that will not be retried. */
  sendFailed: SendFailed;
  /** Conversation state (seqs, read cursors) changed. */
  conv: ConvInfo;
}

export interface ConvInfo {
  conv: number;
  /** Highest seq known to exist. */
  lastSeq: number;
  /** My read cursor. */
  readSeq: number;
  /** The peer's read cursor (1:1 only; 0 until known). */
  peerReadSeq: number;
  peer: number | null;
  title: string | null;
}

interface ConvTrack extends ConvInfo {
  cursor: number;
  seen: Set<number>;
  syncing: boolean;
  /** lastSeq when the running sync was requested: once it finishes, every seq up to here has come or never will. */
  syncTarget: number;
  /** Pushed messages above the cursor, waiting for the gap below them to be filled or settled. */
  pending: Map<number, { msg: Message; requested: boolean }>;
  /** The read cursor the server has been told. */
  sentReadSeq: number;
}

interface Outgoing {
  frame: SendFrame | RecallFrame;
  resolve: (ack: AckFrame) => void;
  reject: (error: SendFailed) => void;
  timer?: ReturnType<typeof setTimeout>;
  attempts: number;
}

/** The subset of the browser WebSocket the client uses (tests inject their own). */
export interface SocketLike {
  binaryType: string;
  readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export interface ClientOptions {
  /** Node base URLs, e.g. ["http://127.0.0.1:7001", "http://127.0.0.1:7002"]; the first is tried first. */
  nodes: string[];
  token: string;
  device: string;
  /** What the device is (`platform=` of docs/protocol.md §2: web, desktop, android, ios, other). */
  platform?: string;
  /** Where to start syncing a conversation this client has never seen (default 0: everything). */
  initialCursor?: (conv: ConvState) => number;
  /** Resolves false when the token is no longer valid (asked after repeated connection failures). */
  checkAuth?: () => Promise<boolean>;
  createSocket?: (url: string) => SocketLike;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** A connection attempt that brings no `hello` in this time is abandoned. */
  connectTimeoutMs?: number;
  /** A send without an answer in this time is sent again (same cid). */
  sendTimeoutMs?: number;
  syncLimit?: number;
  random?: () => number;
}

type Listener<T> = (event: T) => void;

const OPEN = 1;

export class ChatClient {
  readonly device: string;
  userId = 0;
  status: Status = "connecting";
  /** Base URL of the node of the current or last connection. */
  currentNode: string;
  nodeName = "";

  private opts: Required<Omit<ClientOptions, "checkAuth" | "initialCursor" | "platform">> &
    Pick<ClientOptions, "checkAuth" | "initialCursor" | "platform">;
  private listeners = new Map<keyof ClientEvents, Set<Listener<never>>>();
  private convs = new Map<number, ConvTrack>();
  private outbox = new Map<string, Outgoing>();
  private socket: SocketLike | null = null;
  private online = false;
  private stopped = false;
  private nodeIndex = 0;
  private failures = 0;
  private retryTimer?: ReturnType<typeof setTimeout>;
  private connectTimer?: ReturnType<typeof setTimeout>;
  private nextRid = 1;
  private syncRids = new Map<number, number>();
  private cidCounter = 0;
  private cidPrefix: string;
  /** The node's limits from the last `hello` (null until one came). */
  limits: Limits | null = null;
  /** The cid of the last send or recall written to the socket (failed if the server closes over its size). */
  private lastWritten: string | null = null;

  constructor(options: ClientOptions) {
    if (options.nodes.length === 0) throw new Error("no nodes");
    this.opts = {
      createSocket: (url) => new WebSocket(url) as unknown as SocketLike,
      backoffBaseMs: 500,
      backoffMaxMs: 15_000,
      connectTimeoutMs: 10_000,
      sendTimeoutMs: 10_000,
      syncLimit: 200,
      random: Math.random,
      ...options,
    };
    this.device = options.device;
    this.currentNode = options.nodes[0];
    this.cidPrefix = `${options.device}.${Date.now().toString(36)}${Math.floor(this.opts.random() * 1e6).toString(36)}`;
  }

  // ---- events ----

  on<K extends keyof ClientEvents>(event: K, listener: Listener<ClientEvents[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener as Listener<never>);
    return () => set.delete(listener as Listener<never>);
  }

  private emit<K extends keyof ClientEvents>(event: K, value: ClientEvents[K]): void {
    for (const listener of this.listeners.get(event) ?? []) {
      try {
        (listener as Listener<ClientEvents[K]>)(value);
      } catch (error) {
        console.error(`listener for ${event} failed`, error);
      }
    }
  }

  // ---- connection ----

  /** Starts connecting (and keeps reconnecting until `stop`). */
  start(): void {
    this.stopped = false;
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.connectTimer);
    this.socket?.close(1000, "bye");
    this.socket = null;
    this.online = false;
    this.setStatus("stopped");
  }

  get isOnline(): boolean {
    return this.online;
  }

  private setStatus(status: Status, extra: Partial<StatusEvent> = {}): void {
    this.status = status;
    this.emit("status", { status, node: this.currentNode, failures: this.failures, ...extra });
  }

  private connect(): void {
    if (this.stopped) return;
    const node = this.opts.nodes[this.nodeIndex % this.opts.nodes.length];
    this.currentNode = node;
    this.setStatus("connecting");
    const url = new URL("/v1/ws", node);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("device", this.device);
    url.searchParams.set("token", this.opts.token);
    if (this.opts.platform) url.searchParams.set("platform", this.opts.platform);
    let socket: SocketLike;
    try {
      socket = this.opts.createSocket(url.toString());
    } catch {
      this.connectionLost("could not open a socket");
      return;
    }
    this.socket = socket;
    socket.binaryType = "arraybuffer";
    this.connectTimer = setTimeout(() => {
      if (this.socket === socket && !this.online) {
        socket.close();
        this.connectionLost("connection attempt timed out");
      }
    }, this.opts.connectTimeoutMs);
    socket.onmessage = (event) => {
      if (this.socket !== socket) return;
      if (!(event.data instanceof ArrayBuffer) && !(event.data instanceof Uint8Array)) return;
      let frame: ServerFrame;
      try {
        frame = decodeFrame(event.data);
      } catch (error) {
        console.warn("undecodable frame", error);
        return;
      }
      this.handle(frame);
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.connectionLost(`closed (${event.code}${event.reason ? ` ${event.reason}` : ""})`, event.code);
    };
    socket.onerror = () => {
      // A close event always follows.
    };
  }

  private connectionLost(reason: string, code?: number): void {
    clearTimeout(this.connectTimer);
    if (code === 1009 && this.lastWritten) {
      // The server refused a frame as too big: resending it as it is would only close the connection again.
      this.fail(this.lastWritten, "too_large", "The message is larger than the server accepts");
    }
    this.lastWritten = null;
    const wasOnline = this.online;
    this.online = false;
    this.socket = null;
    this.syncRids.clear();
    for (const track of this.convs.values()) track.syncing = false;
    for (const out of this.outbox.values()) clearTimeout(out.timer);
    if (this.stopped) return;
    if (this.status === "replaced") {
      // The kick came first; tell listeners the connection is now gone too.
      this.setStatus("replaced", { reason });
      return;
    }
    if (code === 4001) {
      this.setStatus("replaced", { reason });
      return;
    }
    if (code === 1008) {
      // The token was revoked (logout elsewhere, or logout everywhere): reconnecting with it cannot work.
      this.stopped = true;
      this.setStatus("unauthorized", { reason });
      return;
    }
    if (!wasOnline) this.failures += 1;
    // The node may be gone: the next attempt goes to the next node.
    this.nodeIndex = (this.nodeIndex + 1) % this.opts.nodes.length;
    const exponent = Math.min(this.failures, 10);
    const ceiling = Math.min(this.opts.backoffMaxMs, this.opts.backoffBaseMs * 2 ** exponent);
    // Jitter: anywhere between half and all of the ceiling, so clients of a dead node do not return in lockstep.
    const delay = wasOnline && this.failures === 0 ? this.opts.random() * this.opts.backoffBaseMs : ceiling * (0.5 + this.opts.random() / 2);
    this.setStatus("offline", { retryInMs: Math.round(delay), reason });
    this.retryTimer = setTimeout(() => void this.retry(), delay);
  }

  private async retry(): Promise<void> {
    if (this.stopped) return;
    if (this.failures >= 3 && this.failures % 3 === 0 && this.opts.checkAuth) {
      const valid = await this.opts.checkAuth().catch(() => true);
      if (!valid) {
        this.stopped = true;
        this.setStatus("unauthorized");
        return;
      }
    }
    this.connect();
  }

  private write(frame: ClientFrame): boolean {
    if (!this.online || !this.socket || this.socket.readyState !== OPEN) return false;
    this.socket.send(encodeFrame(frame));
    return true;
  }

  // ---- incoming ----

  private handle(frame: ServerFrame): void {
    switch (frame.t) {
      case "hello":
        this.onHello(frame);
        break;
      case "ack":
        this.emit("ack", frame);
        this.onAck(frame);
        break;
      case "msg": {
        this.emit("msg", frame);
        const { t: _t, ...msg } = frame;
        this.ingest(msg, true);
        break;
      }
      case "synced":
        this.emit("synced", frame);
        this.onSynced(frame);
        break;
      case "read": {
        const track = this.track(frame.conv);
        if (frame.user === this.userId) {
          track.readSeq = Math.max(track.readSeq, frame.seq);
          track.sentReadSeq = Math.max(track.sentReadSeq, frame.seq);
        } else {
          track.peerReadSeq = Math.max(track.peerReadSeq, frame.seq);
        }
        this.emit("read", frame);
        this.emitConv(track);
        break;
      }
      case "typing":
        this.emit("typing", frame);
        break;
      case "notice":
        this.emit("notice", frame);
        break;
      case "error":
        this.emit("error", frame);
        this.onError(frame);
        break;
      case "kick":
        this.emit("kick", frame);
        if (frame.reason === "replaced") this.setStatus("replaced", { reason: frame.msg });
        break;
      default:
        // Unknown frames are ignored (the server may add some).
        break;
    }
  }

  private onHello(hello: HelloFrame): void {
    clearTimeout(this.connectTimer);
    this.online = true;
    this.failures = 0;
    this.userId = hello.user;
    this.nodeName = hello.node;
    if (hello.limits) this.limits = hello.limits;
    this.emit("hello", hello);
    this.setStatus("online");
    for (const state of hello.convs) {
      const known = this.convs.has(state.conv);
      const track = this.track(state.conv);
      if (!known) {
        track.cursor = Math.max(0, Math.min(state.last_seq, this.opts.initialCursor?.(state) ?? 0));
      }
      track.peer = state.peer ?? track.peer;
      track.title = state.title ?? track.title;
      track.lastSeq = Math.max(track.lastSeq, state.last_seq);
      track.readSeq = Math.max(track.readSeq, state.read_seq);
      if (track.sentReadSeq < state.read_seq) track.sentReadSeq = state.read_seq;
      this.emitConv(track);
    }
    for (const track of this.convs.values()) {
      if (track.lastSeq > track.cursor || track.pending.size > 0) this.requestSync(track);
      if (track.readSeq > track.sentReadSeq) this.flushRead(track);
    }
    for (const out of this.outbox.values()) this.transmit(out);
  }

  private track(conv: number): ConvTrack {
    let track = this.convs.get(conv);
    if (!track) {
      track = {
        conv,
        cursor: 0,
        lastSeq: 0,
        readSeq: 0,
        peerReadSeq: 0,
        sentReadSeq: 0,
        peer: null,
        title: null,
        seen: new Set(),
        syncing: false,
        syncTarget: 0,
        pending: new Map(),
      };
      this.convs.set(conv, track);
    }
    return track;
  }

  private emitConv(track: ConvTrack): void {
    this.emit("conv", this.info(track));
  }

  private info(track: ConvTrack): ConvInfo {
    const { conv, lastSeq, readSeq, peerReadSeq, peer, title } = track;
    return { conv, lastSeq, readSeq, peerReadSeq, peer, title };
  }

  /** Applies rule 3 to one message from a push or our own ack. */
  private ingest(msg: Message, live: boolean): void {
    const track = this.track(msg.conv);
    if (track.seen.has(msg.id) || msg.seq <= track.cursor) return;
    if (msg.from === this.userId) track.readSeq = Math.max(track.readSeq, msg.seq);
    if (msg.seq === track.cursor + 1 && !track.syncing) {
      this.deliver(track, msg, live);
      this.flushPending(track);
    } else {
      track.pending.set(msg.seq, { msg, requested: false });
      track.lastSeq = Math.max(track.lastSeq, msg.seq);
      if (!track.syncing) this.requestSync(track);
      this.emitConv(track);
    }
  }

  private deliver(track: ConvTrack, msg: Message, live: boolean): void {
    track.cursor = Math.max(track.cursor, msg.seq);
    track.lastSeq = Math.max(track.lastSeq, msg.seq);
    if (track.seen.has(msg.id)) return;
    track.seen.add(msg.id);
    if (msg.from === this.userId) track.readSeq = Math.max(track.readSeq, msg.seq);
    this.emit("message", { msg, live });
    this.emitConv(track);
  }

  /** Delivers pending messages that are now in order, or whose gap a finished sync settled. */
  private flushPending(track: ConvTrack): void {
    const seqs = [...track.pending.keys()].sort((a, b) => a - b);
    for (const seq of seqs) {
      const entry = track.pending.get(seq);
      if (!entry) continue;
      if (seq <= track.cursor) {
        track.pending.delete(seq);
      } else if (seq === track.cursor + 1 || entry.requested) {
        track.pending.delete(seq);
        this.deliver(track, entry.msg, true);
      } else {
        this.requestSync(track);
        return;
      }
    }
  }

  private requestSync(track: ConvTrack): void {
    if (track.syncing || !this.online) return;
    const rid = this.nextRid++ % 0xffff_ffff;
    track.syncing = true;
    track.syncTarget = track.lastSeq;
    for (const entry of track.pending.values()) entry.requested = true;
    this.syncRids.set(rid, track.conv);
    this.write({ t: "sync", rid, conv: track.conv, after_seq: track.cursor, limit: this.opts.syncLimit });
  }

  private onSynced(frame: SyncedFrame): void {
    const conv = frame.rid != null ? this.syncRids.get(frame.rid) : undefined;
    if (frame.rid != null) this.syncRids.delete(frame.rid);
    const track = this.track(frame.conv);
    if (conv === undefined) return;
    for (const msg of frame.msgs) {
      if (msg.seq > track.cursor) {
        track.pending.delete(msg.seq);
        this.deliver(track, msg, false);
      }
    }
    track.syncing = false;
    if (frame.more && frame.msgs.length > 0) {
      this.requestSync(track);
      return;
    }
    // Nothing more exists up to the moment of the sync: everything below lastSeq that did not come is settled.
    track.cursor = Math.max(track.cursor, track.syncTarget);
    this.flushPending(track);
    this.emitConv(track);
  }

  private onAck(ack: AckFrame): void {
    if (this.lastWritten === ack.cid) this.lastWritten = null;
    const out = this.outbox.get(ack.cid);
    if (!out) return;
    clearTimeout(out.timer);
    this.outbox.delete(ack.cid);
    const frame = out.frame;
    const msg: Message =
      frame.t === "send"
        ? { id: ack.id, conv: ack.conv, seq: ack.seq, from: this.userId, cid: ack.cid, kind: frame.kind, body: frame.body, ts: ack.ts, attrs: frame.attrs ?? null }
        : { id: ack.id, conv: ack.conv, seq: ack.seq, from: this.userId, cid: ack.cid, kind: "recall", body: "", ts: ack.ts, attrs: { target_seq: frame.seq } };
    const track = this.track(ack.conv);
    track.readSeq = Math.max(track.readSeq, ack.seq);
    track.sentReadSeq = Math.max(track.sentReadSeq, ack.seq);
    out.resolve(ack);
    this.ingest(msg, true);
  }

  private onError(error: ErrorFrame): void {
    if (error.rid != null) {
      const conv = this.syncRids.get(error.rid);
      this.syncRids.delete(error.rid);
      if (conv !== undefined) {
        const track = this.track(conv);
        track.syncing = false;
        if (error.retry) setTimeout(() => this.requestSync(track), 1000);
      }
    }
    if (!error.cid) return;
    const out = this.outbox.get(error.cid);
    if (!out) return;
    clearTimeout(out.timer);
    if (error.retry) {
      const delay = Math.min(this.opts.backoffMaxMs, this.opts.backoffBaseMs * 2 ** Math.min(out.attempts, 6)) * (0.5 + this.opts.random() / 2);
      out.timer = setTimeout(() => this.transmit(out), delay);
      return;
    }
    this.fail(error.cid, error.code, error.msg);
  }

  /** Drops a send from the outbox for good and tells its caller and listeners. */
  private fail(cid: string, code: string, msg: string): void {
    const out = this.outbox.get(cid);
    if (!out) return;
    clearTimeout(out.timer);
    this.outbox.delete(cid);
    const failure = { cid, code, msg };
    out.reject(failure);
    this.emit("sendFailed", failure);
  }

  // ---- outgoing ----

  /** A fresh client id for a send (unique per device and page load). */
  newCid(): string {
    this.cidCounter += 1;
    return `${this.cidPrefix}.${this.cidCounter}`.slice(-64);
  }

  /**
   * Sends a message; resolves with its ack. While offline it waits in the outbox and goes out after the next
   * `hello`; unanswered sends are repeated with the same cid, so the server stores each at most once.
   */
  send(
    target: { to: number } | { conv: number },
    kind: SendFrame["kind"],
    body: string,
    attrs?: Attrs,
    cid: string = this.newCid(),
  ): { cid: string; done: Promise<AckFrame> } {
    const frame: SendFrame = { t: "send", cid, kind, body, ...target, ...(attrs ? { attrs } : {}) };
    return { cid, done: this.enqueue(frame) };
  }

  /** Recalls message `seq` of `conv` (answered like a send). */
  recall(conv: number, seq: number): { cid: string; done: Promise<AckFrame> } {
    const cid = this.newCid();
    return { cid, done: this.enqueue({ t: "recall", cid, conv, seq }) };
  }

  /** Cids of sends still waiting for their ack. */
  pendingCids(): string[] {
    return [...this.outbox.keys()];
  }

  private enqueue(frame: SendFrame | RecallFrame): Promise<AckFrame> {
    return new Promise((resolve, reject) => {
      const out: Outgoing = { frame, resolve, reject, attempts: 0 };
      this.outbox.set(frame.cid, out);
      this.transmit(out);
    });
  }

  private transmit(out: Outgoing): void {
    clearTimeout(out.timer);
    if (!this.outbox.has(out.frame.cid)) return;
    if (this.limits) {
      const problem = out.frame.t === "send" ? checkSend(out.frame, this.limits) : null;
      if (problem) {
        this.fail(out.frame.cid, "too_large", problem);
        return;
      }
    }
    if (!this.write(out.frame)) return; // goes out after the next hello
    this.lastWritten = out.frame.cid;
    out.attempts += 1;
    out.timer = setTimeout(() => this.transmit(out), this.opts.sendTimeoutMs);
  }

  /** Moves my read cursor (never backwards); other devices and, in 1:1, the peer are told by the server. */
  markRead(conv: number, seq: number): void {
    const track = this.track(conv);
    if (seq <= track.readSeq && seq <= track.sentReadSeq) return;
    track.readSeq = Math.max(track.readSeq, seq);
    this.flushRead(track);
    this.emitConv(track);
  }

  private flushRead(track: ConvTrack): void {
    if (this.write({ t: "read", conv: track.conv, seq: track.readSeq })) track.sentReadSeq = track.readSeq;
  }

  /** Tells the conversation I am typing (the caller throttles; the server relays at most one per second). */
  typing(conv: number): void {
    this.write({ t: "typing", conv });
  }

  /** Records the peer's read cursor learnt elsewhere (e.g. REST `reads`). */
  notePeerRead(conv: number, seq: number): void {
    const track = this.track(conv);
    if (seq > track.peerReadSeq) {
      track.peerReadSeq = seq;
      this.emitConv(track);
    }
  }

  /** Sets what is known about a conversation from REST (`GET /v1/conversations`). */
  noteConversation(conv: number, lastSeq: number, readSeq: number, peer: number | null, title: string | null): void {
    const known = this.convs.has(conv);
    const track = this.track(conv);
    if (!known) {
      track.cursor = Math.max(0, this.opts.initialCursor?.({ conv, last_seq: lastSeq, read_seq: readSeq, peer, title }) ?? 0);
    }
    track.lastSeq = Math.max(track.lastSeq, lastSeq);
    track.readSeq = Math.max(track.readSeq, readSeq);
    track.sentReadSeq = Math.max(track.sentReadSeq, readSeq);
    track.peer = peer ?? track.peer;
    track.title = title ?? track.title;
    if (track.lastSeq > track.cursor) this.requestSync(track);
    this.emitConv(track);
  }

  conversation(conv: number): ConvInfo | undefined {
    const track = this.convs.get(conv);
    return track && this.info(track);
  }

  conversations(): ConvInfo[] {
    return [...this.convs.values()].map((t) => this.info(t));
  }

  unread(conv: number): number {
    const track = this.convs.get(conv);
    return track ? Math.max(0, track.lastSeq - track.readSeq) : 0;
  }

  totalUnread(): number {
    let total = 0;
    for (const track of this.convs.values()) total += Math.max(0, track.lastSeq - track.readSeq);
    return total;
  }

  /** The highest seq up to which this client has every message of `conv`. */
  cursor(conv: number): number {
    return this.convs.get(conv)?.cursor ?? 0;
  }
}

const utf8 = new TextEncoder();

/** Bytes of `text` in UTF-8 (what the server's limits count). */
export function utf8Length(text: string): number {
  return utf8.encode(text).length;
}

/**
 * Why `frame` would be refused for size by a node with `limits` (a sentence for the user), or null if it fits.
 * The encoded frame is checked too, so nothing that would close the connection (1009) is ever written.
 */
export function checkSend(frame: SendFrame, limits: Limits): string | null {
  const bytes = utf8Length(frame.body);
  const cap =
    frame.kind === "emoji" ? limits.emoji_bytes : frame.kind === "image" || frame.kind === "file" ? limits.caption_bytes : limits.body_bytes;
  if (bytes > cap) {
    const what = frame.kind === "image" || frame.kind === "file" ? "caption" : "message";
    return `This ${what} is too long: ${bytes.toLocaleString("en")} bytes, and the server accepts at most ${cap.toLocaleString("en")}. Shorten it, or send it as a file.`;
  }
  const size = encodeFrame(frame).length;
  if (size > limits.message_bytes) {
    return `This message is too large to send (${size.toLocaleString("en")} bytes; at most ${limits.message_bytes.toLocaleString("en")}).`;
  }
  return null;
}
