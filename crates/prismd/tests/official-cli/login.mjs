// Drives prism-auth's browser login in headless Chromium, as a person would, for the
// end-to-end tests with the official `prism` CLI.
//
// Usage: node login.mjs <authorize-url> <email> <password> <screenshot-png-path>
//
// Opens the authorize URL, screenshots the login form (full page) before submitting, fills
// in the email and password, submits, and waits (30 s at most) for the browser to reach the
// CLI's loopback listener (http://localhost:PORT/... or http://127.0.0.1:PORT/..., with
// ?code=...&state=...). That listener answers with a redirect to a host this network cannot
// reach, so this waits for the loopback request and its response, never for a page load.
//
// Exit codes: 0 and the loopback URL on stdout (one line); 2 and the text of the page's
// `.error` element on stderr when the login was refused (wrong email or password); 1 and a
// message on stderr for any other failure. The browser is always closed.
//
// Chromium is Debian's (/usr/bin/chromium, installed by scripts/test.sh); playwright-core
// downloads no browser of its own.

import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { chromium } from 'playwright-core';

const TIMEOUT_MS = 30_000;
const LOOPBACK_PREFIXES = ['http://localhost:', 'http://127.0.0.1:'];

class LoginRefused extends Error {}

function fail(message, code) {
  process.stderr.write(`login.mjs: ${message}\n`);
  return code;
}

async function errorText(page) {
  const error = page.locator('.error').first();
  if ((await error.count()) === 0) return null;
  return ((await error.textContent()) ?? '').trim() || '(empty .error element)';
}

async function run(authorizeUrl, email, password, screenshotPath) {
  const authorizeOrigin = new URL(authorizeUrl).origin;
  // The login server itself may listen on loopback too (plain http in a test): its own
  // origin is never the CLI's listener.
  const isLoopback = (url) =>
    LOOPBACK_PREFIXES.some((prefix) => url.startsWith(prefix)) &&
    new URL(url).origin !== authorizeOrigin;

  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  try {
    // The server uses a development CA that the browser does not trust.
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    context.setDefaultTimeout(TIMEOUT_MS);
    const page = await context.newPage();

    const response = await page.goto(authorizeUrl, { waitUntil: 'load', timeout: TIMEOUT_MS });
    await mkdir(dirname(screenshotPath), { recursive: true });
    await page.screenshot({ path: screenshotPath, fullPage: true });

    const emailInput = page.locator('input[name="email"]');
    const passwordInput = page.locator('input[name="password"]');
    const submit = page.locator('button[type="submit"]').first();
    if ((await emailInput.count()) === 0 || (await passwordInput.count()) === 0) {
      const shown = (await errorText(page)) ?? (await page.locator('body').innerText()).slice(0, 500);
      throw new Error(
        `no login form at ${page.url()} (HTTP ${response?.status() ?? '?'}): ${shown.trim()}`,
      );
    }
    await emailInput.fill(email);
    await passwordInput.fill(password);

    // From here on: the first request to the CLI's loopback listener wins; a page shown by
    // the login server with an `.error` element means the login was refused.
    let settled = false;
    let timer;
    const outcome = new Promise((resolve, reject) => {
      context.on('request', (request) => {
        if (settled || !isLoopback(request.url())) return;
        settled = true;
        // Its response (a redirect away) tells that the listener took it; the request
        // alone is enough if the listener closes without answering.
        request
          .response()
          .catch(() => null)
          .then(() => resolve(request.url()));
      });
      page.on('domcontentloaded', () => {
        if (settled || isLoopback(page.url())) return;
        errorText(page).then(
          (text) => {
            if (settled || text === null) return;
            settled = true;
            reject(new LoginRefused(text));
          },
          () => {}, // the page navigated on meanwhile: its successor is checked in turn
        );
      });
      timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        reject(
          new Error(
            `no request to a loopback listener within ${TIMEOUT_MS / 1000} s of submitting; ` +
              `the page is at ${page.url()}`,
          ),
        );
      }, TIMEOUT_MS);
    });
    outcome.catch(() => {}); // handled below; avoids an unhandled rejection while clicking

    await submit.click({ timeout: TIMEOUT_MS });
    try {
      return await outcome;
    } finally {
      clearTimeout(timer);
    }
  } finally {
    await browser.close().catch(() => {});
  }
}

async function main(argv) {
  if (argv.length !== 4) {
    return fail('usage: node login.mjs <authorize-url> <email> <password> <screenshot-png-path>', 1);
  }
  const [authorizeUrl, email, password, screenshotPath] = argv;
  try {
    const loopbackUrl = await run(authorizeUrl, email, password, screenshotPath);
    process.stdout.write(`${loopbackUrl}\n`);
    return 0;
  } catch (error) {
    if (error instanceof LoginRefused) {
      process.stderr.write(`${error.message}\n`);
      return 2;
    }
    return fail(error?.message ?? String(error), 1);
  }
}

process.exitCode = await main(process.argv.slice(2));
