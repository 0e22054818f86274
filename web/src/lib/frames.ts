// The frames of docs/protocol.md as TypeScript types.

export type Kind = "text" | "emoji" | "image" | "file" | "custom" | "system" | "recall";

export interface Attrs {
  media?: string;
  size?: number;
  mime?: string;
  name?: string;
  target_seq?: number;
  event?: string;
  users?: number[];
  title?: string;
  [key: string]: unknown;
}

/** A stored message: the `msg` frame without `t`, also the shape of `synced.msgs` and REST history. */
export interface Message {
  id: number;
  conv: number;
  seq: number;
  from: number;
  cid: string;
  kind: Kind;
  body: string;
  ts: number;
  attrs?: Attrs | null;
  recalled?: boolean;
}

export interface ConvState {
  conv: number;
  last_seq: number;
  read_seq: number;
  peer?: number | null;
  title?: string | null;
}

export interface HelloFrame {
  t: "hello";
  user: number;
  device: string;
  node: string;
  ping: number;
  idle: number;
  convs: ConvState[];
  /** The node's size limits (absent from older nodes). */
  limits?: Limits | null;
}

/** `hello.limits`: sizes a client checks before sending (docs/protocol.md §5). */
export interface Limits {
  message_bytes: number;
  body_bytes: number;
  caption_bytes: number;
  emoji_bytes: number;
  media_bytes: number;
}
export interface AckFrame {
  t: "ack";
  cid: string;
  id: number;
  conv: number;
  seq: number;
  ts: number;
}
export interface MsgFrame extends Message {
  t: "msg";
}
export interface ReadFrame {
  t: "read";
  conv: number;
  user: number;
  seq: number;
}
export interface TypingFrame {
  t: "typing";
  conv: number;
  user: number;
}
export interface NoticeFrame {
  t: "notice";
  kind: "friend_request" | "friend_accepted" | "friend_rejected" | "friend_removed" | "presence" | "group_invitation";
  user: number;
  request?: number | null;
  note?: string | null;
  online?: boolean | null;
}
export interface SyncedFrame {
  t: "synced";
  rid?: number | null;
  conv: number;
  msgs: Message[];
  more: boolean;
}
export interface ErrorFrame {
  t: "error";
  code: string;
  cid?: string | null;
  rid?: number | null;
  retry: boolean;
  msg: string;
}
export interface KickFrame {
  t: "kick";
  reason: string;
  msg: string;
}

export type ServerFrame =
  | HelloFrame
  | AckFrame
  | MsgFrame
  | ReadFrame
  | TypingFrame
  | NoticeFrame
  | SyncedFrame
  | ErrorFrame
  | KickFrame;

export interface SendFrame {
  t: "send";
  cid: string;
  to?: number;
  conv?: number;
  kind: Exclude<Kind, "system" | "recall">;
  body: string;
  attrs?: Attrs;
}
export interface SyncFrame {
  t: "sync";
  rid: number;
  conv: number;
  after_seq: number;
  limit: number;
}
export interface ReadClientFrame {
  t: "read";
  conv: number;
  seq: number;
}
export interface TypingClientFrame {
  t: "typing";
  conv: number;
}
export interface RecallFrame {
  t: "recall";
  cid: string;
  conv: number;
  seq: number;
}

export type ClientFrame = SendFrame | SyncFrame | ReadClientFrame | TypingClientFrame | RecallFrame;
