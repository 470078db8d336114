//! The Open API's jobs (`/oapi/v1/jobs`) over SQLite and a real PostgreSQL: authentication by
//! personal access token as Dragonfly checks it, bad requests refused with a 4xx naming what is
//! wrong and nothing stored, and a job whose scheduler cannot be reached ending in FAILURE.

mod support;

use dragonfly_api::manager::v2::manager_client::ManagerClient;
use dragonfly_api::manager::v2::{KeepAliveRequest, SourceType, UpdateSchedulerRequest};
use serde_json::json;
use std::time::{Duration, Instant};
use support::{root_session, start_with, Backend, Manager};

on_both!(open_api: jobs_refuse_bad_tokens_and_bad_requests_and_store_nothing);
on_both!(unreachable: a_job_whose_scheduler_cannot_be_reached_fails_instead_of_staying_pending);

async fn token(m: &Manager, session: &str, name: &str, scopes: &[&str]) -> (i64, String) {
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/personal-access-tokens", m.url))
        .bearer_auth(session)
        .json(&json!({"name": name, "scopes": scopes, "expired_at": "2099-01-01T00:00:00Z", "user_id": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    (
        v["id"].as_i64().unwrap(),
        v["token"].as_str().unwrap().to_string(),
    )
}

async fn post(m: &Manager, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut rb = reqwest::Client::new()
        .post(format!("{}/oapi/v1/jobs", m.url))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// GET `path` with `token` (a session or a personal access token): the status and the JSON.
async fn get(m: &Manager, token: &str, path: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", m.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

async fn stored_jobs(m: &Manager, token: &str) -> usize {
    let r = reqwest::Client::new()
        .get(format!("{}/oapi/v1/jobs?access_token={token}", m.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    v.as_array().unwrap().len()
}

fn allow(c: &mut manager::config::ManagerConfig) {
    c.job.preheat.allowed_hosts = vec!["registry.example.com".into(), "files.example.com".into()];
}

async fn jobs_refuse_bad_tokens_and_bad_requests_and_store_nothing(b: Backend<'_>) {
    let m = start_with(tempfile::tempdir().unwrap(), b, allow).await;
    let session = root_session(&m).await;
    let (_, job_token) = token(&m, &session, "harbor", &["job"]).await;
    let (_, cluster_token) = token(&m, &session, "clusters-only", &["cluster"]).await;
    let (revoked_id, revoked) = token(&m, &session, "revoked", &["job"]).await;
    let (expired_id, expired) = token(&m, &session, "expired", &["job"]).await;
    let r = reqwest::Client::new()
        .patch(format!(
            "{}/api/v1/personal-access-tokens/{revoked_id}",
            m.url
        ))
        .bearer_auth(&session)
        .json(&json!({"state": "inactive"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    sqlx::query(
        "UPDATE personal_access_tokens SET expired_at = '2000-01-01T00:00:00Z' WHERE id = $1",
    )
    .bind(expired_id)
    .execute(&m.state.db.pool)
    .await
    .unwrap();
    let good =
        r#"{"type":"preheat","args":{"type":"file","url":"http://files.example.com/a.bin"}}"#;

    // Tokens, as Dragonfly answers them.
    for (t, status, message) in [
        (None, 401, "Unauthorized"),
        (Some("not-a-token"), 401, "Unauthorized"),
        (
            Some(cluster_token.as_str()),
            403,
            "Token doesn't have permission to access this resource. Required permission: job",
        ),
        (Some(revoked.as_str()), 403, "Token is inactive"),
        (Some(expired.as_str()), 403, "Token has expired"),
    ] {
        let (s, v) = post(&m, t, good).await;
        assert_eq!(
            (s, v["message"].as_str().unwrap()),
            (status, message),
            "{t:?}"
        );
    }
    // Basic auth is not a token.
    let r = reqwest::Client::new()
        .post(format!("{}/oapi/v1/jobs", m.url))
        .basic_auth("root", Some("x"))
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Bad requests: 4xx naming the field.
    for (body, status, names) in [
        ("{not json", 422, "JSON"),
        (r#"{"args":{}}"#, 422, "type"),
        (
            r#"{"type":"sync_everything","args":{}}"#,
            422,
            "Unknow type",
        ),
        (
            r#"{"type":"preheat","args":{"type":"docker","url":"x"}}"#,
            422,
            "args.type",
        ),
        (
            r#"{"type":"preheat","args":{"type":"image","url":"https://registry.example.com/v2/a/manifests/1","percentage":0}}"#,
            422,
            "args.percentage",
        ),
        (
            r#"{"type":"preheat","args":{"type":"image","url":"https://registry.example.com/v2/a/manifests/1","count":100000}}"#,
            422,
            "args.count",
        ),
        (
            r#"{"type":"preheat","args":{"type":"image","url":"https://registry.example.com/v2/a/manifests/1","count":"two"}}"#,
            422,
            "count",
        ),
        (
            r#"{"type":"preheat","args":{"type":"image","url":"https://registry.example.com/not/a/manifest"}}"#,
            422,
            "args.url",
        ),
        (
            r#"{"type":"preheat","args":{"type":"image","url":"http://169.254.169.254/v2/a/manifests/1"}}"#,
            403,
            "allowedHosts",
        ),
        (
            r#"{"type":"preheat","args":{"type":"file","urls":["http://files.example.com/a","http://10.0.0.1:8080/admin"]}}"#,
            403,
            "10.0.0.1:8080",
        ),
        (
            r#"{"type":"preheat","args":{"type":"file"}}"#,
            422,
            "args.urls",
        ),
        (
            r#"{"type":"preheat","args":{"type":"file","url":"http://files.example.com/a","platform":"linux"}}"#,
            422,
            "args.platform",
        ),
        (
            r#"{"type":"preheat","args":{"type":"file","url":"http://files.example.com/a"},"scheduler_cluster_ids":[42]}"#,
            404,
            "scheduler cluster id 42",
        ),
        (
            r#"{"type":"get_task","args":{"task_id":"../../etc/passwd"}}"#,
            422,
            "args.task_id",
        ),
        (r#"{"type":"delete_task","args":{}}"#, 422, "args.task_id"),
        // No scheduler has registered: nothing can run it.
        (good, 500, "candidate schedulers not found"),
    ] {
        let (s, v) = post(&m, Some(&job_token), body).await;
        let text = v.to_string();
        assert_eq!(s, status, "{body}: {text}");
        assert!(text.contains(names), "{body}: {text}");
    }
    assert_eq!(stored_jobs(&m, &job_token).await, 0, "nothing was stored");
    assert_eq!(get(&m, &job_token, "/oapi/v1/jobs/abc").await.0, 422);
    let (status, v) = get(&m, &job_token, "/oapi/v1/jobs/999").await;
    assert_eq!(status, 404);
    assert_eq!(v["message"], "record not found");
    // The cluster-scoped token reaches clusters, not jobs.
    assert_eq!(get(&m, &cluster_token, "/oapi/v1/clusters").await.0, 200);
}

async fn a_job_whose_scheduler_cannot_be_reached_fails_instead_of_staying_pending(b: Backend<'_>) {
    let m = start_with(tempfile::tempdir().unwrap(), b, allow).await;
    let session = root_session(&m).await;
    let (_, job_token) = token(&m, &session, "harbor", &["job"]).await;
    // A scheduler that registers and keeps alive, at an address where nothing listens.
    let mut c = ManagerClient::connect(m.grpc.clone()).await.unwrap();
    c.update_scheduler(UpdateSchedulerRequest {
        source_type: SourceType::SchedulerSource as i32,
        hostname: "ghost".into(),
        scheduler_cluster_id: 1,
        ip: "127.0.0.1".into(),
        port: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(KeepAliveRequest {
        source_type: SourceType::SchedulerSource as i32,
        hostname: "ghost".into(),
        cluster_id: 1,
        ip: "127.0.0.1".into(),
    })
    .await
    .unwrap();
    let mut ka = c.clone();
    let _stream = tokio::spawn(async move {
        ka.keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let bio = "'; DROP TABLE jobs; --";
    let (status, job) = loop {
        let (s, v) = post(
            &m,
            Some(&job_token),
            &json!({"type": "preheat", "bio": bio, "args": {"type": "file", "url": "http://files.example.com/a.bin", "headers": {"Authorization": "Bearer secret"}}}).to_string(),
        )
        .await;
        if s != 500 || Instant::now() > deadline {
            break (s, v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "PENDING");
    assert_eq!(job["bio"], bio);
    assert!(job["task_id"].as_str().unwrap().starts_with("group_"));
    assert_eq!(job["args"]["headers"]["Authorization"], "<redacted>");
    assert_eq!(job["args"]["scope"], "single_seed_peer");
    assert_eq!(job["args"]["concurrent_task_count"], 8);
    assert_eq!(job["args"]["timeout"], 3_600_000_000_000i64);
    let id = job["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        let (_, v) = get(&m, &job_token, &format!("/oapi/v1/jobs/{id}")).await;
        if v["state"] != "PENDING" {
            break v;
        }
        assert!(Instant::now() < deadline, "still PENDING: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job["state"], "FAILURE", "{job}");
    let error = job["result"]["job_states"][0]["error"].as_str().unwrap();
    assert!(error.contains("scheduler 127.0.0.1:1"), "{error}");
    assert_eq!(stored_jobs(&m, &job_token).await, 1);

    // The audit log names who did each write and how it went.
    let (status, _) = post(&m, Some(&job_token), r#"{"type":"nope"}"#).await;
    assert_eq!(status, 422);
    let (status, audits) = get(&m, &session, "/api/v1/audits?per_page=100").await;
    assert_eq!(status, 200);
    let audits = audits.as_array().unwrap().clone();
    let created: Vec<&serde_json::Value> = audits
        .iter()
        .filter(|a| a["event"] == "POST /oapi/v1/jobs" && a["status_code"] == 200)
        .collect();
    assert_eq!(created.len(), 1, "{audits:?}");
    assert_eq!(created[0]["actor_type"], "token");
    assert_eq!(created[0]["actor_name"], "harbor");
    assert!(audits
        .iter()
        .any(|a| a["event"] == "POST /api/v1/personal-access-tokens"
            && a["actor_type"] == "user"
            && a["actor_name"] == "root"
            && a["state"] == "success"));
    assert!(audits
        .iter()
        .any(|a| a["event"] == "POST /oapi/v1/jobs" && a["state"] == "failure"));
    // Refused before authentication is settled, and sign-ins, are recorded too.
    let (status, _) = post(&m, Some("not-a-token"), "{}").await;
    assert_eq!(status, 401);
    let (_, audits) = get(&m, &session, "/api/v1/audits?per_page=100").await;
    let audits = audits.as_array().unwrap().clone();
    assert!(audits.iter().any(|a| a["event"] == "POST /oapi/v1/jobs"
        && a["actor_type"] == "anonymous"
        && a["status_code"] == 401));
    assert!(audits
        .iter()
        .any(|a| a["event"] == "POST /api/v1/users/signin"
            && a["actor_name"] == "root"
            && a["state"] == "success"));
}
