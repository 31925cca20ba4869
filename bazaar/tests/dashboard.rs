//! End-to-end browser test of the front-end's `GET /dashboard`: headless
//! Chromium, driven over WebDriver HTTP (`chromedriver`) with plain
//! `reqwest`, watches a failover. The page must show the leader, then, after
//! the leader is killed, the new leader and the old one as down. The final
//! state is saved as `docs/dashboard.png`.
//!
//! Needs `chromium` and `chromedriver` (Debian: `chromium`,
//! `chromium-driver`; `.ci/run` installs them). `CHROME_BIN` and
//! `CHROMEDRIVER` override where they are looked for. Without them the test
//! says why and passes as skipped.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bazaar::cluster::{ScratchOptions, Service, free_ports};
use common::types::TradeKind;
use common::wait::{poll, try_poll};
use serde_json::{Value, json};
use support::*;

/// The W3C WebDriver key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
const NAMES: [&str; 7] = ["AAPL", "AMZN", "GOOG", "MSFT", "NVDA", "TSLA", "META"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_follows_a_failover_in_a_real_browser() {
    let Some(driver_bin) = find_program("CHROMEDRIVER", &["chromedriver"]) else {
        eprintln!(
            "SKIPPED: chromedriver not found (install the Debian packages chromium and \
             chromium-driver, or set CHROMEDRIVER)"
        );
        return;
    };
    let Some(chrome_bin) = find_program(
        "CHROME_BIN",
        &["chromium", "chromium-browser", "google-chrome"],
    ) else {
        eprintln!(
            "SKIPPED: chromium not found (install the Debian package chromium, or set CHROME_BIN)"
        );
        return;
    };

    let mut t = TestCluster::start(ScratchOptions::default()).await;
    let page = t
        .http
        .get(format!("{}/dashboard", t.base))
        .send()
        .await
        .expect("GET /dashboard");
    assert_eq!(page.status(), 200);
    let content_type = page.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(page.text().await.unwrap().contains(r#"id="leader""#));

    // Some state for the page: trades, and lookups that fill the cache.
    for (i, name) in NAMES.iter().enumerate() {
        let kind = if i % 2 == 0 {
            TradeKind::Buy
        } else {
            TradeKind::Sell
        };
        let (status, body) = t.trade(name, kind, 2, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(t.get(&format!("/stocks/{name}")).await.0, 200);
    }
    // Steady traffic while the page watches, so the charts have something to draw.
    let traffic = tokio::spawn(traffic(t.http.clone(), t.base.clone()));

    let browser = Browser::start(&driver_bin, &chrome_bin).await;
    browser.get(&format!("{}/dashboard", t.base)).await;

    browser
        .wait_text("#leader", "order-3", Duration::from_secs(30))
        .await;
    if metrics_has_histogram(&t).await {
        // Two polls of /metrics with traffic between them: the rate chart has a point.
        browser
            .wait_for("a request rate", Duration::from_secs(30), |b| async move {
                b.text("#rate-now")
                    .await
                    .is_some_and(|s| s.contains("req/s"))
            })
            .await;
        // A few seconds of line in the chart before the screenshot: six
        // points with data (the page polls every 500 ms).
        browser
            .wait_for("six points in the rate chart", Duration::from_secs(30), |b| async move {
                b.script("const p = document.querySelector('#chart-rate path'); return p ? (p.getAttribute('d').match(/L/g) || []).length : 0;")
                    .await
                    .as_u64()
                    .is_some_and(|segments| segments >= 5)
            })
            .await;
    } else {
        eprintln!("note: /metrics has no latency histogram yet; the charts show \"no data\"");
    }

    t.cluster.kill(Service::Order(3)).expect("kill order-3");
    let (status, body) = t
        .trade_until_done("AAPL", TradeKind::Buy, 1, "dashboard-failover")
        .await;
    assert_eq!(status, 200, "trade after killing the leader: {body}");

    browser
        .wait_text("#leader", "order-2", Duration::from_secs(30))
        .await;
    browser
        .wait_for(
            "order-3 shown as down",
            Duration::from_secs(30),
            |b| async move {
                b.text("#svc-order-3 .state")
                    .await
                    .is_some_and(|s| s.eq_ignore_ascii_case("down"))
            },
        )
        .await;
    browser
        .wait_text(
            "#changes li:first-child b",
            "order-2",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        browser
            .text("#svc-order-2 .badge")
            .await
            .is_some_and(|s| s.eq_ignore_ascii_case("leader")),
        "order-2's card carries the leader badge"
    );
    assert!(
        !browser
            .text("body")
            .await
            .unwrap_or_default()
            .contains("front-end unreachable"),
        "the front-end stayed reachable"
    );

    let png = browser.screenshot().await;
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    std::fs::create_dir_all(&docs).expect("docs/");
    let path = docs.join("dashboard.png");
    std::fs::write(&path, &png).expect("write the screenshot");
    eprintln!("screenshot: {} ({} bytes)", path.display(), png.len());

    traffic.abort();
    browser.quit().await;
}

/// Lookups over more names than the cache holds, and now and then a trade.
async fn traffic(http: reqwest::Client, base: String) {
    for i in 0usize.. {
        let name = NAMES[i % NAMES.len()];
        let _ = http.get(format!("{base}/stocks/{name}")).send().await;
        if i % 4 == 0 {
            let kind = if i % 8 == 0 { "buy" } else { "sell" };
            let _ = http
                .post(format!("{base}/orders"))
                .json(&json!({"name": name, "quantity": 1, "type": kind}))
                .send()
                .await;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

async fn metrics_has_histogram(t: &TestCluster) -> bool {
    match t.http.get(format!("{}/metrics", t.base)).send().await {
        Ok(r) if r.status().is_success() => r
            .text()
            .await
            .is_ok_and(|s| s.contains("bazaar_http_request_duration_seconds_bucket{")),
        _ => false,
    }
}

/// `$var` if set, else the first of `names` on `PATH`.
fn find_program(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// A chromedriver child (in its own process group, so Chromium dies with
/// it) and one headless session.
struct Browser {
    driver: Child,
    http: reqwest::Client,
    /// `http://127.0.0.1:{port}/session/{id}`
    session: String,
}

impl Browser {
    async fn start(driver_bin: &Path, chrome_bin: &Path) -> Browser {
        use std::os::unix::process::CommandExt;
        let port = free_ports(1).expect("a free port")[0];
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let root = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            driver,
            http,
            session: String::new(),
        };
        poll(
            "chromedriver to be ready",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || async {
                let r = browser
                    .http
                    .get(format!("{root}/status"))
                    .send()
                    .await
                    .ok()?;
                let v = r.json::<Value>().await.ok()?;
                (v["value"]["ready"] == true).then_some(())
            },
        )
        .await;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chrome_bin,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"],
            },
        }}});
        let value = browser
            .call(
                reqwest::Method::POST,
                &format!("{root}/session"),
                Some(caps),
            )
            .await
            .unwrap_or_else(|e| panic!("no WebDriver session: {e}"));
        let id = value["sessionId"].as_str().expect("sessionId");
        browser.session = format!("{root}/session/{id}");
        browser
    }

    /// One WebDriver command; its `value`, or the error it carried.
    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let v: Value = resp.json().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(v["value"].clone())
        } else {
            Err(format!("{status}: {}", v["value"]))
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("{}{path}", self.session), body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
    }

    async fn get(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The value `script` (a function body) returns in the page; null when
    /// it cannot run.
    async fn script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            &format!("{}/execute/sync", self.session),
            Some(json!({"script": script, "args": []})),
        )
        .await
        .unwrap_or(Value::Null)
    }

    /// The rendered text of the first element matching `css`, if any (the
    /// page re-renders, so elements are looked up afresh every time).
    async fn text(&self, css: &str) -> Option<String> {
        let found = self
            .call(
                reqwest::Method::POST,
                &format!("{}/element", self.session),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .ok()?;
        let id = found[ELEMENT_KEY].as_str()?;
        let text = self
            .call(
                reqwest::Method::GET,
                &format!("{}/element/{id}/text", self.session),
                None,
            )
            .await
            .ok()?;
        text.as_str().map(|s| s.trim().to_owned())
    }

    /// `common::wait` on the page: on a timeout the panic shows the page's text.
    async fn wait_for<'a, F, Fut>(&'a self, what: &str, timeout: Duration, mut cond: F)
    where
        F: FnMut(&'a Browser) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let waited = try_poll(what, timeout, Duration::from_millis(100), || {
            let holds = cond(self);
            async move { holds.await.then_some(()) }
        })
        .await;
        if let Err(e) = waited {
            let body = self.text("body").await.unwrap_or_default();
            panic!("{e}; the page shows:\n{body}");
        }
    }

    async fn wait_text(&self, css: &str, want: &str, timeout: Duration) {
        self.wait_for(&format!("{css} to show {want}"), timeout, |b| async move {
            b.text(css).await.as_deref() == Some(want)
        })
        .await;
    }

    async fn screenshot(&self) -> Vec<u8> {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64_decode(v.as_str().expect("base64 screenshot"));
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "screenshot is a PNG");
        png
    }

    async fn quit(self) {
        let _ = self
            .call(reqwest::Method::DELETE, &self.session, None)
            .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and every Chromium process it started.
        if let Ok(pgid) = i32::try_from(self.driver.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.driver.wait();
    }
}

/// Standard base64 (RFC 4648, padded), as WebDriver sends screenshots.
fn base64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\r' | b'\n' => continue,
            _ => panic!("not base64: byte {c}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from(acc >> bits).expect("one byte"));
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn base64_decodes_padded_input() {
    assert_eq!(base64_decode("TWFu"), b"Man");
    assert_eq!(base64_decode("TWE="), b"Ma");
    assert_eq!(base64_decode("TQ=="), b"M");
    assert_eq!(base64_decode("iVBORw0KGgo="), b"\x89PNG\r\n\x1a\n");
}
