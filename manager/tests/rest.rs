//! The manager's REST API on a real listener, each test run over SQLite and over a real
//! PostgreSQL: the root user's first password, sessions, sign-in rate limit, personal access
//! tokens and bad input.

mod support;

use manager::auth::{self, TokenRefusal};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::{root_password, root_session, signin, start, start_in, Backend, Manager};

on_both!(first_start: first_start_makes_a_root_password_and_a_jwt_key_only_root_can_read);
on_both!(signin: signin_answers_a_session_and_repeated_failures_are_refused_for_a_while);
on_both!(tokens: personal_access_tokens_are_shown_once_stored_hashed_and_checked_for_state_expiry_and_scope);
on_both!(bad_input: bad_input_gets_a_4xx_naming_the_field_and_stores_nothing);
on_both!(pages: lists_come_in_pages_with_dragonflys_link_header);
on_both!(default_clusters: first_start_makes_dragonflys_default_clusters_once);
on_both!(cluster_routes: clusters_are_created_read_changed_linked_and_deleted_over_rest);
on_both!(env_token: the_environments_token_is_kept_once_and_replaced_when_it_changes);

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

async fn first_start_makes_a_root_password_and_a_jwt_key_only_root_can_read(b: Backend<'_>) {
    let work = tempfile::tempdir().unwrap();
    let m = start_in(work, b).await;
    let pw = m.work.path().join("initial-root-password");
    let key = m.work.path().join("jwt.key");
    assert_eq!(mode(&pw), 0o600);
    assert_eq!(mode(&key), 0o600);
    let password = root_password(m.work.path());
    assert!(password.len() >= 20, "a generated password: {password:?}");
    assert_ne!(password, "dragonfly", "never Dragonfly's default password");
    let key_bytes = std::fs::read(&key).unwrap();
    // Default sign-in with Dragonfly's well-known password fails.
    assert_eq!(signin(&m, "root", "dragonfly").await.status(), 401);
    assert_eq!(signin(&m, "root", &password).await.status(), 200);
    // A second start on the same work home keeps the user, its password and the key.
    let work = {
        let mut m = m;
        let _ = m.stop.take().map(|s| s.send(()));
        std::mem::replace(&mut m.work, tempfile::tempdir().unwrap())
    };
    std::fs::remove_file(work.path().join("initial-root-password")).unwrap();
    let m = start_in(work, b).await;
    assert!(!m.work.path().join("initial-root-password").exists());
    assert_eq!(std::fs::read(key_path(&m)).unwrap(), key_bytes);
    assert_eq!(signin(&m, "root", &password).await.status(), 200);
}

fn key_path(m: &Manager) -> std::path::PathBuf {
    m.work.path().join("jwt.key")
}

async fn signin_answers_a_session_and_repeated_failures_are_refused_for_a_while(b: Backend<'_>) {
    let m = start(b).await;
    let r = signin(&m, "root", &root_password(m.work.path())).await;
    assert_eq!(r.status(), 200);
    let cookie = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.starts_with("jwt=") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    let token = body["token"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(body["expire"].as_str().unwrap()).is_ok());
    // The session reads the user, by header and by cookie; nothing without it.
    let c = reqwest::Client::new();
    let me = c
        .get(format!("{}/api/v1/users/1", m.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let me: serde_json::Value = me.json().await.unwrap();
    assert_eq!(me["name"], "root");
    assert_eq!(me["role"], "root");
    assert!(me.get("password_hash").is_none(), "{me}");
    let by_cookie = c
        .get(format!("{}/api/v1/users/1", m.url))
        .header("cookie", cookie.split(';').next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), 200);
    for bad in [None, Some("not-a-jwt"), Some(&token[..token.len() - 2])] {
        let mut rq = c.get(format!("{}/api/v1/users/1", m.url));
        if let Some(t) = bad {
            rq = rq.bearer_auth(t);
        }
        assert_eq!(rq.send().await.unwrap().status(), 401, "{bad:?}");
    }
    // Five wrong passwords, then even the right one is refused with 429 for a while.
    for _ in 0..manager::rest::SIGNIN_FAILURES {
        let r = signin(&m, "root", "wrong").await;
        assert_eq!(r.status(), 401);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["message"], "incorrect name or password");
    }
    let r = signin(&m, "root", &root_password(m.work.path())).await;
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("too many failed sign-ins"),
        "{body}"
    );
    // An unknown name is refused like a wrong password.
    let m2 = start(Backend::Sqlite).await;
    assert_eq!(signin(&m2, "nobody", "x").await.status(), 401);
}

