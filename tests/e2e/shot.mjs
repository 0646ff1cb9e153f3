// Drive OHIF in headless Chromium (puppeteer-core) for tests/e2e/test_viewer.py.
//
//   node shot.mjs JOB.json
//
// JOB.json: {
//   "executablePath": "/usr/bin/chromium", "width": 1280, "height": 800,
//   "timeoutMs": 60000,            // each wait (page load, image, overlay)
//   "pidFile": "/abs/browser.pid", // optional: gets the browser's process id
//   "settleMs": 1000,              // after the overlay appeared
//   "shots": [{ "name": "seg", "url": "http://.../viewer?...", "expect": "seg" | "sr" | "image",
//               "screenshot": "/abs/seg.png",
//               "analysisScreenshot": "/abs/seg-analysis.png" }]   // optional, see ANALYSIS
// }
// Prints one JSON object on stdout: { "browser": ..., "shots": [ { name, ok, error, ms,
//   viewports: [{ id, imageId, rect, size, corners }], svgTexts: [{ text, rect }], outlines: [rect],
//   toasts: [{ type, text }], segmentations, measurements, errors } ] }.
// corners: where image pixel corners (0,0), (columns,0), (0,rows) of the displayed image
// land on the page (CSS pixels = screenshot pixels), from cornerstone's own transforms.
// A shot that fails still gets a screenshot (when the page got that far) and its error.
import { readFileSync, writeFileSync } from 'node:fs';
import puppeteer from 'puppeteer-core';

const job = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const timeout = job.timeoutMs ?? 60000;
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

// In the page: is an image displayed in a cornerstone viewport?
function imageShown() {
  const cs = window.cornerstone;
  if (!cs || !cs.getEnabledElements) return false;
  return cs.getEnabledElements().some(({ viewport }) => {
    const rect = viewport.element.getBoundingClientRect();
    return rect.width > 50 && rect.height > 50 && viewport.getCurrentImageId?.() && viewport.getImageData?.();
  });
}

// In the page: did the overlay of the opened series load?
function overlayShown(expect) {
  const busy = /Loading (SEG|SR|RTSTRUCT)/i.test(document.body.innerText);
  if (busy) return false;
  if (expect === 'seg') {
    // loaded, and shown in a viewport (a labelmap representation added to it)
    const service = window.services?.segmentationService;
    const state = window.cornerstoneTools?.segmentation?.state;
    if (!service || !state || service.getSegmentations().length === 0) return false;
    return window.cornerstone.getEnabledElements()
      .some(({ viewport }) => (state.getSegmentationRepresentations(viewport.id) || []).length > 0);
  }
  if (expect === 'sr') {
    const layer = '.viewport-element svg.svg-layer';
    const texts = [...document.querySelectorAll(`${layer} text`)].filter(t => t.textContent.trim());
    const shapes = document.querySelectorAll(`${layer} polyline, ${layer} path, ${layer} polygon`);
    return texts.length > 0 && shapes.length > 0;
  }
  return true;
}

// In the page: the text of an error notification, if OHIF shows one.
function errorToast() {
  const toast = document.querySelector('[data-sonner-toast][data-type="error"]');
  return toast ? toast.innerText.replace(/\s+/g, ' ').trim() : null;
}

// In the page: what the test checks (serialised by puppeteer: self-contained).
function collect() {
  const LAYER = '.viewport-element svg.svg-layer'; // cornerstone's annotation layer
  const cs = window.cornerstone;
  if (!cs || !cs.getEnabledElements) return {};
  const rectOf = el => {
    const r = el.getBoundingClientRect();
    return [r.left, r.top, r.width, r.height];
  };
  const viewports = cs.getEnabledElements()
    .map(({ viewport }) => viewport)
    .filter(vp => vp.element.getBoundingClientRect().width > 50 && vp.getCurrentImageId?.())
    .map(vp => {
      const imageId = vp.getCurrentImageId();
      const rect = vp.element.getBoundingClientRect();
      let corners = null;
      let size = null;
      try {
        const plane = cs.metaData.get('imagePixelModule', imageId);
        size = [plane.columns, plane.rows];
        corners = [[0, 0], [size[0], 0], [0, size[1]]].map(p => {
          const [x, y] = vp.worldToCanvas(cs.utilities.imageToWorldCoords(imageId, p));
          return [rect.left + x, rect.top + y];
        });
      } catch (e) {
        corners = null;
      }
      return { id: vp.id, imageId, rect: rectOf(vp.element), size, corners };
    });
  const svgTexts = [...document.querySelectorAll(`${LAYER} text`)]
    .filter(t => t.textContent.trim())
    .map(t => ({ text: t.textContent.trim(), rect: rectOf(t) }));
  const outlines = [...document.querySelectorAll(`${LAYER} polyline, ${LAYER} polygon, ${LAYER} path`)]
    .filter(e => !e.closest('defs'))
    .map(rectOf);
  const toasts = [...document.querySelectorAll('[data-sonner-toast]')]
    .map(t => ({ type: t.getAttribute('data-type'), text: t.innerText.replace(/\s+/g, ' ').trim() }));
  const services = window.services || {};
  const segmentations = services.segmentationService
    ? services.segmentationService.getSegmentations().map(s => ({
      id: s.segmentationId, label: s.label,
      segments: Object.values(s.segments || {}).filter(Boolean).map(x => x.label),
    }))
    : [];
  const measurements = services.measurementService
    ? services.measurementService.getMeasurements().map(m => ({
      label: m.label, toolName: m.toolName, displayText: m.displayText,
    }))
    : [];
  return { viewports, svgTexts, outlines, toasts, segmentations, measurements };
}

