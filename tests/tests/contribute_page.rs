//! The contribute page (`www/index.html`) in headless Chromium over WebDriver: clicked and read
//! the way a person uses it, against a real `tessera serve` running real map-basic jobs.
//! Screenshots land in `tests/screenshots/` (gitignored).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tessera_e2e::webdriver::{Browser, BUSY_PROGRAM, RECORD_EVENTS};
use tessera_e2e::Scheduler;

/// Deploys `slices` slices of [`BUSY_PROGRAM`], each busy for `ms`; returns the job id.
fn busy_job(scheduler: &Scheduler, slices: u64, ms: u64) -> String {
    let program = scheduler.file("busy.js", BUSY_PROGRAM);
    scheduler.deploy(&[&program, "--range", &format!("0:{slices}"), "--arg", &ms.to_string(), "--name", "busy"])
}

/// A browser on the scheduler's contribute page, with the page's events recorded.
fn open_page(scheduler: &Scheduler, width: u32, height: u32) -> Browser {
    let browser = Browser::open(width, height);
    browser.goto(&format!("{}/", scheduler.url));
    browser.wait_for(
        Duration::from_secs(20),
        "the page's script",
        "window.Tessera && !document.getElementById('start').disabled",
        "document.readyState",
    );
    browser.js(RECORD_EVENTS, vec![]);
    browser
}

/// Sets the cores control as a person does (the slider's value, then its input and change events).
fn set_cores(browser: &Browser, cores: u32) {
    browser.js(
        "const input = document.getElementById('cores'); input.value = String(arguments[0]);
         input.dispatchEvent(new Event('input', { bubbles: true })); input.dispatchEvent(new Event('change', { bubbles: true }));",
        vec![json!(cores)],
    );
}

fn stats(browser: &Browser) -> Value {
    browser.js("return Tessera.stats();", vec![])
}

/// How many `sliceStart` events the page has seen.
fn starts(browser: &Browser) -> u64 {
    browser.js("return __test.events.filter((e) => e.event === 'sliceStart').length;", vec![]).as_u64().unwrap_or(0)
}

/// Waits until no slice runs in the page (the ones running at a pause finish).
fn wait_drained(browser: &Browser) {
    browser.wait_for(
        Duration::from_secs(15),
        "running slices to finish",
        "Tessera.stats().running === 0 && __test.running.size === 0",
        "JSON.stringify(Tessera.stats())",
    );
}

