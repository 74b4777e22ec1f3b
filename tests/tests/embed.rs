//! The embed (`www/embed.js`) on a host page served from another loopback port than the
//! scheduler — another origin — in headless Chromium over WebDriver: started and stopped through
//! `window.Tessera`, every documented event in order with its documented payload, and the host
//! page's globals and styles untouched either way.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tessera_e2e::webdriver::{Browser, HostPage, BUSY_PROGRAM, RECORD_EVENTS};
use tessera_e2e::Scheduler;

/// A host page on its own origin: its own styles and globals, a snapshot of its globals taken
/// before the embed runs (kept in an attribute, so the snapshot adds no global), then the tag.
fn host_page(scheduler: &Scheduler, extra_css: &str, attributes: &str) -> HostPage {
    HostPage::serve(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>A host page</title>
<style>p.host {{ color: rgb(10, 20, 30); font-size: 17px; margin: 3px; }} {extra_css}</style>
<script>var hostGlobal = 1; document.documentElement.dataset.globalsBefore = JSON.stringify(Object.keys(window));</script>
<script src="{}/embed.js" {attributes}></script>
</head><body><p class="host" id="host">The host's own text.</p><button id="host-button">Host button</button></body></html>"#,
        scheduler.url
    ))
}

/// What a host page can observe of its own styles: a rule's computed style, its style sheets and
/// its head.
const HOST_STYLE: &str = "const p = getComputedStyle(document.getElementById('host'));
    const b = getComputedStyle(document.getElementById('host-button'));
    return { color: p.color, fontSize: p.fontSize, margin: p.margin, button: b.color + ' ' + b.fontSize + ' ' + b.display,
             sheets: document.styleSheets.length, head: document.head.children.length,
             styles: document.querySelectorAll('style, link').length };";

/// Globals now that were not there before the embed ran. Two are the harness's own:
/// `window.__test` (the event recorder) and `ret_nodes`, which ChromeDriver's script wrapper
/// assigns without declaring it on every Execute Script. Frame indices (`window[0]` …: the
/// sandbox frames, while they exist) are not globals anyone defines; they must match the frames.
fn new_globals(browser: &Browser) -> BTreeSet<String> {
    let frames = browser.js("return [window.length, document.querySelectorAll('iframe').length];", vec![]);
    assert_eq!(frames[0], frames[1], "every window index is one of the page's frames");
    let value = browser.js(
        "const before = new Set(JSON.parse(document.documentElement.dataset.globalsBefore));
         return Object.keys(window).filter((key) => !before.has(key) && key !== '__test' && key !== 'ret_nodes'
           && !/^[0-9]+$/.test(key));",
        vec![],
    );
    value.as_array().unwrap().iter().map(|key| key.as_str().unwrap().to_string()).collect()
}

/// The keys of an event payload, sorted.
fn keys(payload: &Value) -> Vec<String> {
    let mut keys: Vec<String> = payload.as_object().map(|object| object.keys().cloned().collect()).unwrap_or_default();
    keys.sort();
    keys
}

fn sorted(keys: &[&str]) -> Vec<String> {
    let mut keys: Vec<String> = keys.iter().map(|key| key.to_string()).collect();
    keys.sort();
    keys
}

