//! Headless Chromium driven over WebDriver (Debian's ChromeDriver through `fantoccini`), for
//! tests that click the contribute page and script a host page that embeds the worker — what
//! `tessera worker`, which only opens a URL, cannot do.
//!
//! One ChromeDriver serves a whole test binary ([`chromedriver`]: started on first use, killed by
//! its PID when the process exits); each test opens its own browser session ([`Browser`]), so
//! every test starts with a fresh profile (its own localStorage, so its own contributor id). A
//! `Browser` closes its session when dropped, also when the test panics, which ends that Chromium.
//!
//! Chromium runs with `--no-sandbox` here: the tests run as root, where Chromium's own sandbox
//! needs a user switch that ChromeDriver does not make. Job code still runs in Tessera's
//! sandboxes (opaque-origin frames), which is what these tests exercise.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::BodyExt;
use serde_json::{json, Value};

/// The ChromeDriver of this test process: its URL and child process.
struct Driver {
    url: String,
    child: Child,
}

static DRIVER: OnceLock<Mutex<Option<Driver>>> = OnceLock::new();

/// Kills the shared ChromeDriver (by its PID) when the test process exits.
extern "C" fn stop_driver() {
    if let Some(lock) = DRIVER.get() {
        if let Ok(mut driver) = lock.lock() {
            if let Some(mut driver) = driver.take() {
                let _ = driver.child.kill();
                let _ = driver.child.wait();
            }
        }
    }
}

/// The URL of this process's ChromeDriver (`$CHROMEDRIVER`, else `chromedriver` on PATH),
/// started on a free loopback port on first use.
pub fn chromedriver() -> String {
    let lock = DRIVER.get_or_init(|| Mutex::new(None));
    let mut driver = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(driver) = driver.as_ref() {
        return driver.url.clone();
    }
    let program = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".to_string());
    // Spawned from a thread that lives as long as the process, so that the parent-death signal
    // (tied to the spawning thread) fires only when the whole test process is gone, even killed.
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut command = Command::new(&program);
        command
            .args(["--port=0", "--log-level=WARNING"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl in the forked child before exec touches no shared state.
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let _ = sender.send(command.spawn().map_err(|error| format!("cannot start {program}: {error}")));
        loop {
            std::thread::park();
        }
    });
    let mut child = receiver.recv().expect("the ChromeDriver thread answers").unwrap_or_else(|error| panic!("{error}"));
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let port = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(port) = line.split("started successfully on port ").nth(1) {
                    break port.trim().trim_end_matches('.').parse::<u16>().expect("ChromeDriver port");
                }
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ChromeDriver exited before saying its port");
            }
        }
    };
    // Keep draining its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    // SAFETY: registers a plain function to run at exit; it only locks our own static.
    unsafe {
        libc::atexit(stop_driver);
    }
    let url = format!("http://127.0.0.1:{port}");
    *driver = Some(Driver { url: url.clone(), child });
    url
}

/// A headless Chromium session; closed (and its browser ended) when dropped.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
}

/// `POST /session/{id}/goog/cdp/execute`: ChromeDriver's door to the DevTools protocol.
#[derive(Debug)]
struct Cdp {
    command: String,
    params: Value,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/goog/cdp/execute", session_id.unwrap_or_default()))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"cmd": self.command, "params": self.params}).to_string()))
    }
}