/// Makes the page believe its tab is hidden (`true`) or visible again, as the browser would say.
fn set_hidden(browser: &Browser, hidden: bool) {
    browser.js(
        "const hidden = arguments[0];
         Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (hidden ? 'hidden' : 'visible') });
         Object.defineProperty(document, 'hidden', { configurable: true, get: () => hidden });
         document.dispatchEvent(new Event('visibilitychange'));",
        vec![json!(hidden)],
    );
}

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn nothing_runs_before_start_then_slices_complete_and_the_totals_update() {
    let scheduler = Scheduler::start();
    let job = busy_job(&scheduler, 12, 100);
    let browser = open_page(&scheduler, 1280, 800);

    // Consent first: loading the page downloads no worker core, opens no sandbox, leases nothing.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(stats(&browser)["state"], "stopped");
    assert_eq!(browser.text("#state"), "Stopped");
    let fetched = browser.js(
        "return performance.getEntriesByType('resource').map((r) => r.name).filter((n) => n.includes('.wasm') || n.includes('/v1/'));",
        vec![],
    );
    assert_eq!(fetched, json!([]), "nothing but the page itself is fetched before Start");
    assert_eq!(browser.js("return document.querySelectorAll('iframe').length;", vec![]), json!(0));
    assert_eq!(scheduler.status(&job)["done"], 0);

    // The default: cores − 1, and no more sandboxes than half the device's memory holds at
    // ≈ 250 MB each where the browser tells it.
    let defaults = browser.js_async(
        "const done = arguments[arguments.length - 1];
         import('/tessera.js').then((m) => done([
           m.defaultCores({ hardwareConcurrency: 8 }), m.defaultCores({ hardwareConcurrency: 16, deviceMemory: 2 }),
           m.defaultCores({ hardwareConcurrency: 16, deviceMemory: 8 }), m.defaultCores({ hardwareConcurrency: 4, deviceMemory: 0.5 }),
           m.defaultCores({ hardwareConcurrency: 1 }), m.defaultCores({})]));",
        vec![],
    );
    assert_eq!(defaults, json!([7, 4, 15, 1, 1, 1]));
    let max = browser.js("return [document.getElementById('cores').max, navigator.hardwareConcurrency];", vec![]);
    assert_eq!(
        max[0].as_str().unwrap().parse::<u64>().unwrap(),
        max[1].as_u64().unwrap(),
        "the slider stops at the machine's cores"
    );

    set_cores(&browser, 2);
    browser.click("#start");
    browser.wait_for(
        Duration::from_secs(20),
        "the Working state",
        "Tessera.stats().state !== 'starting' && Tessera.stats().state !== 'stopped'",
        "JSON.stringify(Tessera.stats())",
    );
    scheduler.wait_for_state(&job, "complete", MINUTE);
    // A JavaScript job needs nothing of Pyodide: the sandbox started ahead for Python went before
    // it asked for the interpreter (≈ 10 MB).
    let interpreter = browser.js(
        "return performance.getEntriesByType('resource').map((r) => r.name).filter((n) => n.endsWith('/pyodide.asm.wasm'));",
        vec![],
    );
    assert_eq!(interpreter, json!([]), "a page running JavaScript jobs only downloaded the interpreter");

    browser.wait_for(
        Duration::from_secs(10),
        "12 slices done on the page",
        "document.getElementById('done').textContent === '12'",
        "document.getElementById('done').textContent",
    );
    let shown = stats(&browser);
    assert_eq!(shown["slicesDone"], 12, "{shown}");
    assert_eq!(shown["sliceErrors"], 0, "{shown}");
    assert!(shown["computeMs"].as_u64().unwrap() >= 12 * 90, "each slice is busy 100 ms: {shown}");
    assert_ne!(browser.text("#compute"), "0 s");
    assert_eq!(browser.text("#errors"), "0");
    assert!(browser.text("#rate").starts_with("12 slices"), "{}", browser.text("#rate"));
    // A card per sandbox; each names the job it served.
    let cards = browser.js("return [...document.querySelectorAll('.card .job-id')].map((e) => e.textContent);", vec![]);
    assert!(cards.as_array().is_some_and(|cards| !cards.is_empty()), "{cards}");
    assert!(cards.as_array().unwrap().iter().any(|card| card.as_str().unwrap_or_default().contains(&job)), "{cards}");
    // The progress the program reported reached the page.
    let progress = browser
        .js("return __test.events.filter((e) => e.event === 'sliceProgress').map((e) => e.payload.progress);", vec![]);
    assert!(progress.as_array().unwrap().iter().any(|p| p == &json!(0.5)), "{progress}");

    // Credits: shown once the scheduler's ledger has them.
    let credits = browser.wait_for(
        Duration::from_secs(10),
        "credits on the page",
        "document.getElementById('credits').dataset.value",
        "document.getElementById('credits').outerHTML",
    );
    let credits: f64 = credits.as_str().unwrap().parse().unwrap();
    assert!(credits >= 12.0 * 0.09, "12 slices of ≈ 100 ms credit ≈ 1.2 s: {credits}");
    assert_ne!(browser.text("#credits"), "—");

    browser.click("#stop");
    browser.wait_for(
        Duration::from_secs(15),
        "Stopped",
        "Tessera.stats().state === 'stopped'",
        "JSON.stringify(Tessera.stats())",
    );
    assert_eq!(browser.text("#state"), "Stopped");
}

#[test]
fn pause_stops_new_slices_and_resume_continues() {
    let scheduler = Scheduler::start();
    let job = busy_job(&scheduler, 400, 150);
    let browser = open_page(&scheduler, 1280, 800);
    set_cores(&browser, 1);
    browser.click("#start");
    browser.wait_for(MINUTE, "3 slices done", "Tessera.stats().slicesDone >= 3", "JSON.stringify(Tessera.stats())");

    browser.click("#pause");
    browser.wait_for(
        Duration::from_secs(5),
        "Paused",
        "Tessera.stats().state === 'paused'",
        "JSON.stringify(Tessera.stats())",
    );
    assert_eq!(browser.text("#pause"), "Resume");
    assert!(browser.text("#state").starts_with("Paused"), "{}", browser.text("#state"));
    wait_drained(&browser);
    let before = starts(&browser);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(starts(&browser), before, "no slice starts while paused: {}", stats(&browser));

    browser.click("#pause");
    browser.wait_for(
        Duration::from_secs(15),
        "slices again after Resume",
        &format!("__test.events.filter((e) => e.event === 'sliceStart').length > {before}"),
        "JSON.stringify(Tessera.stats())",
    );
    assert_eq!(browser.text("#pause"), "Pause");
    assert_eq!(stats(&browser)["state"], "working");
    assert!(scheduler.status(&job)["done"].as_u64().unwrap() < 400);
}