#[test]
fn an_embed_on_another_origin_starts_through_window_tessera_and_reports_every_event() {
    let mut scheduler = Scheduler::start();
    let program = scheduler.file("busy.js", BUSY_PROGRAM);
    let job = scheduler.deploy(&[&program, "--range", "0:6", "--arg", "100", "--name", "embedded"]);
    let host = host_page(&scheduler, "", r#"data-cores="1" data-autostart="false""#);
    assert_ne!(host.url, format!("{}/", scheduler.url));

    let browser = Browser::open(1280, 800);
    browser.goto(&host.url);
    browser.wait_for(Duration::from_secs(10), "window.Tessera", "!!window.Tessera", "Object.keys(window).join()");
    let style_before = browser.js(HOST_STYLE, vec![]);

    // Loaded, it starts nothing: no worker core fetched, no frame, no element, stopped.
    std::thread::sleep(Duration::from_secs(1));
    let api = browser.js(
        "return { frozen: Object.isFrozen(Tessera), methods: Object.keys(Tessera).sort(), stats: Tessera.stats(),
                  frames: document.querySelectorAll('iframe').length, body: document.body.children.length,
                  fetched: performance.getEntriesByType('resource').map((r) => r.name)
                    .filter((n) => n.startsWith(arguments[0]) && !n.endsWith('/embed.js')) };",
        vec![json!(scheduler.url)],
    );
    assert_eq!(api["frozen"], true, "{api}");
    assert_eq!(
        api["methods"],
        json!(["off", "on", "pause", "resume", "setCores", "setCpuShare", "start", "stats", "stop"]),
        "{api}"
    );
    assert_eq!(api["stats"]["state"], "stopped", "{api}");
    assert_eq!(api["stats"]["cores"], 1, "data-cores is the default: {api}");
    assert_eq!(api["frames"], 0, "{api}");
    assert_eq!(api["body"], 2, "no element added: {api}");
    assert_eq!(api["fetched"], json!([]), "nothing downloaded before start: {api}");
    assert_eq!(scheduler.status(&job)["done"], 0);
    let unknown = browser
        .js("try { Tessera.on('slice_end', () => {}); return 'accepted'; } catch (e) { return e.name; }", vec![]);
    assert_eq!(unknown, "TypeError", "an unknown event name is refused, not silently ignored");

    // Start through the API; the job runs; stop once its credits are in.
    browser.js(RECORD_EVENTS, vec![]);
    let started = browser.js_async(
        "const done = arguments[arguments.length - 1];
         Tessera.start({ cores: 1 }).then(() => done('started'), (e) => done('failed: ' + e));",
        vec![],
    );
    assert_eq!(started, "started");
    scheduler.wait_for_state(&job, "complete", Duration::from_secs(60));
    browser.wait_for(
        Duration::from_secs(15),
        "a credit event",
        "__test.events.some((e) => e.event === 'credit')",
        "JSON.stringify(__test.events.map((e) => e.event))",
    );
    browser.js("Tessera.stop();", vec![]);
    browser.wait_for(
        Duration::from_secs(15),
        "the stop event",
        "__test.events.some((e) => e.event === 'stop')",
        "JSON.stringify(__test.events.map((e) => e.event))",
    );

    // An error in plain words: the scheduler goes away, a new start cannot reach it.
    scheduler.kill();
    browser.js("Tessera.start();", vec![]);
    browser.wait_for(
        Duration::from_secs(30),
        "an error event",
        "__test.events.some((e) => e.event === 'error')",
        "JSON.stringify(__test.events.map((e) => e.event))",
    );
    browser.js("Tessera.stop();", vec![]);
    browser.wait_for(
        Duration::from_secs(15),
        "the second stop",
        "__test.events.filter((e) => e.event === 'stop').length === 2",
        "JSON.stringify(__test.events.map((e) => e.event))",
    );

    let events = browser.js("return __test.events;", vec![]);
    let events = events.as_array().unwrap();
    let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    let first =
        |name: &str| names.iter().position(|n| *n == name).unwrap_or_else(|| panic!("no {name} event: {names:?}"));
    let order = ["start", "sliceStart", "sliceProgress", "sliceEnd", "credit", "stop", "error"];
    for pair in order.windows(2) {
        assert!(first(pair[0]) < first(pair[1]), "{} before {}: {names:?}", pair[0], pair[1]);
    }
    // The states of one run, in order: starting → working … → stopped.
    let states: Vec<&str> =
        events.iter().filter(|e| e["event"] == "state").map(|e| e["payload"]["state"].as_str().unwrap()).collect();
    assert_eq!(states.first(), Some(&"starting"), "{states:?}");
    assert!(states.contains(&"working"), "{states:?}");
    assert!(states.contains(&"stopped"), "{states:?}");
    assert!(first("state") < first("start"), "state 'starting' comes first: {names:?}");

    let documented: [(&str, &[&str]); 8] = [
        ("start", &["cores", "cpuShare", "contributor", "scheduler"]),
        ("state", &["state", "previous", "pausedBy"]),
        ("sliceStart", &["job", "slice", "sandbox"]),
        ("sliceProgress", &["job", "slice", "sandbox", "progress"]),
        ("sliceEnd", &["job", "slice", "sandbox", "outcome", "ms"]),
        ("credit", &["contributor", "slices", "computeMs", "credits", "sinceMs"]),
        ("error", &["kind", "message", "detail"]),
        ("stop", &["reason"]),
    ];
    for (name, fields) in documented {
        for event in events.iter().filter(|e| e["event"] == name) {
            assert_eq!(keys(&event["payload"]), sorted(fields), "{name} payload: {}", event["payload"]);
        }
    }
    let payload = |name: &str| &events[first(name)]["payload"];
    assert_eq!(payload("start")["cores"], 1);
    assert_eq!(payload("start")["cpuShare"], 1.0);
    assert_eq!(payload("start")["scheduler"], scheduler.url.as_str());
    let contributor = payload("start")["contributor"].as_str().unwrap().to_string();
    assert_eq!(payload("sliceStart")["job"], job.as_str());
    assert_eq!(payload("sliceProgress")["progress"], 0.5);
    assert_eq!(payload("sliceEnd")["outcome"], "ok");
    assert!(payload("sliceEnd")["ms"].as_u64().unwrap() >= 90, "{}", payload("sliceEnd"));
    assert_eq!(payload("credit")["contributor"], contributor.as_str());
    assert_eq!(payload("stop")["reason"], "stopped");
    let ends: Vec<&Value> = events.iter().filter(|e| e["event"] == "sliceEnd").collect();
    assert_eq!(ends.len(), 6, "every slice ended once here");
    assert_eq!(payload("error")["kind"], "schedulerUnreachable", "{}", payload("error"));
    let message = payload("error")["message"].as_str().unwrap();
    assert!(message.starts_with("Cannot reach the Tessera server"), "plain words: {message}");

    // The host page: one new global (`Tessera`), its styles and head as they were.
    assert_eq!(new_globals(&browser), BTreeSet::from(["Tessera".to_string()]));
    assert_eq!(browser.js(HOST_STYLE, vec![]), style_before);
    assert_eq!(browser.js("return hostGlobal;", vec![]), json!(1));
}

