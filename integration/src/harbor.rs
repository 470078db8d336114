//! A client that speaks to the manager exactly as Harbor's Dragonfly provider does
//! (`goharbor/harbor src/pkg/p2p/preheat/provider/dragonfly.go`, OAuth mode): `GET /healthy`
//! and `POST /oapi/v1/jobs` with `Authorization: Bearer <PAT>`, the body Harbor builds (every
//! field present, Harbor's registry token in `args.headers`), then `GET /oapi/v1/jobs/{id}`
//! until the state is `SUCCESS` or `FAILURE`, failing on anything else as Harbor does.

use crate::{Error, Result};
use std::time::{Duration, Instant};

/// Harbor's provider instance: the manager's endpoint and the personal access token.
pub struct HarborProvider {
    pub endpoint: String,
    pub token: String,
    client: reqwest::Client,
}

fn fail(m: impl Into<String>) -> Error {
    Error::malformed("harbor provider", m.into())
}

impl HarborProvider {
    /// A provider for the manager at `endpoint` (`http://host:port`) with `token`.
    pub fn new(endpoint: &str, token: &str) -> HarborProvider {
        HarborProvider {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: token.to_string(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        }
    }

    /// Harbor's health check: 2xx is healthy.
    pub async fn healthy(&self) -> Result<bool> {
        let r = self
            .client
            .get(format!("{}/healthy", self.endpoint))
            .header("Accept", "application/json")
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok(r.status().is_success())
    }

    /// The body Harbor sends for an image preheat (`dragonflyCreateJobRequest`).
    pub fn image_body(
        manifest_url: &str,
        registry_token: &str,
        scope: &str,
        cluster_ids: Option<&[u64]>,
    ) -> serde_json::Value {
        serde_json::json!({
            "type": "preheat",
            "args": {
                "type": "image",
                "url": manifest_url,
                "tag": "",
                "filtered_query_params": "",
                "headers": {"Authorization": format!("Bearer {registry_token}")},
                "scope": scope,
                "concurrent_count": 0,
                "timeout": 0
            },
            "scheduler_cluster_ids": cluster_ids,
        })
    }

    /// POSTs a job as Harbor does; the status and body of the answer.
    pub async fn post(&self, body: &serde_json::Value) -> Result<(u16, serde_json::Value)> {
        let r = self
            .client
            .post(format!("{}/oapi/v1/jobs", self.endpoint))
            .header("Accept", "application/json")
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = r.status().as_u16();
        let text = r.text().await.map_err(|e| fail(e.to_string()))?;
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok((status, v))
    }

    /// Creates a job and returns its id (Harbor reads `id` as an integer, and the times as RFC
    /// 3339).
    pub async fn create(&self, body: &serde_json::Value) -> Result<u64> {
        let (status, v) = self.post(body).await?;
        if !(200..300).contains(&status) || status == 208 {
            return Err(fail(format!("POST /oapi/v1/jobs: {status} {v}")));
        }
        for t in ["created_at", "updated_at"] {
            let s = v[t].as_str().unwrap_or("");
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|e| fail(format!("{t} {s:?} is not RFC 3339: {e}")))?;
        }
        v["id"]
            .as_u64()
            .ok_or_else(|| fail(format!("id is not an integer: {v}")))
    }

    /// One poll: the job as JSON.
    pub async fn get(&self, id: u64) -> Result<serde_json::Value> {
        let r = self
            .client
            .get(format!("{}/oapi/v1/jobs/{id}", self.endpoint))
            .header("Accept", "application/json")
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !r.status().is_success() {
            return Err(fail(format!("GET /oapi/v1/jobs/{id}: {}", r.status())));
        }
        r.json().await.map_err(|e| fail(e.to_string()))
    }

    /// Polls every `every` until `SUCCESS` or `FAILURE` (any state other than `PENDING` is an
    /// error, as for Harbor), at most `limit`; the final job.
    pub async fn wait(
        &self,
        id: u64,
        every: Duration,
        limit: Duration,
    ) -> Result<serde_json::Value> {
        let start = Instant::now();
        loop {
            let job = self.get(id).await?;
            match job["state"].as_str() {
                Some("SUCCESS") | Some("FAILURE") => return Ok(job),
                Some("PENDING") => {}
                other => return Err(fail(format!("unknown state: {other:?}"))),
            }
            if start.elapsed() > limit {
                return Err(fail(format!(
                    "job {id} still PENDING after {limit:?}: {job}"
                )));
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// `(url, hostname, ip)` of every success task of a finished job, sorted.
pub fn successes(job: &serde_json::Value) -> Vec<(String, String, String)> {
    tasks(job, "success_tasks")
}

/// `(url, hostname, ip)` of every failure task of a finished job, sorted.
pub fn failures(job: &serde_json::Value) -> Vec<(String, String, String)> {
    tasks(job, "failure_tasks")
}

fn tasks(job: &serde_json::Value, list: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for s in job["result"]["job_states"].as_array().into_iter().flatten() {
        for r in s["results"].as_array().into_iter().flatten() {
            for t in r[list].as_array().into_iter().flatten() {
                out.push((
                    t["url"].as_str().unwrap_or("").to_string(),
                    t["hostname"].as_str().unwrap_or("").to_string(),
                    t["ip"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
    }
    out.sort();
    out
}