#[test]
fn the_cores_control_changes_how_many_sandboxes_run() {
    let scheduler = Scheduler::start();
    busy_job(&scheduler, 600, 300);
    let browser = open_page(&scheduler, 1280, 800);
    set_cores(&browser, 1);
    browser.click("#start");
    browser.wait_for(MINUTE, "3 slices done", "Tessera.stats().slicesDone >= 3", "JSON.stringify(Tessera.stats())");
    assert_eq!(browser.js("return __test.maxRunning;", vec![]), json!(1), "one core, one slice at a time");

    set_cores(&browser, 2);
    assert_eq!(stats(&browser)["cores"], 2);
    browser.wait_for(
        Duration::from_secs(30),
        "two slices at once",
        "__test.maxRunning === 2",
        "JSON.stringify(Tessera.stats())",
    );
    browser.wait_for(
        Duration::from_secs(5),
        "two sandbox cards",
        "document.querySelectorAll('.card').length === 2",
        "document.getElementById('sandboxes').innerHTML",
    );

    // Back to one: one slice at a time again. The core keeps at most one idle sandbox beyond
    // the count (its spare allowance), so there may be two cards, one of them idle.
    set_cores(&browser, 1);
    browser.wait_for(
        Duration::from_secs(30),
        "one sandbox busy",
        "Tessera.stats().sandboxes.filter((s) => s.slice !== null).length <= 1 && __test.running.size <= 1",
        "JSON.stringify(Tessera.stats())",
    );
    browser.js("__test.maxRunning = __test.running.size;", vec![]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(browser.js("return __test.maxRunning;", vec![]), json!(1), "back to one slice at a time");
    let shown = browser.js(
        "return { cards: document.querySelectorAll('.card').length, sandboxes: Tessera.stats().sandboxes.length,
                  idle: Tessera.stats().sandboxes.filter((s) => s.slice === null).length };",
        vec![],
    );
    assert_eq!(shown["cards"], shown["sandboxes"], "a card per sandbox: {shown}");
    assert!(shown["sandboxes"].as_u64().unwrap() <= 2, "one working sandbox and at most one idle: {shown}");
}

#[test]
fn a_hidden_tab_pauses_and_the_setting_is_remembered() {
    let scheduler = Scheduler::start();
    busy_job(&scheduler, 400, 150);
    let browser = open_page(&scheduler, 1280, 800);
    set_cores(&browser, 1);
    browser.click("#start");
    browser.wait_for(MINUTE, "2 slices done", "Tessera.stats().slicesDone >= 2", "JSON.stringify(Tessera.stats())");

    set_hidden(&browser, true);
    browser.wait_for(
        Duration::from_secs(5),
        "paused by the hidden tab",
        "Tessera.stats().state === 'paused'",
        "JSON.stringify(Tessera.stats())",
    );
    assert_eq!(stats(&browser)["pausedBy"], json!(["hidden"]));
    assert_eq!(
        browser.js("return document.getElementById('state').textContent;", vec![]),
        json!("Paused (tab hidden)")
    );
    wait_drained(&browser);
    let before = starts(&browser);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(starts(&browser), before, "no slice starts while the tab is hidden");

    set_hidden(&browser, false);
    browser.wait_for(
        Duration::from_secs(15),
        "slices again once visible",
        &format!("__test.events.filter((e) => e.event === 'sliceStart').length > {before}"),
        "JSON.stringify(Tessera.stats())",
    );
    assert_eq!(stats(&browser)["state"], "working");

    // Turned off, hiding the tab changes nothing; the choice survives a reload.
    browser.click("#pause-hidden");
    set_hidden(&browser, true);
    let before = starts(&browser);
    browser.wait_for(
        Duration::from_secs(10),
        "slices while hidden with the setting off",
        &format!("__test.events.filter((e) => e.event === 'sliceStart').length > {before} + 1"),
        "JSON.stringify(Tessera.stats())",
    );
    assert_ne!(stats(&browser)["state"], "paused");
    browser.goto(&format!("{}/", scheduler.url));
    browser.wait_for(Duration::from_secs(20), "the page again", "!!window.Tessera", "document.readyState");
    assert_eq!(browser.js("return document.getElementById('pause-hidden').checked;", vec![]), json!(false));
    assert_eq!(browser.js("return document.getElementById('pause-battery').checked;", vec![]), json!(true));
}

