import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { decode, encode } from "@msgpack/msgpack";
import { decodeFrame, encodeFrame, FrameError } from "../src/lib/codec";
import { ChatClient, type MessageEvent, type SocketLike, type StatusEvent } from "../src/lib/client";
import type { ClientFrame, Limits, Message, ServerFrame } from "../src/lib/frames";

const hex = (s: string) => Uint8Array.from(s.replace(/\s+/g, "").match(/../g)!.map((b) => parseInt(b, 16)));

describe("codec", () => {
  it("decodes the ack of docs/protocol.md §3", () => {
    const ack = decodeFrame(
      hex(`00 86 a1 74 a3 61 63 6b a3 63 69 64 a2 63 31 a2 69 64 07 a4 63 6f 6e 76 03 a3 73 65 71 01
           a2 74 73 cf 00 00 01 8b cf e5 68 00`),
    );
    expect(ack).toEqual({ t: "ack", cid: "c1", id: 7, conv: 3, seq: 1, ts: 1700000000000 });
  });

  it("encodes a send as a plain frame", () => {
    const bytes = encodeFrame({ t: "send", cid: "c1", to: 42, kind: "text", body: "hi" });
    expect(bytes[0]).toBe(0);
    expect(decode(bytes.subarray(1))).toEqual({ t: "send", cid: "c1", to: 42, kind: "text", body: "hi" });
  });

  it("decodes a zstd-compressed frame (header bit 0)", () => {
    // A `msg` with a 400-byte body, compressed by the zstd command-line tool.
    const zstd = hex(
      "28b52ffd64d0004d0200140489a174a36d7367a2696405a4636f6e7603a373657101a466726f6d2aa3636964a178a46b696e64a474657874a4626f6479da019061a27473cf0000018bcfe568000100c5a80228d612cf21",
    );
    const frame = new Uint8Array(zstd.length + 1);
    frame[0] = 1;
    frame.set(zstd, 1);
    const msg = decodeFrame(frame);
    expect(msg.t).toBe("msg");
    expect((msg as Message).body).toBe("a".repeat(400));
    expect((msg as Message).from).toBe(42);
  });

  it("rejects reserved header bits, garbage and non-maps", () => {
    expect(() => decodeFrame(Uint8Array.of(2, 0x80))).toThrow(FrameError);
    expect(() => decodeFrame(Uint8Array.of(1, 1, 2, 3))).toThrow();
    expect(() => decodeFrame(Uint8Array.of(0, 0x91, 1))).toThrow(FrameError);
  });
});

/** A socket under the test's control: records what the client sends, lets the test push server frames. */
class TestSocket implements SocketLike {
  binaryType = "blob";
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  sent: ClientFrame[] = [];
  constructor(readonly url: string) {}
  send(data: Uint8Array) {
    expect(data[0]).toBe(0);
    this.sent.push(decode(data.subarray(1)) as ClientFrame);
  }
  close() {
    this.drop(1000);
  }
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  push(frame: ServerFrame) {
    const body = encode(frame);
    const bytes = new Uint8Array(body.length + 1);
    bytes.set(body, 1);
    this.onmessage?.({ data: bytes.buffer });
  }
  drop(code = 1006) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason: "" });
  }
  sentOf<T extends ClientFrame["t"]>(t: T) {
    return this.sent.filter((f) => f.t === t) as Extract<ClientFrame, { t: T }>[];
  }
}

function setup(options: Partial<ConstructorParameters<typeof ChatClient>[0]> = {}) {
  const sockets: TestSocket[] = [];
  const client = new ChatClient({
    nodes: ["http://a:1", "http://b:2"],
    token: "tok",
    device: "web-1",
    createSocket: (url) => {
      const socket = new TestSocket(url);
      sockets.push(socket);
      return socket;
    },
    random: () => 0.5,
    ...options,
  });
  const messages: MessageEvent[] = [];
  const statuses: StatusEvent[] = [];
  client.on("message", (m) => messages.push(m));
  client.on("status", (s) => statuses.push(s));
  const last = () => sockets[sockets.length - 1];
  const hello = (convs: { conv: number; last_seq: number; read_seq: number; peer?: number }[] = [], limits?: Limits) => {
    last().open();
    last().push({ t: "hello", user: 1, device: "web-1", node: "n", ping: 20, idle: 60, convs, ...(limits ? { limits } : {}) });
  };
  return { client, sockets, messages, statuses, last, hello };
}

const m = (conv: number, seq: number, from = 2, id = conv * 1000 + seq): Message => ({
  id,
  conv,
  seq,
  from,
  cid: `c${id}`,
  kind: "text",
  body: `m${seq}`,
  ts: 1,
});

