// Drives Debian's Chromium (through playwright-core, no downloaded browser) against a running
// `dagster dev`: checks that the asset graph shows the five assets with their edges, launches
// promo_job from the job page, waits for the run to succeed, materializes push_sink and
// triggers each on its own from their asset pages, and saves screenshots.
//
//   DAGSTER_URL=http://127.0.0.1:3000 ARTIFACTS_DIR=artifacts/ui node ui_check.mjs
//
// Prints one JSON line on stdout: {"nodes": [...], "edges": [[from, to], ...], "runId": "...",
// "status": "...", "alone": {"push_sink": {"runId": "...", "status": "..."}, "triggers": ...},
// "plots": <charts drawn in campaign_batch's Plots view>}.
// Exits non-zero, after a screenshot of the page it was on, when a step fails.

import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const url = (process.env.DAGSTER_URL || 'http://127.0.0.1:3000').replace(/\/$/, '');
const artifacts = process.env.ARTIFACTS_DIR || 'artifacts/ui';
const runTimeoutMs = Number(process.env.RUN_TIMEOUT_MS || 420000);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

const EXPECTED_NODES = ['campaign_batch', 'feedback_sink', 'push_sink', 'subscriber_snapshot', 'triggers'];

mkdirSync(artifacts, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), 'promo-ui-chromium-'));

function log(message) {
  process.stderr.write(`[ui_check] ${message}\n`);
}

// Dagster draws edges as SVG paths from the right side of the upstream node's box to the
// left side of the downstream one, at the boxes' vertical centres; nodes are foreignObjects.
function readGraph(expected) {
  // Zoomed out, long names are shortened in the middle ("subscrib…_snapshot").
  const full = (shown) => {
    if (!shown || !shown.includes('…')) return shown;
    const [head, tail] = shown.split('…');
    return expected.find((name) => name.startsWith(head) && name.endsWith(tail)) ?? shown;
  };
  const svg = document.querySelector('svg[class^="AssetGraphExplorer_svgContainer"]');
  if (!svg) return { nodes: [], edges: [] };
  const boxes = [...svg.querySelectorAll(':scope > foreignObject')].map((node) => ({
    // Zoomed in, the name is a tooltip'd label; zoomed out, the box holds just the name.
    name: full(
      node.querySelector('[data-tooltip]')?.getAttribute('data-tooltip') ??
        (node.firstElementChild?.innerText ?? '').split('\n').map((line) => line.trim()).find(Boolean),
    ),
    x: Number(node.getAttribute('x')),
    y: Number(node.getAttribute('y')),
    w: Number(node.getAttribute('width')),
    h: Number(node.getAttribute('height')),
  }));
  const edges = [...svg.querySelectorAll(':scope > path[marker-end]')].map((path) => {
    const numbers = path.getAttribute('d').match(/-?[\d.]+/g).map(Number);
    const [x1, y1] = numbers.slice(0, 2);
    const [x2, y2] = numbers.slice(-2);
    const from = boxes.find((b) => Math.abs(b.x + b.w - x1) < 3 && Math.abs(b.y + b.h / 2 - y1) < 3);
    const to = boxes.find((b) => Math.abs(b.x - x2) < 8 && Math.abs(b.y + b.h / 2 - y2) < 3);
    return [from?.name ?? `?(${x1},${y1})`, to?.name ?? `?(${x2},${y2})`];
  });
  // An edge may be drawn twice (its line and a wider hover target): keep one of each.
  const unique = [...new Map(edges.map((e) => [e.join('->'), e])).values()];
  return { nodes: boxes.map((b) => b.name).sort(), edges: unique.sort() };
}

const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  viewport: { width: 1600, height: 1000 },
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
const page = context.pages()[0] ?? (await context.newPage());
page.setDefaultTimeout(60000);
// The first visit shows a "Join the Dagster community" dialog; dismiss it whenever it shows.
await page.addLocatorHandler(page.getByRole('button', { name: 'Skip', exact: true }), async () => {
  await page.getByRole('button', { name: 'Skip', exact: true }).click();
});

async function shot(name) {
  const path = join(artifacts, `${name}.png`);
  await page.screenshot({ path });
  log(`screenshot ${path}`);
}

// Asset nodes show "Loading…" until their latest events arrive; screenshots wait for that.
async function settled() {
  await page
    .locator('[class^="AssetNode_assetNodeContainer"]', { hasText: 'Loading' })
    .first()
    .waitFor({ state: 'detached', timeout: 30000 })
    .catch(() => log('asset nodes still loading; screenshot anyway'));
}

