//! The `manager` binary: a config error names the key and exits 2; the root user's first
//! password from `DRAGONFLY_INITIAL_ROOT_PASSWORD`, with no password file written.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_manager");

#[test]
fn a_config_error_names_the_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("manager.yaml");
    std::fs::write(&cfg, "server:\n  rest:\n    adress: ':8080'\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("adress") && err.contains("manager.yaml"),
        "{err}"
    );
}

#[test]
fn the_initial_root_password_comes_from_the_environment() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("manager.yaml");
    let work = dir.path().join("work");
    // A free loopback port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &cfg,
        format!(
            "server:\n  workHome: {}\n  rest:\n    addr: 127.0.0.1:{port}\n",
            work.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap()])
        .env("DRAGONFLY_INITIAL_ROOT_PASSWORD", "correct horse battery")
        .env("DRAGONFLY_PAT", "pat-from-the-environment-0123456789")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let result = rt.block_on(async {
        let c = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = c.get(format!("{url}/healthy")).send().await {
                assert_eq!(r.status(), 200);
                assert_eq!(r.text().await.unwrap(), "OK");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the manager did not answer /healthy"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let signin = c
            .post(format!("{url}/api/v1/users/signin"))
            .json(&serde_json::json!({"name": "root", "password": "correct horse battery"}))
            .send()
            .await
            .unwrap();
        assert_eq!(signin.status(), 200);
        let session: serde_json::Value = signin.json().await.unwrap();
        let tokens: Vec<serde_json::Value> = c
            .get(format!("{url}/api/v1/personal-access-tokens"))
            .bearer_auth(session["token"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(tokens.len(), 1, "{tokens:?}");
        assert_eq!(tokens[0]["name"], "default");
        assert_eq!(tokens[0]["scopes"], serde_json::json!(["job", "cluster"]));
        assert_eq!(tokens[0]["user_id"], 1);
        200
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(result, 200);
    assert!(!work.join("initial-root-password").exists());
    assert!(work.join("manager.db").exists());
}