#[test]
fn the_badge_lives_in_a_shadow_dom_and_no_css_crosses_either_way() {
    let scheduler = Scheduler::start();
    let program = scheduler.file("busy.js", BUSY_PROGRAM);
    scheduler.deploy(&[&program, "--range", "0:400", "--arg", "200", "--name", "badge"]);
    // A hostile host stylesheet: it must not reach the badge, and the badge's must not reach it.
    let hostile = "* { color: rgb(255, 0, 0) !important; font-size: 40px !important; } \
                   button { display: none !important; } div { border: 5px solid blue !important; }";
    let host = host_page(&scheduler, hostile, r#"data-cores="1" data-ui="badge""#);
    let browser = Browser::open(1280, 800);
    browser.viewport(1280, 800, false);
    browser.goto(&host.url);
    browser.wait_for(
        Duration::from_secs(10),
        "the badge",
        "document.querySelector('tessera-badge')",
        "document.body.innerHTML",
    );
    let style_before = browser.js(HOST_STYLE, vec![]);
    assert_eq!(style_before["color"], "rgb(255, 0, 0)", "the host's own rules apply to the host: {style_before}");

    let badge = "const root = document.querySelector('tessera-badge').shadowRoot;
        const box = root.querySelector('.badge'); const button = root.querySelector('button');
        const b = getComputedStyle(box); const k = getComputedStyle(button);
        return { color: b.color, fontSize: b.fontSize, border: b.borderTopWidth, button: k.display, text: box.textContent.trim(),
                 state: box.dataset.state };";
    let shown = browser.js(badge, vec![]);
    assert_eq!(shown["color"], "rgb(29, 33, 37)", "the host's CSS does not reach into the badge: {shown}");
    assert_eq!(shown["fontSize"], "13px", "{shown}");
    assert_eq!(shown["border"], "0px", "{shown}");
    assert_ne!(shown["button"], "none", "{shown}");
    assert_eq!(shown["state"], "stopped", "the badge starts nothing by itself: {shown}");

    browser.js("document.querySelector('tessera-badge').shadowRoot.querySelector('button').click();", vec![]);
    browser.wait_for(
        Duration::from_secs(60),
        "slices through the badge's button",
        "Tessera.stats().slicesDone >= 2",
        "JSON.stringify(Tessera.stats())",
    );
    std::thread::sleep(Duration::from_millis(300));
    let shown = browser.js(badge, vec![]);
    assert_eq!(shown["state"], "working", "{shown}");
    assert!(shown["text"].as_str().unwrap().contains("Computing"), "{shown}");
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("screenshots");
    browser.screenshot(&folder.join("embed-badge.png"), false);

    assert_eq!(browser.js(HOST_STYLE, vec![]), style_before, "the badge's CSS does not reach the host");
    assert_eq!(new_globals(&browser), BTreeSet::from(["Tessera".to_string()]));
    browser.js("document.querySelector('tessera-badge').shadowRoot.querySelector('button').click();", vec![]);
    browser.wait_for(
        Duration::from_secs(15),
        "stopped through the badge",
        "Tessera.stats().state === 'stopped'",
        "JSON.stringify(Tessera.stats())",
    );
}

#[test]
fn the_embed_works_under_the_strict_csp_the_readme_documents() {
    let scheduler = Scheduler::start();
    let program = scheduler.file("busy.js", BUSY_PROGRAM);
    scheduler.deploy(&[&program, "--range", "0:400", "--arg", "200", "--name", "strict"]);
    // The README's policy, with a nonce for the host's own inline script and style.
    let nonce = "t3ss3ra-test-nonce";
    let policy = format!(
        "default-src 'none'; script-src 'nonce-{nonce}' {s} 'wasm-unsafe-eval'; connect-src {s}; frame-src {s}; \
         style-src 'nonce-{nonce}'; img-src 'none'",
        s = scheduler.url
    );
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>A strict host</title>
<style nonce="{nonce}">p.host {{ color: rgb(10, 20, 30); }}</style>
<script nonce="{nonce}">
  document.documentElement.dataset.violations = '';
  document.addEventListener('securitypolicyviolation', (e) => {{
    document.documentElement.dataset.violations += e.violatedDirective + ' ' + e.blockedURI + '; ';
  }});
</script>
<script src="{}/embed.js" data-cores="1" data-ui="badge"></script>
</head><body><p class="host" id="host">A strict page.</p></body></html>"#,
        scheduler.url
    );
    let host = HostPage::serve_with_headers(html, &[("Content-Security-Policy", &policy)]);
    let browser = Browser::open(1280, 800);
    browser.goto(&host.url);
    browser.wait_for(
        Duration::from_secs(10),
        "the badge",
        "!!document.querySelector('tessera-badge')",
        "document.body.innerHTML",
    );
    browser.js("Tessera.start();", vec![]);
    browser.wait_for(
        Duration::from_secs(60),
        "slices under the strict policy",
        "Tessera.stats().slicesDone >= 2",
        "JSON.stringify(Tessera.stats()) + document.documentElement.dataset.violations",
    );

    let page = browser.js(
        "const badge = getComputedStyle(document.querySelector('tessera-badge').shadowRoot.querySelector('.badge'));
         return { violations: document.documentElement.dataset.violations, badgeColor: badge.color, badgeRadius: badge.borderTopLeftRadius,
                  visibleFrames: [...document.querySelectorAll('iframe')].filter((f) => f.offsetWidth || f.offsetHeight).length,
                  frames: document.querySelectorAll('iframe').length };",
        vec![],
    );
    assert_eq!(page["violations"], "", "nothing the policy blocks: {page}");
    assert_eq!(page["badgeColor"], "rgb(29, 33, 37)", "the badge is styled without 'unsafe-inline': {page}");
    assert_eq!(page["badgeRadius"], "999px", "{page}");
    assert!(page["frames"].as_u64().unwrap() >= 1, "{page}");
    assert_eq!(page["visibleFrames"], 0, "the sandbox frames stay hidden: {page}");
    browser.js("Tessera.stop();", vec![]);
    browser.wait_for(
        Duration::from_secs(15),
        "stopped",
        "Tessera.stats().state === 'stopped'",
        "JSON.stringify(Tessera.stats())",
    );
}
