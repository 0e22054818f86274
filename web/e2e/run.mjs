// End-to-end scenario in a real browser: Debian's Chromium driven by playwright-core against a live two-node
// cluster.
//
//   node e2e/run.mjs <node1-url> <node2-url>
//
// Started by tests/tests/suite/web.rs, which owns the cluster: this script prints `@@kill N` / `@@start N` and
// waits for `ok` on stdin. Exits non-zero on the first failed expectation. Screenshots go to IM_E2E_SCREENSHOTS
// (default e2e/screenshots; the Rust test puts them under target/).

import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import { deflateSync } from "node:zlib";
import { chromium } from "playwright-core";

const [n1, n2] = process.argv.slice(2);
if (!n1 || !n2) {
  console.error("usage: node e2e/run.mjs <node1-url> <node2-url>");
  process.exit(2);
}
const shots = process.env.IM_E2E_SCREENSHOTS ?? new URL("./screenshots", import.meta.url).pathname;
mkdirSync(shots, { recursive: true });
const started = Date.now();
const WAIT = 20_000;

// ---- talking to the Rust harness ----
const replies = [];
createInterface({ input: process.stdin }).on("line", (line) => replies.shift()?.(line));
function harness(command) {
  console.log(command);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer to ${command}`)), 60_000);
    replies.push((line) => {
      clearTimeout(timer);
      line.trim() === "ok" ? resolve() : reject(new Error(`${command}: ${line}`));
    });
  });
}

function step(text) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${text}`);
}

// ---- a PNG of random pixels (incompressible, so the upload takes a while under throttling) ----
function crc32(bytes) {
  let crc = ~0;
  for (const byte of bytes) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = (crc >>> 1) ^ (0xedb88320 & -(crc & 1));
  }
  return ~crc >>> 0;
}
function chunk(type, data) {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, "ascii");
  data.copy(out, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}
function png(width, height) {
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    const row = y * (width * 3 + 1);
    for (let x = 0; x < width; x++) {
      const i = row + 1 + x * 3;
      raw[i] = (x * 255) / width;
      raw[i + 1] = (y * 255) / height;
      raw[i + 2] = Math.random() * 255;
    }
  }
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(raw)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

// ---- the browser ----
const browser = await chromium.launch({
  executablePath: process.env.IM_E2E_CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
  ],
});
const failures = [];
async function open(context, url, label) {
  const page = await context.newPage();
  page.on("pageerror", (error) => failures.push(`${label}: page error: ${error.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error" && !/Failed to load resource|WebSocket connection/.test(msg.text())) {
      console.log(`  (${label} console) ${msg.text()}`);
    }
  });
  await page.goto(url);
  return page;
}
const nodesParam = (...nodes) => `?nodes=${nodes.map(encodeURIComponent).join(",")}`;
const shot = async (page, name) => {
  await page.screenshot({ path: `${shots}/${name}.png` });
  step(`screenshot ${name}.png`);
};
// axe-core in the page: no serious or critical WCAG 2 A/AA violation on the screen as it is.
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
async function axe(page, screen) {
  if (!(await page.evaluate(() => Boolean(window.axe)))) await page.addScriptTag({ content: axeSource });
  const violations = await page.evaluate(async () => {
    const result = await window.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } });
    return result.violations
      .filter((v) => v.impact === "serious" || v.impact === "critical")
      .map((v) => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(" | ")}`);
  });
  if (violations.length) throw new Error(`axe on ${screen}:\n  ${violations.join("\n  ")}`);
  step(`axe: no serious or critical violations on ${screen}`);
}
const expect = async (what, condition) => {
  const begun = Date.now();
  try {
    await condition();
    if (Date.now() - begun > 3000) step(`(slow: ${what} took ${Date.now() - begun} ms)`);
  } catch (error) {
    throw new Error(`${what}: ${error.message.split("\n")[0]}`);
  }
};
const visible = (locator, what) => expect(what, () => locator.first().waitFor({ state: "visible", timeout: WAIT }));
const gone = (locator, what) => expect(what, () => locator.first().waitFor({ state: "detached", timeout: WAIT }));
const message = (page, body) => page.locator(`[data-testid=message][data-body="${body}"]`);
const convItem = (page, title) => page.locator(`[data-testid=conv-item][data-title="${title}"]`);
const unreadOf = (page, title) => convItem(page, title).locator("[data-testid=unread]");
async function hasText(locator, text, what) {
  await expect(what, () => locator.filter({ hasText: text }).first().waitFor({ state: "visible", timeout: WAIT }));
}

