// The Devices screen: where I am logged in, logging one out, and my "one session per platform" choice.

import { useEffect, useState } from "preact/hooks";
import type { Store } from "./store";

const PLATFORM_NAMES: Record<string, string> = {
  web: "Web browser",
  desktop: "Desktop app",
  android: "Android",
  ios: "iPhone / iPad",
  other: "Other",
};

function ago(ms: number): string {
  const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(ms).toLocaleDateString();
}

export function Devices({ store }: { store: Store }) {
  const [busy, setBusy] = useState<string | null>(null);
  useEffect(() => {
    void store.loadDevices();
  }, []);
  const policy = store.devicePolicy;
  const revoke = async (device: string, mine: boolean) => {
    if (mine && !confirm("This logs out this browser too. Continue?")) return;
    setBusy(device);
    try {
      await store.revokeDevice(device);
      store.notify("Device logged out");
    } catch (error) {
      store.showError(error);
    } finally {
      setBusy(null);
    }
  };
  const choice = policy?.one_session_per_platform;
  return (
    <div class="list" data-testid="devices">
      <h3>Where you are logged in</h3>
      {store.devices.length === 0 && <p class="hint">Loading…</p>}
      <ul class="plain">
        {store.devices.map((d) => (
          <li class="item static" key={d.device} data-testid="device" data-device={d.device} data-platform={d.platform}>
            <span class="device-icon" aria-hidden="true">
              {d.platform === "android" || d.platform === "ios" ? "📱" : d.platform === "desktop" ? "🖥️" : "🌐"}
            </span>
            <span class="item-main">
              <span class="item-title">
                {PLATFORM_NAMES[d.platform] ?? d.platform}
                {d.device === store.client?.device ? " · this tab" : d.this_login ? " · this browser" : ""}
              </span>
              <span class="item-sub">
                <span class={`dot${d.online ? " on" : ""}`} aria-hidden="true" /> {d.online ? "online now" : `last seen ${ago(d.last_seen_ms)}`} · {d.device}
              </span>
            </span>
            <button
              class="secondary small"
              disabled={busy === d.device}
              onClick={() => void revoke(d.device, d.this_login)}
              data-testid="revoke-device"
              aria-label={`Log out ${PLATFORM_NAMES[d.platform] ?? d.platform} ${d.device}`}
            >
              Log out
            </button>
          </li>
        ))}
      </ul>
      <h3>One session per platform</h3>
      <p class="hint">
        When on, logging in on a new phone logs the old phone out. Browsers and desktop apps can stay logged in side by side.
      </p>
      <fieldset class="policy" data-testid="device-policy">
        <legend class="sr-only">One session per platform</legend>
        {[
          { value: null, label: `Server default (${policy?.server_platforms.length ? policy.server_platforms.map((p) => PLATFORM_NAMES[p] ?? p).join(", ") : "off"})` },
          { value: true, label: "On for every app" },
          { value: false, label: "Off" },
        ].map((option) => (
          <label key={String(option.value)}>
            <input
              type="radio"
              name="policy"
              checked={choice === option.value}
              onChange={() => store.setDevicePolicy(option.value).catch((e) => store.showError(e))}
            />{" "}
            {option.label}
          </label>
        ))}
      </fieldset>
    </div>
  );
}
