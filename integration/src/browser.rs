//! A real headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`):
//! chromedriver on a free loopback port, one session, stopped by PID when dropped.

use crate::process::ChildProcess;
use crate::{free_port, wait_for, Error, Result, TestDir};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn fail(m: impl Into<String>) -> Error {
    Error::malformed("browser", m.into())
}

/// A browser session.
pub struct Browser {
    base: String,
    client: reqwest::Client,
    _driver: ChildProcess,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub async fn start(dir: &TestDir) -> Result<Browser> {
        let port = free_port();
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1");
        let driver = ChildProcess::spawn(dir, "chromedriver", cmd)?;
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let status = format!("{base}/status");
        wait_for(Duration::from_secs(30), "chromedriver ready", || {
            let (client, status) = (client.clone(), status.clone());
            async move {
                match client.get(&status).send().await {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .is_ok_and(|v| v["value"]["ready"] == true),
                    Err(_) => false,
                }
            }
        })
        .await?;
        let profile = dir.join("chromium-profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let r: Value = client
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?
            .json()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let id = r["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| fail(format!("no session: {r}")))?;
        Ok(Browser {
            base: format!("{base}/session/{id}"),
            client,
            _driver: driver,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut rb = self.client.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.map_err(|e| fail(e.to_string()))?;
        let status = r.status();
        let v: Value = r.json().await.map_err(|e| fail(e.to_string()))?;
        if !status.is_success() {
            return Err(fail(format!("{path}: {status} {}", v["value"])));
        }
        Ok(v["value"].clone())
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await
            .map(drop)
    }

    async fn find(&self, css: &str) -> Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        v[ELEMENT]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| fail(format!("{css}: {v}")))
    }

    /// Replaces the text of the input `css` with `text`.
    pub async fn fill(&self, css: &str, text: &str) -> Result<()> {
        let e = self.find(css).await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/clear"),
            Some(json!({})),
        )
        .await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await
        .map(drop)
    }

    /// Clicks `css`.
    pub async fn click(&self, css: &str) -> Result<()> {
        let e = self.find(css).await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await
        .map(drop)
    }

    /// Runs `script` in the page; its value.
    pub async fn script(&self, script: &str) -> Result<Value> {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// The visible text of `css`.
    pub async fn text(&self, css: &str) -> Result<String> {
        let e = self.find(css).await?;
        let v = self
            .call(reqwest::Method::GET, &format!("/element/{e}/text"), None)
            .await?;
        Ok(v.as_str().unwrap_or("").to_string())
    }

    /// Waits until the text of `css` satisfies `ok`; the text.
    pub async fn wait_text(
        &self,
        css: &str,
        limit: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let start = Instant::now();
        loop {
            let t = self.text(css).await.unwrap_or_default();
            if ok(&t) {
                return Ok(t);
            }
            if start.elapsed() > limit {
                return Err(fail(format!("{css}: text {t:?} after {limit:?}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session (Chromium exits); chromedriver is stopped by its ChildProcess.
        let url = self.base.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let _ = reqwest::Client::new().delete(&url).send().await;
                });
            }
        })
        .join();
    }
}