async function register(page, name) {
  await page.getByTestId("mode-register").click();
  await page.locator("input[name=username]").fill(name);
  await page.locator("input[name=password]").fill("correct horse battery");
  await page.getByTestId("login-submit").click();
  await hasText(page.getByTestId("me"), name, `${name} is logged in`);
  await visible(page.locator("[data-testid=online-dot].on"), `${name} is online`);
}
async function logIn(page, name) {
  await page.locator("input[name=username]").fill(name);
  await page.locator("input[name=password]").fill("correct horse battery");
  await page.getByTestId("login-submit").click();
  await hasText(page.getByTestId("me"), name, `${name} is logged in`);
}
async function say(page, text) {
  await page.getByTestId("composer").fill(text);
  await page.getByTestId("composer").press("Enter");
  await visible(message(page, text), `own message "${text}" acknowledged`);
}
async function befriend(from, fromName, to, toName) {
  await from.getByTestId("tab-contacts").click();
  await from.getByTestId("add-friend-input").fill(toName);
  await from.getByTestId("add-friend-submit").click();
  await visible(from.getByTestId("outgoing-request"), `${fromName}'s request is pending`);
  await to.getByTestId("tab-contacts").click();
  const request = to.locator(`[data-testid=incoming-request][data-from="${fromName}"]`);
  await visible(request, `${toName} sees the request live`);
  await hasText(to.getByTestId("request-count"), "1", `${toName}'s request badge`);
  return request;
}
async function seqs(page, conv) {
  return page.evaluate((c) => window.imStore.sortedMessages(c).map((m) => m.seq), conv);
}
async function openConvId(page) {
  return page.evaluate(() => window.imStore.open?.conv ?? null);
}

const id = Date.now().toString(36).slice(-6);
const alice = `alice${id}`;
const bob = `bob${id}`;
const carol = `carol${id}`;