/// The sandbox's busy fraction over `seconds` (one sandbox): the union of the slices' spans
/// `[end − ms, end]`, clipped to the window, over the window's length. A union, not a sum: a
/// slice queued inside the sandbox behind another (pipelining) counts its wait in its `ms`.
fn busy_fraction(browser: &Browser, seconds: u64) -> (f64, u64) {
    let from = browser.js("return performance.now();", vec![]).as_f64().unwrap();
    std::thread::sleep(Duration::from_secs(seconds));
    let measured = browser.js(
        "const [from] = arguments; const to = performance.now();
         const spans = __test.events.filter((e) => e.event === 'sliceEnd' && e.payload.outcome === 'ok')
           .map((e) => [Math.max(from, e.at - e.payload.ms), Math.min(to, e.at)]).filter(([a, b]) => b > a)
           .sort((x, y) => x[0] - y[0]);
         let busy = 0, reach = from;
         for (const [a, b] of spans) { if (b > reach) { busy += b - Math.max(a, reach); reach = b; } }
         return { busy: busy / (to - from), slices: spans.length };",
        vec![json!(from)],
    );
    (measured["busy"].as_f64().unwrap(), measured["slices"].as_u64().unwrap())
}

#[test]
fn half_the_cpu_share_roughly_halves_busy_time() {
    let scheduler = Scheduler::start();
    busy_job(&scheduler, 2000, 200);
    let browser = open_page(&scheduler, 1280, 800);
    set_cores(&browser, 1);
    browser.click("#start");
    browser.wait_for(MINUTE, "3 slices done", "Tessera.stats().slicesDone >= 3", "JSON.stringify(Tessera.stats())");
    let (full, full_slices) = busy_fraction(&browser, 8);

    browser.click("input[name='cpu-share'][value='0.5']");
    assert_eq!(stats(&browser)["cpuShare"], 0.5);
    std::thread::sleep(Duration::from_secs(2));
    let (half, half_slices) = busy_fraction(&browser, 10);
    let ratio = half / full;
    println!("busy at 100 %: {full:.2} ({full_slices} slices); at 50 %: {half:.2} ({half_slices}); ratio {ratio:.2}");
    assert!(
        (0.3..=0.7).contains(&ratio),
        "at 50 % the sandbox is busy {half:.2} of the time ({half_slices} slices) vs {full:.2} at 100 % ({full_slices} slices): ratio {ratio:.2}"
    );
    assert_eq!(
        browser.js("return JSON.parse(localStorage.getItem('tessera.settings')).cpuShare;", vec![]),
        json!(0.5),
        "the share is remembered"
    );
}

#[test]
fn screenshots_at_desktop_and_phone_width_idle_and_working() {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("screenshots");
    let scheduler = Scheduler::start();
    let browser = open_page(&scheduler, 1280, 800);
    browser.viewport(1280, 800, false);
    browser.screenshot(&folder.join("desktop-idle.png"), false);
    browser.viewport(390, 844, true);
    browser.screenshot(&folder.join("phone-idle.png"), false);
    browser.screenshot(&folder.join("phone-idle-full.png"), true);
    // Nothing may overflow sideways at phone width.
    assert_eq!(browser.js("return document.documentElement.scrollWidth <= window.innerWidth;", vec![]), json!(true));

    busy_job(&scheduler, 2000, 700);
    browser.viewport(1280, 800, false);
    set_cores(&browser, 2);
    browser.click("#start");
    browser.wait_for(
        MINUTE,
        "two slices running after a few done",
        "Tessera.stats().slicesDone >= 6 && Tessera.stats().running === 2",
        "JSON.stringify(Tessera.stats())",
    );
    std::thread::sleep(Duration::from_millis(400));
    browser.screenshot(&folder.join("desktop-working.png"), false);
    browser.screenshot(&folder.join("desktop-working-full.png"), true);
    browser.viewport(390, 844, true);
    std::thread::sleep(Duration::from_millis(400));
    browser.screenshot(&folder.join("phone-working.png"), false);
    browser.screenshot(&folder.join("phone-working-full.png"), true);
    assert_eq!(browser.js("return document.documentElement.scrollWidth <= window.innerWidth;", vec![]), json!(true));
}