async fn create_token(m: &Manager, session: &str, body: serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/api/v1/personal-access-tokens", m.url))
        .bearer_auth(session)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn in_a_year() -> String {
    (chrono::Utc::now() + chrono::Duration::days(365)).to_rfc3339()
}

async fn personal_access_tokens_are_shown_once_stored_hashed_and_checked_for_state_expiry_and_scope(
    b: Backend<'_>,
) {
    let m = start(b).await;
    let s = root_session(&m).await;
    let r = create_token(
        &m,
        &s,
        serde_json::json!({"name": "harbor", "bio": "preheat", "scopes": ["job"], "expired_at": in_a_year(), "user_id": 1}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let pat: serde_json::Value = r.json().await.unwrap();
    let token = pat["token"].as_str().unwrap().to_string();
    assert!(token.len() >= 40, "{token}");
    assert_eq!(pat["scopes"], serde_json::json!(["job"]));
    assert_eq!(pat["state"], "active");
    let id = pat["id"].as_i64().unwrap();
    // Listed and read without the token itself.
    let c = reqwest::Client::new();
    let list: serde_json::Value = c
        .get(format!("{}/api/v1/personal-access-tokens", m.url))
        .bearer_auth(&s)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(list[0].get("token").is_none(), "{list}");
    // The database holds no copy of the token.
    {
        use sqlx::Row;
        let rows = sqlx::query("SELECT name, bio, token_hash, scopes FROM personal_access_tokens")
            .fetch_all(&m.state.db.pool)
            .await
            .unwrap();
        for r in rows {
            for col in ["name", "bio", "token_hash", "scopes"] {
                let v: String = r.try_get(col).unwrap();
                assert!(!v.contains(&token), "{col} holds the token");
            }
        }
    }
    let db_file = std::fs::read(m.work.path().join("manager.db")).unwrap_or_default();
    let wal = std::fs::read(m.work.path().join("manager.db-wal")).unwrap_or_default();
    for bytes in [&db_file, &wal] {
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "the token is stored in clear"
        );
    }
    let db = &m.state.db;
    assert!(auth::check_token(db, &token, "job").await.unwrap().is_ok());
    assert_eq!(
        auth::check_token(db, &token, "cluster")
            .await
            .unwrap()
            .unwrap_err(),
        TokenRefusal::Scope("cluster".into())
    );
    assert_eq!(
        auth::check_token(db, "made-up", "job")
            .await
            .unwrap()
            .unwrap_err(),
        TokenRefusal::Unknown
    );
    // Revoked, then active again, then deleted.
    let patch = |state: &str| {
        c.patch(format!("{}/api/v1/personal-access-tokens/{id}", m.url))
            .bearer_auth(&s)
            .json(&serde_json::json!({ "state": state }))
            .send()
    };
    assert_eq!(patch("inactive").await.unwrap().status(), 200);
    assert_eq!(
        auth::check_token(db, &token, "job")
            .await
            .unwrap()
            .unwrap_err(),
        TokenRefusal::Inactive
    );
    assert_eq!(patch("active").await.unwrap().status(), 200);
    assert!(auth::check_token(db, &token, "job").await.unwrap().is_ok());
    assert_eq!(patch("revoked").await.unwrap().status(), 422);
    // Other fields change one at a time; what is not given stays.
    let edit = |body: serde_json::Value| {
        c.patch(format!("{}/api/v1/personal-access-tokens/{id}", m.url))
            .bearer_auth(&s)
            .json(&body)
            .send()
    };
    let later = (chrono::Utc::now() + chrono::Duration::days(30))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let r = edit(serde_json::json!({"bio": "for CI", "scopes": ["cluster"], "expired_at": later}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let edited: serde_json::Value = r.json().await.unwrap();
    assert_eq!(edited["bio"], "for CI");
    assert_eq!(edited["scopes"], serde_json::json!(["cluster"]));
    assert_eq!(edited["expired_at"], later.as_str());
    assert_eq!(edited["state"], "active");
    assert_eq!(edited["name"], "harbor");
    assert!(auth::check_token(db, &token, "cluster")
        .await
        .unwrap()
        .is_ok());
    assert_eq!(
        auth::check_token(db, &token, "job")
            .await
            .unwrap()
            .unwrap_err(),
        TokenRefusal::Scope("job".into())
    );
    for (body, field) in [
        (
            serde_json::json!({"expired_at": "2001-01-01T00:00:00Z"}),
            "expired_at",
        ),
        (serde_json::json!({"scopes": ["admin"]}), "scopes"),
        (serde_json::json!({"name": "renamed"}), "name"),
    ] {
        let r = edit(body.clone()).await.unwrap();
        assert_eq!(r.status(), 422, "{body}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert!(
            e["message"].as_str().unwrap().contains(field),
            "{body}: {e}"
        );
    }
    let unchanged: serde_json::Value = c
        .get(format!("{}/api/v1/personal-access-tokens/{id}", m.url))
        .bearer_auth(&s)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(unchanged["scopes"], serde_json::json!(["cluster"]));
    assert_eq!(unchanged["expired_at"], later.as_str());
    assert!(edit(serde_json::json!({"scopes": ["job"]}))
        .await
        .unwrap()
        .status()
        .is_success());
    // Names are unique, as upstream's.
    let r = create_token(
        &m,
        &s,
        serde_json::json!({"name": "harbor", "expired_at": in_a_year(), "user_id": 1}),
    )
    .await;
    assert_eq!(r.status(), 409);
    let e: serde_json::Value = r.json().await.unwrap();
    assert!(e["message"].as_str().unwrap().contains("harbor"), "{e}");
    let del = c
        .delete(format!("{}/api/v1/personal-access-tokens/{id}", m.url))
        .bearer_auth(&s)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    assert_eq!(
        auth::check_token(db, &token, "job")
            .await
            .unwrap()
            .unwrap_err(),
        TokenRefusal::Unknown
    );
    let gone = c
        .get(format!("{}/api/v1/personal-access-tokens/{id}", m.url))
        .bearer_auth(&s)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let body: serde_json::Value = gone.json().await.unwrap();
    assert_eq!(body["message"], "record not found");
    // Made through the API without scopes, a token gets every scope, written out.
    let r = create_token(
        &m,
        &s,
        serde_json::json!({"name": "ci", "expired_at": in_a_year(), "user_id": 1}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let pat: serde_json::Value = r.json().await.unwrap();
    assert_eq!(pat["scopes"], serde_json::json!(["job", "cluster"]));
    // A stored token with no scopes may do everything (Dragonfly's older tokens); an expired
    // one nothing.
    let all = auth::create_token(db, 1, "all", "", &[], &in_a_year())
        .await
        .unwrap();
    let all = all.token.unwrap();
    assert!(auth::check_token(db, &all, "cluster")
        .await
        .unwrap()
        .is_ok());
    let past = auth::create_token(db, 1, "old", "", &[], "2020-01-01T00:00:00Z")
        .await
        .unwrap();
    assert_eq!(
        auth::check_token(db, &past.token.unwrap(), "job")
            .await
            .unwrap()
            .unwrap_err(),
        TokenRefusal::Expired
    );
}

async fn bad_input_gets_a_4xx_naming_the_field_and_stores_nothing(b: Backend<'_>) {
    let m = start(b).await;
    let s = root_session(&m).await;
    let cases = [
        (
            serde_json::json!({"name": "t", "scopes": ["jobs"], "expired_at": in_a_year(), "user_id": 1}),
            422,
            "scopes",
        ),
        (
            serde_json::json!({"name": "t", "expired_at": "tomorrow", "user_id": 1}),
            422,
            "expired_at",
        ),
        (
            serde_json::json!({"name": "t", "expired_at": "2020-01-01T00:00:00Z", "user_id": 1}),
            422,
            "expired_at",
        ),
        (
            serde_json::json!({"name": "", "expired_at": in_a_year(), "user_id": 1}),
            422,
            "name",
        ),
        (
            serde_json::json!({"name": "t", "expired_at": in_a_year(), "user_id": 99}),
            422,
            "user_id",
        ),
        (
            serde_json::json!({"name": "t", "expired_at": in_a_year()}),
            422,
            "user_id",
        ),
        (
            serde_json::json!({"name": "t", "expired_at": in_a_year(), "user_id": 1, "colour": "red"}),
            422,
            "colour",
        ),
        (
            serde_json::json!({"name": 7, "expired_at": in_a_year(), "user_id": 1}),
            422,
            "name",
        ),
    ];
    for (body, status, field) in cases {
        let r = create_token(&m, &s, body.clone()).await;
        assert_eq!(r.status(), status, "{body}");
        let e: serde_json::Value = r.json().await.unwrap();
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains(field), "{body}: {msg}");
        assert_eq!(e["errors"], e["message"], "Dragonfly's key for bad input");
    }
    // Not JSON at all.
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/personal-access-tokens", m.url))
        .bearer_auth(&s)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(auth::list_tokens(&m.state.db, None)
        .await
        .unwrap()
        .is_empty());
    // SQL metacharacters are a name like any other.
    let evil = "'); DROP TABLE users; --";
    let r = create_token(
        &m,
        &s,
        serde_json::json!({"name": evil, "expired_at": in_a_year(), "user_id": 1}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let list = auth::list_tokens(&m.state.db, None).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, evil);
    assert!(
        auth::user(&m.state.db, 1).await.unwrap().is_some(),
        "users survived"
    );
    assert_eq!(signin(&m, evil, evil).await.status(), 401);
}

async fn lists_come_in_pages_with_dragonflys_link_header(b: Backend<'_>) {
    let m = start(b).await;
    let s = root_session(&m).await;
    for i in 0..12 {
        auth::create_token(&m.state.db, 1, &format!("t{i}"), "", &[], &in_a_year())
            .await
            .unwrap();
    }
    let c = reqwest::Client::new();
    let get = |query: &str| {
        c.get(format!("{}/api/v1/personal-access-tokens{query}", m.url))
            .bearer_auth(&s)
            .send()
    };
    // Ten by default, as upstream.
    let r = get("").await.unwrap();
    assert_eq!(r.status(), 200);
    let link = r.headers()["link"].to_str().unwrap().to_string();
    assert_eq!(
        link,
        "</api/v1/personal-access-tokens?page=1&per_page=10>;rel=prev,\
         </api/v1/personal-access-tokens?page=2&per_page=10>;rel=next,\
         </api/v1/personal-access-tokens?page=1&per_page=10>;rel=first,\
         </api/v1/personal-access-tokens?page=2&per_page=10>;rel=last"
    );
    let first: Vec<serde_json::Value> = r.json().await.unwrap();
    assert_eq!(first.len(), 10);
    let r = get("?page=2&per_page=10&user_id=1").await.unwrap();
    assert!(r.headers()["link"]
        .to_str()
        .unwrap()
        .starts_with("</api/v1/personal-access-tokens?page=1&per_page=10&user_id=1>;rel=prev"));
    let second: Vec<serde_json::Value> = r.json().await.unwrap();
    let names: Vec<&str> = second.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["t10", "t11"]);
    for (query, field) in [
        ("?per_page=0", "per_page"),
        ("?page=0", "page"),
        ("?page=abc", "page"),
    ] {
        let r = get(query).await.unwrap();
        assert_eq!(r.status(), 422, "{query}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert!(
            e["message"].as_str().unwrap().contains(field),
            "{query}: {e}"
        );
    }
}

async fn first_start_makes_dragonflys_default_clusters_once(b: Backend<'_>) {
    use manager::clusters;
    let m = start(b).await;
    let db = &m.state.db;
    let sc = clusters::scheduler_cluster(db, 1).await.unwrap().unwrap();
    assert_eq!(sc.name, "cluster-1");
    assert!(sc.is_default);
    assert_eq!(
        serde_json::to_value(&sc.config).unwrap(),
        serde_json::json!({"candidate_parent_limit": 3, "filter_parent_limit": 15, "job_rate_limit": 10})
    );
    assert_eq!(
        serde_json::to_value(&sc.client_config).unwrap(),
        serde_json::json!({"load_limit": 200})
    );
    assert_eq!(sc.seed_peer_clusters.len(), 1);
    let spc = clusters::seed_peer_cluster(db, sc.seed_peer_clusters[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(spc.name, "cluster-1");
    assert_eq!(spc.config.load_limit, Some(2000));
    assert_eq!(spc.scheduler_clusters[0].id, sc.id);
    // Not again on the next start.
    assert!(!clusters::seed(db).await.unwrap());
    assert!(clusters::scheduler_cluster(db, 2).await.unwrap().is_none());
    // A second default takes the flag from the first.
    let id = clusters::create_scheduler_cluster(
        db,
        "idc-b",
        "",
        &Default::default(),
        &Default::default(),
        &Default::default(),
        &Default::default(),
        true,
    )
    .await
    .unwrap();
    assert!(
        clusters::scheduler_cluster(db, id)
            .await
            .unwrap()
            .unwrap()
            .is_default
    );
    assert!(
        !clusters::scheduler_cluster(db, 1)
            .await
            .unwrap()
            .unwrap()
            .is_default
    );
    // A scheduler cluster has one seed peer cluster at most.
    let other = clusters::create_seed_peer_cluster(db, "seeds-b", "", &Default::default())
        .await
        .unwrap();
    clusters::link(db, other, 1).await.unwrap();
    let sc = clusters::scheduler_cluster(db, 1).await.unwrap().unwrap();
    assert_eq!(sc.seed_peer_clusters.len(), 1);
    assert_eq!(sc.seed_peer_clusters[0].name, "seeds-b");
    // Names are unique.
    let dup = clusters::create_seed_peer_cluster(db, "seeds-b", "", &Default::default())
        .await
        .unwrap_err();
    assert!(dup.is_unique_violation(), "{dup}");
}

async fn clusters_are_created_read_changed_linked_and_deleted_over_rest(b: Backend<'_>) {
    let m = start(b).await;
    let s = root_session(&m).await;
    let c = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        let mut rq = c
            .request(method, format!("{}/api/v1{path}", m.url))
            .bearer_auth(&s);
        if let Some(b) = body {
            rq = rq.json(&b);
        }
        rq.send()
    };
    use reqwest::Method;
    // A seed peer cluster, then a scheduler cluster it serves.
    let r = send(
        Method::POST,
        "/seed-peer-clusters",
        Some(serde_json::json!({"name": "seeds-east", "config": {"load_limit": 500}})),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let spc: serde_json::Value = r.json().await.unwrap();
    let spc_id = spc["id"].as_i64().unwrap();
    let r = send(
        Method::POST,
        "/scheduler-clusters",
        Some(serde_json::json!({
            "name": "east", "bio": "east DC",
            "config": {"candidate_parent_limit": 4, "filter_parent_limit": 40},
            "client_config": {"load_limit": 100}, "seed_client_config": {},
            "scopes": {"idc": "east", "cidrs": ["10.1.0.0/16"], "hostnames": ["^east-"]},
            "seed_peer_cluster_id": spc_id
        })),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let sc: serde_json::Value = r.json().await.unwrap();
    let sc_id = sc["id"].as_i64().unwrap();
    assert_eq!(sc["name"], "east");
    assert_eq!(sc["is_default"], false);
    assert_eq!(sc["config"]["candidate_parent_limit"], 4);
    assert_eq!(sc["scopes"]["cidrs"], serde_json::json!(["10.1.0.0/16"]));
    assert_eq!(sc["seed_peer_clusters"][0]["id"], spc_id);
    // Listed (with the default cluster-1), filtered by name, read one by one.
    let list: Vec<serde_json::Value> = send(Method::GET, "/scheduler-clusters", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cluster-1", "east"]);
    let one: Vec<serde_json::Value> = send(Method::GET, "/scheduler-clusters?name=east", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    // Changed: what is given changes, the rest stays; made the default, it takes the flag.
    let r = send(
        Method::PATCH,
        &format!("/scheduler-clusters/{sc_id}"),
        Some(serde_json::json!({"bio": "east datacenter", "is_default": true})),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let sc: serde_json::Value = r.json().await.unwrap();
    assert_eq!(sc["bio"], "east datacenter");
    assert_eq!(sc["is_default"], true);
    assert_eq!(sc["config"]["filter_parent_limit"], 40);
    let first: serde_json::Value = send(Method::GET, "/scheduler-clusters/1", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["is_default"], false);
    // Linked to the default seed peer cluster instead.
    let r = send(
        Method::PUT,
        &format!("/seed-peer-clusters/1/scheduler-clusters/{sc_id}"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let spc: serde_json::Value = send(Method::GET, &format!("/seed-peer-clusters/{spc_id}"), None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spc["scheduler_clusters"], serde_json::json!([]));
    // Bad input, each naming the field; nothing changed.
    for (method, path, body, status, field) in [
        (
            Method::POST,
            "/scheduler-clusters".to_string(),
            serde_json::json!({"name": "x", "config": {}, "client_config": {}}),
            422,
            "seed_client_config",
        ),
        (
            Method::POST,
            "/scheduler-clusters".to_string(),
            serde_json::json!({"name": "x", "config": {"candidate_parent_limit": 50}, "client_config": {}, "seed_client_config": {}}),
            422,
            "config.candidate_parent_limit",
        ),
        (
            Method::POST,
            "/scheduler-clusters".to_string(),
            serde_json::json!({"name": "x", "config": {}, "client_config": {}, "seed_client_config": {}, "scopes": {"cidrs": ["10.0.0.0/99"]}}),
            422,
            "scopes.cidrs",
        ),
        (
            Method::POST,
            "/scheduler-clusters".to_string(),
            serde_json::json!({"name": "east", "config": {}, "client_config": {}, "seed_client_config": {}}),
            409,
            "east",
        ),
        (
            Method::POST,
            "/scheduler-clusters".to_string(),
            serde_json::json!({"name": "x", "config": {}, "client_config": {}, "seed_client_config": {}, "seed_peer_cluster_id": 99}),
            422,
            "seed_peer_cluster_id",
        ),
        (
            Method::PATCH,
            format!("/scheduler-clusters/{sc_id}"),
            serde_json::json!({"client_config": {"load_limit": 0}}),
            422,
            "client_config.load_limit",
        ),
        (
            Method::PATCH,
            "/scheduler-clusters/99".to_string(),
            serde_json::json!({"bio": "x"}),
            404,
            "record not found",
        ),
        (
            Method::POST,
            "/seed-peer-clusters".to_string(),
            serde_json::json!({"name": "y", "config": {"load_limit": 60000}}),
            422,
            "config.load_limit",
        ),
        (
            Method::POST,
            "/seed-peer-clusters".to_string(),
            serde_json::json!({"name": "y"}),
            422,
            "config",
        ),
    ] {
        let r = send(method.clone(), &path, Some(body.clone()))
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{method} {path} {body}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert!(
            e["message"].as_str().unwrap().contains(field),
            "{body}: {e}"
        );
    }
    let all: Vec<serde_json::Value> = send(Method::GET, "/scheduler-clusters", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 2, "nothing was stored by bad requests");
    // Deleted, with their links.
    for path in [
        format!("/scheduler-clusters/{sc_id}"),
        format!("/seed-peer-clusters/{spc_id}"),
    ] {
        assert_eq!(
            send(Method::DELETE, &path, None).await.unwrap().status(),
            200
        );
        assert_eq!(send(Method::GET, &path, None).await.unwrap().status(), 404);
    }
    let default_spc: serde_json::Value = send(Method::GET, "/seed-peer-clusters/1", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let linked: Vec<&str> = default_spc["scheduler_clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(linked, ["cluster-1"]);
    // Without a session, nothing.
    let r = c
        .get(format!("{}/api/v1/scheduler-clusters", m.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

async fn the_environments_token_is_kept_once_and_replaced_when_it_changes(b: Backend<'_>) {
    let m = start(b).await;
    let db = &m.state.db;
    let first = "env-token-aaaaaaaaaaaaaaaa";
    assert!(auth::ensure_default_token(db, first).await.unwrap());
    // A restart with the same value changes nothing (upstream fails on the unique name).
    assert!(!auth::ensure_default_token(db, first).await.unwrap());
    assert!(auth::check_token(db, first, "job").await.unwrap().is_ok());
    assert!(auth::check_token(db, first, "cluster")
        .await
        .unwrap()
        .is_ok());
    // A new value replaces the old token.
    let second = "env-token-bbbbbbbbbbbbbbbb";
    assert!(auth::ensure_default_token(db, second).await.unwrap());
    assert_eq!(
        auth::check_token(db, first, "job")
            .await
            .unwrap()
            .unwrap_err(),
        TokenRefusal::Unknown
    );
    assert!(auth::check_token(db, second, "job").await.unwrap().is_ok());
    let all = auth::list_tokens(db, None).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].name, "default");
    // Too short to be a secret.
    let e = auth::ensure_default_token(db, "short").await.unwrap_err();
    assert!(e.to_string().contains("DRAGONFLY_PAT"), "{e}");
}