try {
  const desk = { viewport: { width: 1100, height: 720 } };
  const ctxA = await browser.newContext(desk);
  const ctxB = await browser.newContext(desk);
  const ctxC = await browser.newContext(desk);

  step("alice opens node 1, bob opens node 2; both register");
  const a = await open(ctxA, `${n1}/${nodesParam(n1, n2)}`, "alice");
  const b1 = await open(ctxB, `${n2}/${nodesParam(n2, n1)}`, "bob#1");
  await visible(a.getByTestId("login-form"), "login screen");
  await shot(a, "01-login");
  await axe(a, "the login screen");
  // The node serves the build's precompressed files (brotli or gzip), so the app's code travels compressed.
  const sizes = await a.evaluate(() =>
    performance
      .getEntriesByType("resource")
      .filter((e) => /\/assets\/.*\.js$/.test(e.name))
      .map((e) => [e.encodedBodySize, e.decodedBodySize]),
  );
  if (!sizes.length || sizes.some(([encoded, decoded]) => !(encoded > 0 && encoded < decoded / 2))) {
    throw new Error(`the app's code is not served compressed: ${JSON.stringify(sizes)}`);
  }
  step(`app code served compressed: ${sizes.map(([e, d]) => `${Math.round(e / 1024)} KB for ${Math.round(d / 1024)} KB`).join(", ")}`);
  await register(a, alice);
  await register(b1, bob);

  step("friend request, accepted live");
  const request = await befriend(a, alice, b1, bob);
  await shot(b1, "02-friend-request");
  await request.getByTestId("accept").click();
  await visible(a.locator(`[data-testid=friend][data-name="${bob}"]`), "bob is in alice's friends");
  await visible(b1.locator(`[data-testid=friend][data-name="${alice}"]`), "alice is in bob's friends");

  step("alice writes to bob; bob sees an unread badge");
  await a.locator(`[data-testid=friend][data-name="${bob}"]`).click();
  await say(a, "Hello Bob");
  await b1.getByTestId("tab-chats").click();
  await hasText(unreadOf(b1, alice), "1", "bob's unread badge for alice");
  await hasText(b1.getByTestId("total-unread"), "1", "bob's total unread");

  step("bob's second tab (node 1) agrees, then follows the read from the first tab");
  const b2 = await open(ctxB, `${n2}/${nodesParam(n1, n2)}`, "bob#2");
  await hasText(b2.getByTestId("me"), bob, "bob's second tab is logged in");
  await hasText(unreadOf(b2, alice), "1", "second tab's unread badge");
  await hasText(b2.getByTestId("total-unread"), "1", "second tab's total unread");
  await shot(b2, "03-unread-badges");
  await hasText(a.getByTestId("receipt"), "Delivered", "alice's message is delivered, not read");
  await convItem(b1, alice).click();
  await visible(message(b1, "Hello Bob"), "bob reads alice's message");
  await gone(unreadOf(b2, alice), "second tab's badge clears after the first tab read");
  await gone(b2.getByTestId("total-unread"), "second tab's total clears");
  await hasText(a.getByTestId("receipt"), "Read", "alice sees the read receipt");

  step("typing indicator, a reply, an emoji");
  await b1.getByTestId("composer").fill("Hi Ali");
  await hasText(a.getByTestId("chat-sub"), "is typing", "alice sees bob typing");
  await shot(a, "04-typing");
  await b1.getByTestId("composer").fill("Hi Alice 👋");
  await b1.getByTestId("composer").press("Enter");
  await visible(message(a, "Hi Alice 👋"), "alice gets bob's reply");
  await hasText(b1.getByTestId("receipt"), "Read", "bob sees alice read his reply");
  step("the emoji picker (emoji-picker-element): search, pick, send");
  await a.getByTestId("emoji-button").click();
  const picker = a.locator("emoji-picker");
  await picker.locator("#search").fill("party popper");
  await picker.getByRole("option", { name: /🎉/ }).first().click();
  await expect("the emoji is in the composer", () => a.waitForFunction(() => document.querySelector("[data-testid=composer]").value.includes("🎉"), null, { timeout: WAIT }));
  await shot(a, "04b-emoji-picker");
  await picker.locator("#search").press("Escape");
  await gone(picker, "Escape closes the emoji picker");
  await a.getByTestId("composer").press("Enter");
  await visible(message(b1, "🎉"), "bob gets the emoji");

  step("alice sends an image with a throttled upload; bob sees the thumbnail");
  const cdp = await ctxA.newCDPSession(a);
  await cdp.send("Network.enable");
  await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 20, downloadThroughput: -1, uploadThroughput: 256 * 1024 });
  await a.getByTestId("file-input").setInputFiles({ name: "sunset.png", mimeType: "image/png", buffer: png(480, 360) });
  await visible(a.getByTestId("upload-progress"), "upload progress bar");
  await a.waitForFunction(() => Number(document.querySelector("[data-testid=upload-progress]")?.value ?? 1) > 0.05, null, { timeout: WAIT });
  await shot(a, "05-upload-progress");
  await gone(a.getByTestId("upload-progress"), "upload finishes");
  await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
  const thumbLoaded = (page) =>
    expect("thumbnail decoded", () =>
      page.waitForFunction(() => [...document.querySelectorAll("img[data-testid=thumb]")].some((img) => img.complete && img.naturalWidth > 0), null, { timeout: WAIT }),
    );
  await thumbLoaded(b1);
  const size = await b1.locator("img[data-testid=thumb]").first().evaluate((img) => [img.naturalWidth, img.naturalHeight]);
  if (size[0] > 256 || size[1] > 256) throw new Error(`bob got the full image, not the thumbnail: ${size}`);
  await thumbLoaded(a);
  await shot(b1, "06-image-thumbnail");

  step("alice recalls a message");
  await say(a, "oops, wrong chat");
  await visible(message(b1, "oops, wrong chat"), "bob sees the message before the recall");
  // Recall is a visible action of the message (reachable by Tab), not hidden behind a click on the bubble.
  await message(a, "oops, wrong chat").getByTestId("recall").focus();
  await a.keyboard.press("Enter");
  await gone(message(b1, "oops, wrong chat"), "the recalled text disappears for bob");
  await visible(b1.getByTestId("recalled"), "bob sees that alice recalled a message");
  await visible(b2.getByTestId("tab-chats"), "second tab alive");
  await convItem(b2, alice).click();
  await visible(b2.getByTestId("recalled"), "bob's second tab shows the recall too");
  await thumbLoaded(b2);
  await hasText(b2.getByTestId("messages"), "Hi Alice 👋", "second tab shows the whole conversation");
  await shot(a, "07-chat");

  step("carol (node 2 only) registers; bob rejects her request, alice accepts hers; a group");
  const c = await open(ctxC, `${n2}/${nodesParam(n2)}`, "carol");
  await register(c, carol);
  const rejected = await befriend(c, carol, b1, bob);
  await rejected.getByTestId("reject").click();
  await gone(rejected, "the rejected request disappears for bob");
  await b1.getByTestId("tab-chats").click();
  await gone(c.getByTestId("outgoing-request"), "carol's rejected request is no longer pending");
  if ((await c.locator(`[data-testid=friend][data-name="${bob}"]`).count()) !== 0) throw new Error("rejected, yet friends");
  const carolRequest = await befriend(c, carol, a, alice);
  await carolRequest.getByTestId("accept").click();
  await visible(a.locator(`[data-testid=friend][data-name="${carol}"]`), "carol is alice's friend");
  await a.getByTestId("tab-chats").click();
  await a.getByTestId("new-group").click();
  await a.getByTestId("group-title").fill("Lunch crew");
  await a.locator(`[data-testid=pick][data-name="${bob}"]`).check();
  await a.getByTestId("group-create").click();
  await hasText(a.getByTestId("chat-title"), "Lunch crew", "alice is in the new group");
  await visible(convItem(b1, "Lunch crew"), "bob sees the group");
  await a.getByTestId("add-member").click();
  await a.locator(`[data-testid=pick][data-name="${carol}"]`).check();
  await a.getByTestId("add-members-submit").click();
  await hasText(a.getByTestId("messages"), `added ${carol}`, "the group shows carol was added");
  await c.getByTestId("tab-chats").click();
  await convItem(c, "Lunch crew").click();
  await say(c, "Hi all, carol here");
  await visible(message(a, "Hi all, carol here"), "alice gets carol's group message");
  await convItem(b1, "Lunch crew").click();
  await visible(message(b1, "Hi all, carol here"), "bob gets carol's group message");
  await say(b1, "Pizza at noon?");
  await visible(message(c, "Pizza at noon?"), "carol gets bob's group message");
  await shot(a, "08-group");
  const group = await openConvId(a);

  step("scroll-back: 40 more messages, then a fresh phone-sized tab of bob loads history on scroll");
  await a.locator(`[data-testid=conv-item][data-title="${bob}"]`).click();
  for (let i = 1; i <= 40; i++) {
    await a.getByTestId("composer").fill(`count ${i}`);
    await a.getByTestId("composer").press("Enter");
  }
  await visible(message(a, "count 40"), "alice's 40 messages acknowledged");
  const direct = await openConvId(a);
  const phone = await ctxB.newPage();
  await phone.setViewportSize({ width: 390, height: 780 });
  phone.on("pageerror", (error) => failures.push(`bob#3: page error: ${error.message}`));
  await phone.goto(`${n2}/${nodesParam(n1, n2)}`);
  await visible(convItem(phone, alice), "phone tab lists the chat");
  await shot(phone, "09-phone-list");
  await convItem(phone, alice).click();
  await visible(message(phone, "count 40"), "phone shows the newest message");
  if ((await message(phone, "Hello Bob").count()) !== 0) throw new Error("the first message should not be loaded yet");
  // Each scroll to the top loads one older page; wait for it to arrive before scrolling again.
  for (let page = 0; page < 5 && (await message(phone, "Hello Bob").count()) === 0; page++) {
    const before = await phone.locator("[data-testid=message]").count();
    await phone.getByTestId("messages").evaluate((el) => (el.scrollTop = 0));
    await expect("an older page arrives", () =>
      phone.waitForFunction((n) => document.querySelectorAll("[data-testid=message]").length > n, before, { timeout: WAIT }),
    );
  }
  await visible(message(phone, "Hello Bob"), "scrolling up loads the history");
  await phone.getByTestId("messages").evaluate((el) => (el.scrollTop = el.scrollHeight));
  await shot(phone, "10-phone-chat");
  await phone.close();

  step("node 2 dies: bob's first tab moves to node 1, carol (node 2 only) goes offline");
  await b1.evaluate(() => {
    window.statusLog = [];
    window.imStore.client.on("status", (s) => window.statusLog.push(`${s.status}@${s.node}`));
  });
  await convItem(b1, alice).click();
  await harness("@@kill 1");
  await visible(c.locator("[data-testid=status][data-status=offline]"), "carol sees that she is offline");
  await convItem(c, "Lunch crew").click();
  await c.getByTestId("composer").fill("sent while offline");
  await c.getByTestId("composer").press("Enter");
  await visible(c.locator('[data-testid=pending][data-body="sent while offline"]'), "carol's message waits");
  await hasText(c.getByTestId("status"), "will send when back", "carol is told it will send later");
  await shot(c, "11-offline");
  await say(a, "after the crash 1");
  await say(a, "after the crash 2");
  await a.getByTestId("file-input").setInputFiles({ name: "second.png", mimeType: "image/png", buffer: png(64, 64) });
  await visible(message(b1, "after the crash 2"), "bob's first tab gets messages through node 1");
  await expect("bob's first tab reconnected to node 1", () =>
    b1.waitForFunction((url) => window.imStore.client.isOnline && window.imStore.client.currentNode === url, n1, { timeout: WAIT }),
  );
  const log = await b1.evaluate(() => window.statusLog);
  step(`bob#1 status changes: ${log.join(", ")}`);
  if (!log.some((s) => s.startsWith("offline")) || !log.some((s) => s === `online@${n1}`)) throw new Error(`unexpected status log ${log}`);
  await expect("bob's first tab shows the image sent after the crash", () =>
    b1.waitForFunction(() => [...document.querySelectorAll("img[data-testid=thumb]")].filter((img) => img.naturalWidth > 0).length >= 2, null, { timeout: WAIT }),
  );
  await say(b1, "still here on node 1");
  await visible(message(a, "still here on node 1"), "alice gets bob's message sent after the failover");
  const aliceSeqs = await seqs(a, direct);
  await expect("bob's first tab has every message alice has", () =>
    b1.waitForFunction(([c, want]) => JSON.stringify(window.imStore.sortedMessages(c).map((m) => m.seq).filter((s) => want.includes(s))) === JSON.stringify(want), [direct, aliceSeqs], { timeout: WAIT }),
  );
  await shot(b1, "12-after-failover");

  step("node 2 comes back: carol reconnects and her waiting message is delivered once");
  await harness("@@start 1");
  await gone(c.locator("[data-testid=status]"), "carol is back online");
  await visible(message(c, "sent while offline"), "carol's message is acknowledged");
  await a.locator(`[data-testid=conv-item][data-title="Lunch crew"]`).click();
  await visible(message(a, "sent while offline"), "alice gets carol's offline message");
  await visible(message(b1, "sent while offline").or(convItem(b1, "Lunch crew").locator("[data-testid=unread]")), "bob gets it too");
  if ((await message(a, "sent while offline").count()) !== 1) throw new Error("carol's message arrived twice");
  const groupSeqs = await seqs(a, group);
  await expect("carol has every group message", () =>
    c.waitForFunction(([g, want]) => want.every((s) => window.imStore.sortedMessages(g).some((m) => m.seq === s)), [group, groupSeqs], { timeout: WAIT }),
  );
  await shot(a, "13-group-after-recovery");

  step("a 100,000-character paste is refused before sending, keeps the text, and nothing is stuck behind it");
  await convItem(a, bob).click();
  await a.getByTestId("composer").fill("x".repeat(100_000));
  await a.getByTestId("composer").press("Enter");
  await hasText(a.getByTestId("composer-error"), "too long", "a clear message about the length");
  if ((await a.getByTestId("composer").inputValue()).length !== 100_000) throw new Error("the long text was not kept");
  if (await a.getByTestId("pending").count()) throw new Error("the long message was queued");
  await shot(a, "14-too-long");
  await a.getByTestId("composer").fill("after the long one");
  await a.getByTestId("composer").press("Enter");
  await visible(message(b1, "after the long one"), "the next message goes through");

  step("multi-line (Shift+Enter breaks, Enter sends) and safe links");
  await a.getByTestId("composer").fill("line one");
  await a.getByTestId("composer").press("Shift+Enter");
  await a.getByTestId("composer").pressSequentially("line two https://example.com/path. javascript:alert(1)");
  await a.getByTestId("composer").press("Enter");
  const multi = "line one\nline two https://example.com/path. javascript:alert(1)";
  await expect("bob gets the two-line message", () =>
    b1.waitForFunction((body) => window.imStore.sortedMessages(window.imStore.open.conv).some((m) => m.body === body), multi, { timeout: WAIT }),
  );
  const link = b1.locator('[data-testid=link][href="https://example.com/path"]');
  await visible(link, "the URL is a link");
  if ((await link.first().getAttribute("rel")) !== "noopener noreferrer") throw new Error("links must open without access to the page");
  if (await b1.locator('a[href^="javascript:"]').count()) throw new Error("a javascript: link was made");

  step("an image pasted into the composer is uploaded and sent");
  const thumbsBefore = await b1.locator("img[data-testid=thumb]").count();
  const pasted = await a.evaluateHandle((bytes) => {
    const dt = new DataTransfer();
    dt.items.add(new File([new Uint8Array(bytes)], "pasted.png", { type: "image/png" }));
    return dt;
  }, [...png(40, 30)]);
  await a.getByTestId("composer").evaluate((el, dt) => el.dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true })), pasted);
  await expect("bob gets the pasted image", () =>
    b1.waitForFunction((n) => [...document.querySelectorAll("img[data-testid=thumb]")].filter((img) => img.naturalWidth > 0).length > n, thumbsBefore, { timeout: WAIT }),
  );
  if (/node/i.test(await a.locator(".me-node").innerText())) throw new Error("users are shown internal node names");

  step("a file dropped on the chat is uploaded and sent; bob downloads it");
  const dataTransfer = await a.evaluateHandle(() => {
    const dt = new DataTransfer();
    dt.items.add(new File(["hello from a dropped file\n"], "notes.txt", { type: "text/plain" }));
    return dt;
  });
  await a.dispatchEvent("[data-testid=chat]", "dragover", { dataTransfer });
  await a.dispatchEvent("[data-testid=chat]", "drop", { dataTransfer });
  const fileMessage = b1.locator("[data-testid=file]", { hasText: "notes.txt" });
  await visible(fileMessage, "bob gets the file message");
  const [download] = await Promise.all([b1.waitForEvent("download", { timeout: WAIT }), fileMessage.first().getByTestId("download").click()]);
  if (download.suggestedFilename() !== "notes.txt") throw new Error(`downloaded as ${download.suggestedFilename()}`);
  if (readFileSync(await download.path(), "utf8") !== "hello from a dropped file\n") throw new Error("the downloaded file differs");
  await shot(b1, "15-file-message");

  step("keyboard: a thumbnail opens with Enter; the viewer closes with its button and with Escape");
  await a.getByTestId("open-image").last().focus();
  await a.keyboard.press("Enter");
  await visible(a.getByTestId("full-image"), "the viewer opens from the keyboard");
  await shot(a, "16-image-viewer");
  await a.getByTestId("viewer-close").click();
  await gone(a.getByTestId("full-image"), "the close button closes the viewer");
  await a.getByTestId("open-image").last().focus();
  await a.keyboard.press("Enter");
  await visible(a.getByTestId("full-image"), "the viewer opens again");
  await a.keyboard.press("Escape");
  await gone(a.getByTestId("full-image"), "Escape closes the viewer");
  await axe(a, "a chat (desktop)");
  await shot(a, "17-chat-desktop");

  step("an unsent message survives a reload (IndexedDB); the reload reopens the chat");
  await ctxA.addInitScript(() => {
    if (localStorage.getItem("e2e.blockWs")) {
      window.WebSocket = class {
        constructor() {
          throw new Error("WebSocket blocked by the test");
        }
      };
    }
  });
  await a.evaluate(() => localStorage.setItem("e2e.blockWs", "1"));
  await a.reload();
  await hasText(a.getByTestId("chat-title"), bob, "the reload reopens the chat with bob");
  await visible(a.locator("[data-testid=status][data-status=offline]"), "alice is offline (WebSocket blocked)");
  await a.getByTestId("composer").fill("written before a reload");
  await a.getByTestId("composer").press("Enter");
  const waiting = a.locator('[data-testid=pending][data-body="written before a reload"]');
  await visible(waiting, "the message waits");
  await a.reload();
  await visible(waiting, "the unsent message is still there after a reload");
  await hasText(a.getByTestId("chat-title"), bob, "in the chat it was written in");
  await shot(a, "18-unsent-after-reload");
  await a.evaluate(() => localStorage.removeItem("e2e.blockWs"));
  await a.reload();
  await visible(message(a, "written before a reload"), "it is sent once the connection is back");
  await visible(message(b1, "written before a reload"), "bob gets it");
  await gone(waiting, "nothing is left waiting");
  if ((await message(b1, "written before a reload").count()) !== 1) throw new Error("the message arrived twice");

  step("groups: roles, rename, remove, invite by consent, join, read receipts, leave; events are not unread");
  await hasText(unreadOf(b1, "Lunch crew"), "1", "bob has carol's offline message unread in the group");
  await convItem(a, "Lunch crew").click();
  await a.getByTestId("group-info").click();
  await visible(a.locator(`[data-testid=member][data-role=owner][data-name="${alice}"]`), "members listed with roles");
  await axe(a, "the group info dialog");
  await shot(a, "19-group-info");
  await a.getByTestId("group-rename-input").fill("Dinner crew");
  await a.getByTestId("group-rename").click();
  await hasText(a.getByTestId("chat-title"), "Dinner crew", "the group is renamed");
  await visible(convItem(b1, "Dinner crew"), "bob sees the new name live");
  await b1.waitForTimeout(300);
  await hasText(unreadOf(b1, "Dinner crew"), "1", "the rename is shown but not counted as unread");
  await a.locator(`[data-testid=member][data-name="${carol}"]`).getByTestId("remove-member").click();
  await gone(a.locator(`[data-testid=member][data-name="${carol}"]`), "carol is removed");
  await a.keyboard.press("Escape");
  await gone(a.getByTestId("dialog"), "Escape closes the dialog");
  await hasText(a.getByTestId("messages"), `removed ${carol}`, "the timeline shows the removal");
  // Carol still has the group open: what she sends now is refused (not a member), shown failed with Retry and
  // Delete, and survives a reload until she deletes it.
  await c.getByTestId("composer").fill("am I still in?");
  await c.getByTestId("composer").press("Enter");
  const refused = c.locator('[data-testid=pending][data-failed=true][data-body="am I still in?"]');
  await visible(refused, "carol's message is shown as not sent");
  await hasText(refused, "not in this group", "with the reason");
  await visible(refused.getByTestId("retry"), "and a Retry button");
  await shot(c, "19b-failed-send");
  await c.reload();
  await c.getByTestId("tab-chats").click();
  await visible(refused, "the failed message survives a reload");
  await refused.getByTestId("retry").click();
  await c.waitForTimeout(700);
  await visible(refused, "a retry that the server refuses again shows it failed again");
  await refused.getByTestId("delete-unsent").click();
  await gone(refused, "Delete removes it");
  await convItem(b1, "Dinner crew").click();
  await b1.getByTestId("group-info").click();
  await b1.getByTestId("group-invite-input").fill(carol);
  await b1.getByTestId("group-invite").click();
  await hasText(b1.getByTestId("toast"), "invited", "bob (not carol's friend) invites her instead of adding her");
  await b1.keyboard.press("Escape");
  await c.getByTestId("tab-contacts").click();
  const invitation = c.locator('[data-testid=invitation][data-title="Dinner crew"]');
  await visible(invitation, "carol sees the invitation");
  await shot(c, "20-group-invitation");
  await invitation.getByTestId("accept-invitation").click();
  await hasText(c.getByTestId("chat-title"), "Dinner crew", "carol joined and the group opens");
  await hasText(a.getByTestId("messages"), `${carol} joined`, "alice's timeline says carol joined");
  await say(a, "who read this?");
  await visible(message(b1, "who read this?"), "bob sees the question");
  await visible(message(c, "who read this?"), "carol sees the question");
  await hasText(a.getByTestId("group-receipt"), "Read by 2 of 2", "group read receipts count the readers");
  await a.getByTestId("group-receipt").click();
  await hasText(a.getByTestId("read-by"), bob, "the list names who read it");
  await shot(a, "21-read-by");
  await a.keyboard.press("Escape");
  c.once("dialog", (d) => void d.accept());
  await c.getByTestId("group-info").click();
  await c.getByTestId("group-leave").click();
  await gone(convItem(c, "Dinner crew"), "carol left the group");
  await hasText(a.getByTestId("messages"), `${carol} left`, "alice sees that carol left");
  await c.getByTestId("tab-contacts").click();
  await axe(c, "the contacts screen");

  step("devices: bob's phone lists his browser and logs it out; a newer phone login moves the older phone out");
  const phoneCtx = {
    viewport: { width: 390, height: 780 },
    userAgent: "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Mobile Safari/537.36",
  };
  const ctxP = await browser.newContext(phoneCtx);
  const p1 = await open(ctxP, `${n1}/${nodesParam(n1, n2)}`, "bob-phone1");
  await shot(p1, "22-phone-login");
  await logIn(p1, bob);
  await visible(convItem(p1, alice), "the phone lists bob's chats");
  await axe(p1, "the chat list (phone)");
  await shot(p1, "23-phone-chats");
  await convItem(p1, "Dinner crew").click();
  await visible(message(p1, "who read this?"), "the phone shows the group");
  await axe(p1, "a group chat (phone)");
  await shot(p1, "24-phone-group");
  await p1.getByTestId("group-info").click();
  await shot(p1, "25-phone-group-info");
  await p1.keyboard.press("Escape");
  await p1.getByRole("button", { name: "Back to the list" }).click();
  await p1.getByTestId("tab-devices").click();
  const b1Device = await b1.evaluate(() => window.imStore.client.device);
  const browserRow = p1.locator(`[data-testid=device][data-device="${b1Device}"]`);
  await visible(browserRow, "the phone lists bob's browser");
  await visible(p1.locator("[data-testid=device][data-platform=android]"), "and itself, as Android");
  await axe(p1, "the devices screen (phone)");
  await shot(p1, "26-phone-devices");
  await browserRow.getByTestId("revoke-device").click();
  await visible(b1.getByTestId("login-form"), "bob's browser is logged out");
  await visible(b2.getByTestId("login-form"), "and its other tab (the same login)");
  await gone(browserRow, "the browser is no longer listed");
  await shot(b1, "27-logged-out-from-phone");
  const ctxQ = await browser.newContext(phoneCtx);
  const p2 = await open(ctxQ, `${n2}/${nodesParam(n2, n1)}`, "bob-phone2");
  await logIn(p2, bob);
  await visible(p1.locator("[data-testid=status][data-status=replaced]"), "the older phone is moved out (kick replaced)");
  await shot(p1, "28-phone-moved-out");
  await p2.getByTestId("tab-devices").click();
  await visible(p2.locator("[data-testid=device][data-platform=android]"), "the new phone is listed");
  await p2.waitForTimeout(300);
  const androids = await p2.locator("[data-testid=device][data-platform=android]").count();
  if (androids !== 1) throw new Error(`one Android login expected, ${androids} listed`);
  await shot(p2, "29-phone-devices-after-policy");
  await a.getByTestId("tab-devices").click();
  await visible(a.locator("[data-testid=device]"), "alice's devices");
  await axe(a, "the devices screen (desktop)");
  await shot(a, "30-devices-desktop");

  if (failures.length) throw new Error(failures.join("\n"));
  step("all good");
  await browser.close();
  process.exit(0);
} catch (error) {
  console.log(`FAILED: ${error.stack ?? error}`);
  for (const failure of failures) console.log(failure);
  for (const context of browser.contexts()) {
    for (const [i, page] of context.pages().entries()) {
      await page.screenshot({ path: `${shots}/failure-${browser.contexts().indexOf(context)}-${i}.png` }).catch(() => undefined);
    }
  }
  await browser.close().catch(() => undefined);
  process.exit(1);
}
