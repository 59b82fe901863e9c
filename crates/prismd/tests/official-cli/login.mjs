// Drives prism-auth's browser login in headless Chromium, as a person would, for the
// end-to-end tests with the official `prism` CLI.
//
// Usage: node login.mjs <authorize-url> <email> <password> <screenshot-png-path> [<organization>]
//
// Opens the authorize URL, screenshots the login form (full page) before submitting, fills
// in the email and password, submits, and waits (30 s at most) for the browser to reach the
// CLI's loopback listener (http://localhost:PORT/... or http://127.0.0.1:PORT/..., with
// ?code=...&state=...). That listener answers with a redirect to a host this network cannot
// reach, so this waits for the loopback request and its response, never for a page load.
//
// With <organization>, the sign-in must show the organization chooser (an identity with
// several organizations): its page is screenshot next to the login form's
// (`<screenshot>-chooser.png`), and the button (`name="member"`) whose text is exactly
// <organization> is clicked. Without it, a chooser is a failure.
//
// Exit codes: 0 and, on stdout, one line `choice<TAB><member id><TAB><organization>` per button
// the chooser offered (in page order; none without <organization>), then the loopback URL (the
// last line); 2 and the text of the page's `.error` element on stderr when the login was
// refused (wrong email or password); 1 and a message on stderr for any other failure. The
// browser is always closed.
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

// The chooser's buttons: `{ member, name }` in page order (empty when the page is no chooser).
async function chooserButtons(page) {
  const buttons = page.locator('button[name="member"]');
  const found = [];
  for (let i = 0; i < (await buttons.count()); i += 1) {
    const button = buttons.nth(i);
    found.push({
      member: (await button.getAttribute('value')) ?? '',
      name: ((await button.textContent()) ?? '').trim(),
    });
  }
  return found;
}

function chooserScreenshotPath(screenshotPath) {
  return screenshotPath.replace(/(\.png)?$/, '-chooser.png');
}

async function run(authorizeUrl, email, password, screenshotPath, organization) {
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
    // the login server with an `.error` element means the login was refused; the chooser
    // gets its button clicked, once.
    let settled = false;
    let timer;
    let offered = null; // the chooser's buttons, once it was shown
    const outcome = new Promise((resolve, reject) => {
      const failWith = (error) => {
        if (settled) return;
        settled = true;
        reject(error);
      };
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
      const inspect = async () => {
        const text = await errorText(page);
        if (settled) return;
        if (text !== null) {
          failWith(new LoginRefused(text));
          return;
        }
        const buttons = await chooserButtons(page);
        if (settled || buttons.length === 0) return;
        const names = buttons.map((b) => b.name).join(', ');
        if (organization === undefined) {
          failWith(new Error(`the organization chooser was shown (${names}); no organization given`));
          return;
        }
        if (offered !== null) {
          failWith(new Error(`the organization chooser came back after choosing: ${names}`));
          return;
        }
        offered = buttons;
        await page.screenshot({ path: chooserScreenshotPath(screenshotPath), fullPage: true });
        const matching = page
          .locator('button[name="member"]')
          .filter({ hasText: new RegExp(`^\\s*${escapeRegExp(organization)}\\s*$`) });
        if ((await matching.count()) !== 1) {
          failWith(new Error(`no single button for organization '${organization}' among: ${names}`));
          return;
        }
        await matching.click({ timeout: TIMEOUT_MS });
      };
      page.on('domcontentloaded', () => {
        if (settled || isLoopback(page.url())) return;
        // A failure here is the page navigating on meanwhile: its successor is checked in
        // turn (and the timeout catches a page that never settles).
        inspect().catch(() => {});
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
    let loopbackUrl;
    try {
      loopbackUrl = await outcome;
    } finally {
      clearTimeout(timer);
    }
    if (organization !== undefined && offered === null) {
      throw new Error(`organization '${organization}' given, but no chooser was shown`);
    }
    return { loopbackUrl, offered: offered ?? [] };
  } finally {
    await browser.close().catch(() => {});
  }
}

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

async function main(argv) {
  if (argv.length !== 4 && argv.length !== 5) {
    return fail(
      'usage: node login.mjs <authorize-url> <email> <password> <screenshot-png-path> [<organization>]',
      1,
    );
  }
  const [authorizeUrl, email, password, screenshotPath, organization] = argv;
  try {
    const { loopbackUrl, offered } = await run(
      authorizeUrl,
      email,
      password,
      screenshotPath,
      organization,
    );
    for (const { member, name } of offered) {
      process.stdout.write(`choice\t${member}\t${name}\n`);
    }
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
