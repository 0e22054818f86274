// Frame codec: one header byte (bit 0 = zstd) followed by a MessagePack map tagged by `t` (docs/protocol.md §3).

import { decode, encode } from "@msgpack/msgpack";
import { decompress } from "fzstd";
import type { ClientFrame, ServerFrame } from "./frames";

export class FrameError extends Error {}

/** Largest decompressed body accepted from the server (the server's own default limit for clients). */
export const MAX_DECOMPRESSED = 4 * 1024 * 1024;

/** Encodes a client frame as a plain (uncompressed) binary message. */
export function encodeFrame(frame: ClientFrame): Uint8Array {
  const body = encode(frame, { ignoreUndefined: true });
  const out = new Uint8Array(body.length + 1);
  out[0] = 0;
  out.set(body, 1);
  return out;
}

/** Decodes a server binary message; integers arrive as JS numbers (ids fit in 2^53 in practice). */
export function decodeFrame(data: ArrayBuffer | Uint8Array): ServerFrame {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  if (bytes.length < 2) throw new FrameError("frame too short");
  const header = bytes[0];
  if ((header & 0xfe) !== 0) throw new FrameError(`reserved header bits set: ${header}`);
  let body = bytes.subarray(1);
  if (header & 1) {
    body = decompress(body);
    if (body.length > MAX_DECOMPRESSED) throw new FrameError("decompressed frame too large");
  }
  const value = decode(body, { useBigInt64: false });
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new FrameError("frame is not a map");
  }
  const t = (value as { t?: unknown }).t;
  if (typeof t !== "string") throw new FrameError("frame has no `t`");
  return value as ServerFrame;
}
