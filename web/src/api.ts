// REST calls (docs/openapi.yaml) against the cluster: the preferred node first, the others on a network failure.

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface Profile {
  id: number;
  username: string;
  display_name?: string;
  avatar?: string | null;
}

export interface FriendRequest {
  id: number;
  from: number;
  to: number;
  note?: string;
  status: string;
  created_at: number;
}

export interface ConversationRow {
  id: number;
  kind: "direct" | "group";
  title: string;
  peer: number | null;
  last_seq: number;
  read_seq: number;
  unread: number;
  last_activity_ms: number;
  last_message: import("./lib/frames").Message | null;
}

export interface UploadResult {
  hash: string;
  size: number;
  mime: string;
  thumbnail: boolean;
}

export class Api {
  token = "";

  constructor(
    readonly nodes: string[],
    /** The node to try first (the one the WebSocket is on). */
    private preferred: () => string,
  ) {}

  private order(): string[] {
    const first = this.preferred();
    return [first, ...this.nodes.filter((n) => n !== first)];
  }

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    let lastError: unknown = null;
    for (const node of this.order()) {
      let response: Response;
      try {
        const headers: Record<string, string> = {};
        if (this.token) headers.authorization = `Bearer ${this.token}`;
        if (body !== undefined) headers["content-type"] = "application/json";
        response = await fetch(new URL(path, node), {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
        });
      } catch (error) {
        lastError = error; // network failure: try the next node
        continue;
      }
      if (response.status === 204) return undefined as T;
      const text = await response.text();
      let value: unknown = null;
      try {
        value = text ? JSON.parse(text) : null;
      } catch {
        value = null;
      }
      if (response.status === 503 && this.nodes.length > 1) {
        lastError = new ApiError(503, "unavailable", "node unavailable");
        continue;
      }
      if (!response.ok) {
        const err = (value ?? {}) as { error?: string; message?: string };
        throw new ApiError(response.status, err.error ?? "http_error", err.message ?? `HTTP ${response.status}`);
      }
      return value as T;
    }
    throw new ApiError(0, "offline", lastError instanceof Error ? "No node could be reached" : "No node could be reached");
  }

  /** An authorised download as a blob (thumbnails and media need the Authorization header). */
  async blob(path: string): Promise<Blob> {
    let lastError: unknown = null;
    for (const node of this.order()) {
      try {
        const response = await fetch(new URL(path, node), { headers: { authorization: `Bearer ${this.token}` } });
        if (!response.ok) throw new ApiError(response.status, "http_error", `HTTP ${response.status}`);
        return await response.blob();
      } catch (error) {
        if (error instanceof ApiError) throw error;
        lastError = error;
      }
    }
    throw lastError instanceof Error ? lastError : new Error("download failed");
  }

  /** Uploads a file to POST /v1/media with XHR, reporting progress (0..1). */
  upload(file: Blob, onProgress: (fraction: number) => void): Promise<UploadResult> {
    const node = this.preferred();
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", new URL("/v1/media", node).toString());
      xhr.setRequestHeader("authorization", `Bearer ${this.token}`);
      xhr.setRequestHeader("content-type", file.type || "application/octet-stream");
      xhr.upload.onprogress = (event) => {
        if (event.lengthComputable) onProgress(event.loaded / event.total);
      };
      xhr.onload = () => {
        let value: Record<string, unknown> = {};
        try {
          value = JSON.parse(xhr.responseText);
        } catch {
          /* not JSON */
        }
        if (xhr.status === 200 || xhr.status === 201) {
          onProgress(1);
          resolve(value as unknown as UploadResult);
        } else if (xhr.status === 413) {
          reject(new ApiError(413, "too_large", "The file is larger than the upload limit"));
        } else {
          reject(new ApiError(xhr.status, String(value.error ?? "upload_failed"), String(value.message ?? `Upload failed (${xhr.status})`)));
        }
      };
      xhr.onerror = () => reject(new ApiError(0, "offline", "Upload failed: the node could not be reached"));
      xhr.send(file);
    });
  }
}