impl Browser {
    /// A new session with a `width`×`height` window.
    pub fn open(width: u32, height: u32) -> Browser {
        let driver = chromedriver();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let mut chrome = json!({
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                "--force-device-scale-factor=1", "--hide-scrollbars", "--lang=en-US",
                format!("--window-size={width},{height}"),
            ]
        });
        if let Ok(binary) = std::env::var("CHROMIUM") {
            chrome["binary"] = json!(binary);
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), chrome);
        capabilities.insert("pageLoadStrategy".into(), json!("normal"));
        let client = runtime
            .block_on(async {
                let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                ClientBuilder::new(connector).capabilities(capabilities).connect(&driver).await
            })
            .unwrap_or_else(|error| panic!("cannot open a Chromium session through {driver}: {error}"));
        Browser { runtime, client: Some(client) }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("session open")
    }

    /// Navigates to `url` and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.runtime.block_on(self.client().goto(url)).unwrap_or_else(|error| panic!("goto {url}: {error}"));
    }

    /// Runs `script` (a function body: `return` gives the value) with `arguments`.
    pub fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.runtime
            .block_on(self.client().execute(script, args))
            .unwrap_or_else(|error| panic!("script failed: {error}\n{script}"))
    }

    /// Runs `script`, which calls its last argument (`arguments[arguments.length - 1]`) with the value.
    pub fn js_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.runtime
            .block_on(self.client().execute_async(script, args))
            .unwrap_or_else(|error| panic!("async script failed: {error}\n{script}"))
    }

    /// Evaluates `expression` every 100 ms until it is truthy; returns its value. Panics after
    /// `timeout` with `what` and the last value of `explain` (an expression).
    pub fn wait_for(&self, timeout: Duration, what: &str, expression: &str, explain: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.js(&format!("return ({expression});"), vec![]);
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(flag) => *flag,
                Value::Number(number) => number.as_f64() != Some(0.0),
                Value::String(text) => !text.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if started.elapsed() > timeout {
                let detail =
                    self.js(&format!("try {{ return ({explain}); }} catch (e) {{ return String(e); }}"), vec![]);
                panic!("waited {timeout:?} for {what}; {explain} = {detail}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks the element `css` selects, as a person would (WebDriver Element Click).
    pub fn click(&self, css: &str) {
        self.runtime
            .block_on(async {
                let element = self.client().find(Locator::Css(css)).await?;
                element.click().await
            })
            .unwrap_or_else(|error| panic!("click {css}: {error}"));
    }

    /// Text of the element `css` selects.
    pub fn text(&self, css: &str) -> String {
        self.runtime
            .block_on(async { self.client().find(Locator::Css(css)).await?.text().await })
            .unwrap_or_else(|error| panic!("text of {css}: {error}"))
    }

    /// A DevTools protocol command through ChromeDriver.
    pub fn cdp(&self, command: &str, params: Value) -> Value {
        self.runtime
            .block_on(self.client().issue_cmd(Cdp { command: command.to_string(), params }))
            .unwrap_or_else(|error| panic!("CDP {command}: {error}"))
    }

    /// Makes the viewport exactly `width`×`height` CSS pixels (`mobile`: a phone's viewport rules).
    pub fn viewport(&self, width: u32, height: u32, mobile: bool) {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": if mobile { 2 } else { 1 }, "mobile": mobile}),
        );
    }

    /// Writes a PNG of the viewport (`full_page`: the whole page's height) to `path`.
    pub fn screenshot(&self, path: &Path, full_page: bool) {
        let shot = self.cdp("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": full_page}));
        let data = shot["data"].as_str().unwrap_or_else(|| panic!("no screenshot data: {shot}"));
        let png = base64::engine::general_purpose::STANDARD.decode(data).expect("base64 PNG");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("screenshot folder");
        }
        std::fs::write(path, png).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ =
                self.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(20), client.close()).await });
        }
    }
}

/// `GET url` over plain HTTP, with `Authorization: Bearer <key>` when a key is given: the status
/// and the body as JSON (`Null` when it is not JSON).
pub fn get_json(url: &str, key: Option<&str>) -> (u16, Value) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
        let mut request = http::Request::get(url);
        if let Some(key) = key {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let request = request.body(http_body_util::Empty::new()).unwrap_or_else(|error| panic!("{url}: {error}"));
        let response = client.request(request).await.unwrap_or_else(|error| panic!("GET {url}: {error}"));
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap_or_else(|error| panic!("GET {url}: {error}"));
        (status, serde_json::from_slice(&body.to_bytes()).unwrap_or(Value::Null))
    })
}

/// A static page on its own loopback port (another origin than the scheduler): `GET` of any
/// path answers `html`, except `/favicon.ico` (404). Stopped when dropped.
pub struct HostPage {
    pub url: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HostPage {
    /// Serves `html` with no header beyond the necessary ones.
    pub fn serve(html: String) -> HostPage {
        HostPage::serve_with_headers(html, &[])
    }

    /// Serves `html` with extra response headers (e.g. a Content-Security-Policy).
    pub fn serve_with_headers(html: String, headers: &[(&str, &str)]) -> HostPage {
        let extra: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let url = format!("http://127.0.0.1:{}/", listener.local_addr().expect("address").port());
        listener.set_nonblocking(true).expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => answer(stream, &html, &extra),
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => break,
                }
            }
        });
        HostPage { url, stop, thread: Some(thread) }
    }
}

/// Reads one request's head and answers it (one request per connection).
fn answer(mut stream: TcpStream, html: &str, extra_headers: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let first = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
    let (status, body) = if first.contains("/favicon.ico") { ("404 Not Found", "") } else { ("200 OK", html) };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{extra_headers}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

impl Drop for HostPage {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A map-basic program busy for `ms` milliseconds (its argument) per slice, reporting progress
/// 0.5 half way; returns its datum.
pub const BUSY_PROGRAM: &str =
    "(x, ms) => { let end = Date.now() + ms / 2; while (Date.now() < end) {} progress(0.5); \
     end = Date.now() + ms / 2; while (Date.now() < end) {} return x; }";

/// Script that records every public event of `window.Tessera` in `window.__test.events`
/// (`{event, at, payload}`, `at` from `performance.now()`) and tracks the slices running now
/// (`running`, a Set of sandbox ids) and the most that ran at once since `maxRunning` was reset.
pub const RECORD_EVENTS: &str = r#"
    if (window.__test) return true;
    const test = (window.__test = { events: [], running: new Set(), maxRunning: 0 });
    for (const event of ['start', 'state', 'sliceStart', 'sliceProgress', 'sliceEnd', 'credit', 'error', 'stop']) {
      Tessera.on(event, (payload) => {
        test.events.push({ event, at: performance.now(), payload });
        if (event === 'sliceStart') test.running.add(payload.sandbox);
        if (event === 'sliceEnd') test.running.delete(payload.sandbox);
        test.maxRunning = Math.max(test.maxRunning, test.running.size);
      });
    }
    return true;
"#;
