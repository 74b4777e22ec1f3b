//! Credits end to end: the contribute page runs a job in headless Chromium (WebDriver); the
//! credits it shows are the scheduler's ledger (`GET /v1/workers/{contributor}`), and the ledger
//! is exactly the sum of the accepted slices' measured compute times
//! (`GET /v1/jobs/{id}/slices/{slice}`).

use std::time::Duration;

use serde_json::{json, Value};
use tessera_e2e::webdriver::{get_json, Browser, BUSY_PROGRAM, RECORD_EVENTS};
use tessera_e2e::Scheduler;

#[test]
fn the_page_shows_the_credits_the_ledger_holds_for_the_accepted_slices() {
    let scheduler = Scheduler::start();
    let program = scheduler.file("busy.js", BUSY_PROGRAM);
    let slices = 10u64;
    let job = scheduler.deploy(&[&program, "--range", &format!("0:{slices}"), "--arg", "120", "--name", "credits"]);

    let browser = Browser::open(1280, 800);
    browser.goto(&format!("{}/", scheduler.url));
    browser.wait_for(Duration::from_secs(20), "the page", "!!window.Tessera", "document.readyState");
    browser.js(RECORD_EVENTS, vec![]);
    browser.click("#start");
    scheduler.wait_for_state(&job, "complete", Duration::from_secs(60));

    let contributor = browser.js("return Tessera.stats().contributor;", vec![]);
    let contributor = contributor.as_str().expect("a contributor id").to_string();
    assert_eq!(
        browser.js("return localStorage.getItem('tessera.contributor');", vec![]),
        json!(contributor),
        "the id is kept in this browser"
    );
    assert!(contributor.len() == 32 && contributor.chars().all(|c| c.is_ascii_alphanumeric()), "{contributor}");

    // The ledger: the contributor's totals, and each accepted attempt's credited compute time.
    let url = format!("{}/v1/workers/{contributor}", scheduler.url);
    let (status, totals) = get_json(&url, None);
    assert_eq!(status, 200, "GET {url}: {totals}");
    let credited: u64 = (0..slices)
        .map(|slice| {
            let url = format!("{}/v1/jobs/{job}/slices/{slice}", scheduler.url);
            let (status, history) = get_json(&url, Some(&scheduler.api_key));
            assert_eq!(status, 200, "GET {url}: {history}");
            history["attempts"]
                .as_array()
                .unwrap_or_else(|| panic!("slice history: {history}"))
                .iter()
                .filter_map(|attempt| attempt["compute_ms"].as_u64())
                .sum::<u64>()
        })
        .sum();
    assert_eq!(totals["slices"], slices, "{totals}");
    assert_eq!(totals["compute_ms"], credited, "the ledger is the sum of the accepted slices' times: {totals}");
    assert!(credited >= slices * 100, "each slice is busy 120 ms: {credited} ms");

    // The page shows exactly the ledger's figure once its last fetch after the last submit is in.
    let expected = totals["credits"].as_f64().expect("credits");
    assert_eq!(expected, credited as f64 / 1000.0);
    let shown = browser.wait_for(
        Duration::from_secs(10),
        "the page's credits to equal the ledger's",
        &format!("Number(document.getElementById('credits').dataset.value) === {expected} && document.getElementById('credits').dataset.value"),
        "document.getElementById('credits').outerHTML + ' ' + JSON.stringify(Tessera.stats())",
    );
    assert_eq!(shown.as_str().unwrap().parse::<f64>().unwrap(), expected);
    let stats: Value = browser.js("return Tessera.stats();", vec![]);
    assert_eq!(stats["credits"], totals["credits"], "{stats}");
    assert_eq!(stats["creditedComputeMs"], totals["compute_ms"], "{stats}");
    // The `credit` event carried the same totals, camelCase.
    let last = browser.js("return __test.events.filter((e) => e.event === 'credit').pop().payload;", vec![]);
    assert_eq!(
        last,
        json!({"contributor": contributor, "slices": slices, "computeMs": credited, "credits": expected, "sinceMs": totals["since_ms"]})
    );
}