describe("ChatClient", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it("connects with token and device and syncs conversations from hello", () => {
    const { client, last, hello, messages } = setup();
    client.start();
    const url = new URL(last().url);
    expect(url.origin).toBe("ws://a:1");
    expect(url.pathname).toBe("/v1/ws");
    expect(url.searchParams.get("token")).toBe("tok");
    expect(url.searchParams.get("device")).toBe("web-1");
    hello([{ conv: 3, last_seq: 4, read_seq: 1, peer: 2 }]);
    expect(client.status).toBe("online");
    const [sync] = last().sentOf("sync");
    expect(sync).toMatchObject({ conv: 3, after_seq: 0 });
    last().push({ t: "synced", rid: sync.rid, conv: 3, msgs: [m(3, 1), m(3, 2)], more: true });
    const [, again] = last().sentOf("sync");
    expect(again).toMatchObject({ conv: 3, after_seq: 2 });
    last().push({ t: "synced", rid: again.rid, conv: 3, msgs: [m(3, 3), m(3, 4)], more: false });
    expect(messages.map((e) => e.msg.seq)).toEqual([1, 2, 3, 4]);
    expect(messages.every((e) => !e.live)).toBe(true);
    expect(client.unread(3)).toBe(3);
    expect(client.cursor(3)).toBe(4);
  });

  it("starts new conversations at initialCursor", () => {
    const { client, last, hello } = setup({ initialCursor: (c) => c.last_seq - 10 });
    client.start();
    hello([{ conv: 3, last_seq: 100, read_seq: 100 }]);
    expect(last().sentOf("sync")[0]).toMatchObject({ after_seq: 90 });
  });

  it("drops duplicates by id and seq, and syncs on a gap", () => {
    const { client, last, hello, messages } = setup();
    client.start();
    hello();
    last().push({ t: "msg", ...m(5, 1) });
    last().push({ t: "msg", ...m(5, 1) });
    expect(messages).toHaveLength(1);
    // seq 3 arrives before 2: hold it, sync from 1.
    last().push({ t: "msg", ...m(5, 3) });
    expect(messages).toHaveLength(1);
    const [sync] = last().sentOf("sync");
    expect(sync).toMatchObject({ conv: 5, after_seq: 1 });
    // A live push during the sync waits too.
    last().push({ t: "msg", ...m(5, 4) });
    last().push({ t: "synced", rid: sync.rid, conv: 5, msgs: [m(5, 2), m(5, 3)], more: false });
    expect(messages.map((e) => e.msg.seq)).toEqual([1, 2, 3, 4]);
    last().push({ t: "msg", ...m(5, 2) });
    expect(messages).toHaveLength(4);
  });

  it("treats a gap that a sync did not fill as settled", () => {
    const { client, last, hello, messages } = setup();
    client.start();
    hello();
    last().push({ t: "msg", ...m(6, 1) });
    last().push({ t: "msg", ...m(6, 3) });
    const [sync] = last().sentOf("sync");
    last().push({ t: "synced", rid: sync.rid, conv: 6, msgs: [m(6, 3)], more: false });
    expect(messages.map((e) => e.msg.seq)).toEqual([1, 3]);
    expect(client.cursor(6)).toBe(3);
    expect(last().sentOf("sync")).toHaveLength(1);
  });

  it("never writes a send over the node's limits, and never resends a frame the server closed over (1009)", async () => {
    const limits: Limits = { message_bytes: 2000, body_bytes: 1000, caption_bytes: 100, emoji_bytes: 16, media_bytes: 1 << 20 };
    const { client, last, hello } = setup();
    const failed: string[] = [];
    client.on("sendFailed", (f) => failed.push(`${f.cid}:${f.code}`));
    client.start();
    // Queued before any hello: checked when the limits arrive.
    const early = client.send({ to: 2 }, "text", "é".repeat(501));
    early.done.catch(() => undefined);
    hello([], limits);
    expect(failed).toEqual([`${early.cid}:too_large`]);
    expect(last().sentOf("send")).toHaveLength(0);
    // After hello: refused at once, nothing written; a later message goes out.
    const big = client.send({ to: 2 }, "text", "x".repeat(1001));
    await expect(big.done).rejects.toMatchObject({ code: "too_large" });
    const ok = client.send({ to: 2 }, "text", "fine");
    expect(last().sentOf("send").map((f) => f.cid)).toEqual([ok.cid]);
    // Without limits (an older node), a frame the server closes over with 1009 fails instead of being resent.
    const old = setup();
    old.client.start();
    old.hello();
    const huge = old.client.send({ to: 2 }, "text", "y".repeat(5000));
    huge.done.catch(() => undefined);
    old.last().drop(1009);
    vi.advanceTimersByTime(60_000);
    old.hello();
    expect(old.last().sentOf("send")).toHaveLength(0);
    await expect(huge.done).rejects.toMatchObject({ code: "too_large" });
  });

  it("queues sends while offline and resends unanswered ones with the same cid", async () => {
    const { client, last, hello, messages } = setup({ sendTimeoutMs: 1000 });
    client.start();
    const { cid, done } = client.send({ to: 2 }, "text", "hello");
    expect(last().sent).toHaveLength(0);
    hello();
    expect(last().sentOf("send")).toEqual([{ t: "send", cid, to: 2, kind: "text", body: "hello" }]);
    vi.advanceTimersByTime(1000);
    expect(last().sentOf("send").map((f) => f.cid)).toEqual([cid, cid]);
    // A retryable error: sent again after a backoff (500 ms * 2^2 attempts * jitter 0.75), same cid.
    last().push({ t: "error", code: "store_unavailable", cid, retry: true, msg: "" });
    vi.advanceTimersByTime(1499);
    expect(last().sentOf("send")).toHaveLength(2);
    vi.advanceTimersByTime(1);
    expect(last().sentOf("send").map((f) => f.cid)).toEqual([cid, cid, cid]);
    // The connection drops before the ack: the send goes out again on the next connection.
    last().drop();
    vi.advanceTimersByTime(20_000);
    hello();
    expect(last().sentOf("send").map((f) => f.cid)).toEqual([cid]);
    last().push({ t: "ack", cid, id: 50, conv: 9, seq: 1, ts: 5 });
    await expect(done).resolves.toMatchObject({ id: 50, seq: 1 });
    expect(messages.map((e) => [e.msg.id, e.msg.from, e.msg.body])).toEqual([[50, 1, "hello"]]);
    expect(client.pendingCids()).toEqual([]);
    // Our own message is read by us.
    expect(client.unread(9)).toBe(0);
  });

  it("rejects a send on a final error", async () => {
    const { client, last, hello } = setup();
    client.start();
    hello();
    const failed: string[] = [];
    client.on("sendFailed", (f) => failed.push(f.code));
    const { cid, done } = client.send({ to: 2 }, "text", "x");
    last().push({ t: "error", code: "not_friends", cid, retry: false, msg: "no" });
    await expect(done).rejects.toMatchObject({ code: "not_friends" });
    expect(failed).toEqual(["not_friends"]);
  });

  it("reconnects to the next node with growing, jittered delays", () => {
    const random = vi.fn(() => 0);
    const { client, sockets, statuses, hello } = setup({ random, backoffBaseMs: 100, backoffMaxMs: 1000 });
    client.start();
    expect(sockets[0].url).toContain("ws://a:1");
    sockets[0].drop();
    const offline = statuses.filter((s) => s.status === "offline");
    // 1 failure: ceiling 200 ms, jitter factor 0.5 with random() = 0.
    expect(offline[0].retryInMs).toBe(100);
    vi.advanceTimersByTime(100);
    expect(sockets[1].url).toContain("ws://b:2");
    sockets[1].drop();
    expect(statuses.filter((s) => s.status === "offline")[1].retryInMs).toBe(200);
    random.mockReturnValue(0.999);
    vi.advanceTimersByTime(200);
    sockets[2].drop();
    expect(statuses.filter((s) => s.status === "offline")[2].retryInMs).toBe(800);
    vi.advanceTimersByTime(800);
    expect(sockets[3].url).toContain("ws://b:2");
    hello();
    expect(client.status).toBe("online");
    // After being online, a drop retries quickly on the other node.
    sockets[3].drop();
    vi.advanceTimersByTime(100);
    expect(sockets[4].url).toContain("ws://a:1");
  });

  it("does not reconnect when replaced by the same device", () => {
    const { client, sockets, hello } = setup();
    client.start();
    hello();
    sockets[0].push({ t: "kick", reason: "replaced", msg: "" });
    sockets[0].drop(4001);
    vi.advanceTimersByTime(60_000);
    expect(sockets).toHaveLength(1);
    expect(client.status).toBe("replaced");
  });

  it("stops with unauthorized when its token is revoked (close 1008)", () => {
    const { client, sockets, hello } = setup();
    client.start();
    hello();
    sockets[0].push({ t: "kick", reason: "revoked", msg: "" });
    sockets[0].drop(1008);
    vi.advanceTimersByTime(60_000);
    expect(sockets).toHaveLength(1);
    expect(client.status).toBe("unauthorized");
  });

  it("keeps read cursors in step and re-sends reads made offline", () => {
    const { client, last, hello } = setup();
    client.start();
    hello([{ conv: 3, last_seq: 5, read_seq: 2, peer: 2 }]);
    expect(client.unread(3)).toBe(3);
    // Another device of mine read up to 4; the peer read up to 5 of mine.
    last().push({ t: "read", conv: 3, user: 1, seq: 4 });
    last().push({ t: "read", conv: 3, user: 2, seq: 5 });
    expect(client.unread(3)).toBe(1);
    expect(client.conversation(3)?.peerReadSeq).toBe(5);
    last().drop();
    client.markRead(3, 5);
    expect(client.totalUnread()).toBe(0);
    vi.advanceTimersByTime(20_000);
    hello([{ conv: 3, last_seq: 5, read_seq: 4, peer: 2 }]);
    expect(last().sentOf("read")).toEqual([{ t: "read", conv: 3, seq: 5 }]);
  });

  it("asks checkAuth after repeated failures and stops on an invalid token", async () => {
    const { client, sockets } = setup({ checkAuth: async () => false, backoffBaseMs: 10 });
    client.start();
    for (let i = 0; i < 3; i++) {
      sockets[sockets.length - 1].drop();
      await vi.advanceTimersByTimeAsync(1000);
    }
    expect(client.status).toBe("unauthorized");
    const count = sockets.length;
    await vi.advanceTimersByTimeAsync(60_000);
    expect(sockets).toHaveLength(count);
  });
});