// The analysis screenshot shows the viewports' canvas (image and SEG labelmap)
// and their annotation outlines, nothing else: no viewport overlay texts or
// badges, no toasts, no SR labels nor the dashed lines that link them.
const ANALYSIS = `
  body * { visibility: hidden !important; }
  .viewport-element, .viewport-element * { visibility: visible !important; }
  .viewport-element svg.svg-layer :is(text, text *, line) { visibility: hidden !important; }`;

// Screenshots until two in a row are the same: rendering has settled.
async function stableScreenshot(page, path) {
  let previous = null;
  const deadline = Date.now() + timeout;
  for (;;) {
    const image = await page.screenshot({ type: 'png' });
    if ((previous && image.equals(previous)) || Date.now() > deadline) {
      await page.screenshot({ path, type: 'png' });
      return;
    }
    previous = image;
    await sleep(400);
  }
}

// Wait until a predicate holds in the page. An uncaught error or an error
// logged by the page (OHIF logs and carries on, or its React tree is gone)
// cuts the remaining wait to FATAL_GRACE_MS: some such errors are harmless.
const FATAL_GRACE_MS = 20000;
async function waitInPage(page, state, predicate, arg) {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await page.evaluate(predicate, arg).catch(() => false)) return;
    const toast = await page.evaluate(errorToast).catch(() => null);
    if (toast) throw new Error(`OHIF error: ${toast}`);
    const now = Date.now();
    const limit = state.fatalAt ? Math.min(deadline, state.fatalAt + FATAL_GRACE_MS) : deadline;
    if (now > limit) {
      const why = state.fatalAt && limit < deadline ? ` after page error: ${state.fatal}` : '';
      throw new Error(`waited ${Math.round((now - state.start) / 1000)} s${why}`);
    }
    await sleep(250);
  }
}

async function runShot(browser, shot) {
  const result = { name: shot.name, ok: false, error: null, errors: [] };
  const errors = result.errors;
  const t0 = Date.now();
  const page = await browser.newPage();
  page.setDefaultTimeout(timeout);
  const state = { start: t0, fatalAt: 0, fatal: null };
  const fatal = message => {
    errors.push(message);
    if (!state.fatalAt) Object.assign(state, { fatalAt: Date.now(), fatal: message });
  };
  page.on('pageerror', e => fatal('pageerror: ' + e.message));
  page.on('console', m => {
    if (m.type() === 'error') fatal('console: ' + m.text().slice(0, 300));
    // OHIF's React error boundary ("Something went wrong") logs at debug level
    else if (/Error Boundary/.test(m.text())) fatal('console: ' + m.text().slice(0, 300));
  });
  page.on('requestfailed', r => errors.push('requestfailed: ' + r.url().slice(0, 200)));
  page.on('response', r => {
    if (r.status() >= 400) errors.push(`HTTP ${r.status()} ${r.url().slice(0, 200)}`);
  });
  let stage = 'load';
  try {
    await page.goto(shot.url, { waitUntil: 'domcontentloaded', timeout });
    stage = 'image';
    await waitInPage(page, state, imageShown);
    stage = `overlay (${shot.expect})`;
    await waitInPage(page, state, overlayShown, shot.expect);
    stage = 'settle';
    await page.waitForNetworkIdle({ idleTime: 500, timeout }).catch(() => {});
    await sleep(job.settleMs ?? 1000);
    Object.assign(result, await page.evaluate(collect));
    stage = 'screenshot';
    await stableScreenshot(page, shot.screenshot);
    if (shot.analysisScreenshot) {
      await page.addStyleTag({ content: ANALYSIS });
      await stableScreenshot(page, shot.analysisScreenshot);
    }
    result.ok = true;
  } catch (e) {
    result.error = `${stage}: ${e.message}`;
    try {
      Object.assign(result, await page.evaluate(collect).catch(() => ({})));
      result.bodyText = (await page.evaluate(() => document.body.innerText)).slice(0, 2000);
      await page.screenshot({ path: shot.screenshot, type: 'png' });
    } catch (e2) {
      errors.push('after failure: ' + e2.message);
    }
  } finally {
    result.ms = Date.now() - t0;
    await page.close().catch(() => {});
  }
  return result;
}

const browser = await puppeteer.launch({
  executablePath: job.executablePath,
  headless: true,
  timeout,
  protocolTimeout: timeout * 2,
  args: [
    '--no-sandbox', '--disable-gpu', '--enable-unsafe-swiftshader', '--disable-quic',
    '--no-first-run', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--disable-dev-shm-usage', '--hide-scrollbars', '--mute-audio',
  ],
  defaultViewport: { width: job.width ?? 1280, height: job.height ?? 800, deviceScaleFactor: 1 },
});
// the test kills the browser by this pid if node itself had to be killed
if (job.pidFile) writeFileSync(job.pidFile, String(browser.process()?.pid ?? ''));
const output = { browser: await browser.version(), shots: [] };
try {
  for (const shot of job.shots) {
    output.shots.push(await runShot(browser, shot));
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(output) + '\n');