let failed = false;
try {
  log(`asset graph at ${url}/asset-groups`);
  await page.goto(`${url}/asset-groups`);
  // Boxes first appear empty; poll until every one shows its asset's name and the edges are
  // drawn (the community
  // dialog is dismissed here too: locator handlers only run during actions).
  const deadline = Date.now() + 120000;
  for (;;) {
    const skip = page.getByRole('button', { name: 'Skip', exact: true });
    if (await skip.isVisible()) await skip.click({ timeout: 2000 }).catch(() => {});
    const { nodes, edges } = await page.evaluate(readGraph, EXPECTED_NODES);
    // Edges are drawn after the boxes: wait for at least a chain through all of them.
    const drawn = edges.length >= EXPECTED_NODES.length - 1;
    if (nodes.length >= EXPECTED_NODES.length && nodes.every(Boolean) && drawn) break;
    if (Date.now() > deadline) throw new Error(`asset graph shows ${JSON.stringify(nodes)}`);
    await page.waitForTimeout(500);
  }
  await settled();
  const graph = await page.evaluate(readGraph, EXPECTED_NODES);
  await shot('01-asset-graph');
  log(`nodes ${graph.nodes.join(', ')}; edges ${graph.edges.map((e) => e.join('->')).join(', ')}`);

  log('job page, Materialize all');
  await page.goto(`${url}/jobs`);
  await page.locator('a[href$="/jobs/promo_job"]').first().click();
  const materialize = page.getByRole('button', { name: 'Materialize all' });
  await materialize.waitFor();
  await settled();
  await shot('02-job');
  await materialize.click();
  const view = page.getByRole('link', { name: 'View', exact: true }).and(page.locator('a[href^="/runs/"]'));
  await view.waitFor({ timeout: 60000 });
  const runId = (await view.getAttribute('href')).split('/').pop();
  log(`launched run ${runId}`);
  await view.click();
  await page.waitForURL(`**/runs/${runId}**`);

  const done = page.locator('text=/^(Success|Failure|Canceled)$/').first();
  await done.waitFor({ timeout: runTimeoutMs });
  const status = (await done.innerText()).trim();
  await page.getByText('RUN_SUCCESS').or(page.getByText('RUN_FAILURE')).first().waitFor().catch(() => {});
  await shot('03-run');
  log(`run ${runId}: ${status}`);

  await page.goto(`${url}/assets/push_sink?view=checks`);
  await page.getByText('triggers_in_both_sinks').first().waitFor();
  await shot('04-push-sink-checks');
  // campaign_batch's numbers plotted over its materializations: the overview's Metadata
  // section, switched from Table to Plots and scrolled to the top of the page.
  await page.goto(`${url}/assets/campaign_batch`);
  const plotsButton = page.getByRole('button', { name: 'Plots' }).first();
  await plotsButton.click();
  await page.getByText('Loading plots…').waitFor({ state: 'detached' }).catch(() => {});
  await page.getByText('messages_read').first().waitFor();
  await page.waitForTimeout(1000); // the charts' own entry animation
  await plotsButton.evaluate((button) => button.scrollIntoView({ block: 'start' }));
  const plots = await page.locator('canvas').count();
  log(`campaign_batch plots: ${plots} charts`);
  await shot('05-campaign-batch');

  // Any asset on its own, as a Dagster user first tries: each reads its inputs from durable
  // state (Postgres, the checkpoint), so a run of just that asset succeeds.
  const alone = {};
  for (const name of ['push_sink', 'triggers']) {
    log(`asset ${name}: Materialize alone`);
    await page.goto(`${url}/assets/${name}`);
    const button = page.getByRole('button', { name: /Materialize$/ }).first();
    await button.waitFor();
    await button.click();
    const link = page.getByRole('link', { name: 'View', exact: true }).and(page.locator('a[href^="/runs/"]'));
    await link.waitFor({ timeout: 60000 });
    const id = (await link.getAttribute('href')).split('/').pop();
    await page.goto(`${url}/runs/${id}`);
    const end = page.locator('text=/^(Success|Failure|Canceled)$/').first();
    await end.waitFor({ timeout: runTimeoutMs });
    alone[name] = { runId: id, status: (await end.innerText()).trim() };
    log(`run ${id} of ${name} alone: ${alone[name].status}`);
    await shot(`07-${name}-alone`);
  }

  // The sensor's ticks: what it launched, and why it skipped.
  await page.goto(`${url}/automation`);
  await page.locator('a[href*="/sensors/promo_work_sensor"]').first().click();
  await page.getByText('promo_work_sensor').first().waitFor();
  await page.waitForLoadState('networkidle').catch(() => {});
  await shot('06-sensor');

  process.stdout.write(`${JSON.stringify({ ...graph, runId, status, alone, plots })}\n`);
  failed = status !== 'Success' || Object.values(alone).some((run) => run.status !== 'Success');
} catch (error) {
  failed = true;
  log(`FAILED: ${error.message}`);
  await shot('failure').catch(() => {});
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
