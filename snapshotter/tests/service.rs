//! The snapshotter's gRPC service over a unix socket, driven by containerd's own client types
//! (`containerd-client`) as containerd drives a proxy snapshotter: every RPC, the mounts of
//! containerd's overlayfs snapshotter, disk usage, filters, and containerd's error codes.

use std::collections::HashMap;
use std::sync::Arc;

use containerd_client::services::v1::snapshots as pb;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use snapshotter::{Overlay, SnapshotsServer};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

const SN: &str = "nydus";

async fn serve(root: &std::path::Path) -> SnapshotsClient<Channel> {
    let sock = root.join("snapshotter.sock");
    let overlay = Overlay::open(&root.join("state")).unwrap();
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(SnapshotsServer::new(Arc::new(overlay)))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await
            .unwrap();
    });
    let channel = Endpoint::from_static("http://[::1]:1")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let sock = sock.clone();
            async move {
                tokio::net::UnixStream::connect(sock)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .unwrap();
    SnapshotsClient::new(channel)
}

fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn prepare(
    c: &mut SnapshotsClient<Channel>,
    key: &str,
    parent: &str,
    l: &[(&str, &str)],
) -> Result<Vec<containerd_client::types::Mount>, tonic::Status> {
    c.prepare(pb::PrepareSnapshotRequest {
        snapshotter: SN.into(),
        key: key.into(),
        parent: parent.into(),
        labels: labels(l),
    })
    .await
    .map(|r| r.into_inner().mounts)
}

async fn commit(
    c: &mut SnapshotsClient<Channel>,
    name: &str,
    key: &str,
) -> Result<(), tonic::Status> {
    c.commit(pb::CommitSnapshotRequest {
        snapshotter: SN.into(),
        name: name.into(),
        key: key.into(),
        labels: HashMap::new(),
    })
    .await
    .map(drop)
}

async fn list(c: &mut SnapshotsClient<Channel>, filters: &[&str]) -> Vec<String> {
    let mut s = c
        .list(pb::ListSnapshotsRequest {
            snapshotter: SN.into(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut names = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        names.extend(m.info.into_iter().map(|i| i.name));
    }
    names.sort();
    names
}

#[tokio::test]
async fn every_rpc_behaves_as_containerds_overlayfs_snapshotter() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = serve(dir.path()).await;
    let state = dir.path().join("state");

    // A layer unpack: one bind mount of its own directory, read-write.
    let m = prepare(
        &mut c,
        "extract-1",
        "",
        &[("containerd.io/snapshot.ref", "sha256:l1")],
    )
    .await
    .unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].r#type.as_str(), m[0].options.join(",")),
        ("bind", "rw,rbind".into())
    );
    let fs1 = std::path::PathBuf::from(&m[0].source);
    assert!(fs1.starts_with(state.join("snapshots")) && fs1.is_dir());
    std::fs::write(fs1.join("hello"), vec![7u8; 10_000]).unwrap();
    commit(&mut c, "sha256:l1", "extract-1").await.unwrap();

    // A second layer on it, then the container: an overlay of both, with upper and work.
    prepare(
        &mut c,
        "extract-2",
        "sha256:l1",
        &[("containerd.io/snapshot.ref", "sha256:l2")],
    )
    .await
    .unwrap();
    commit(&mut c, "sha256:l2", "extract-2").await.unwrap();
    let m = prepare(&mut c, "ctr", "sha256:l2", &[]).await.unwrap();
    assert_eq!(m[0].r#type, "overlay");
    let opts = &m[0].options;
    let lower = opts
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap();
    assert_eq!(lower.split(':').count(), 2);
    assert!(lower.ends_with(&fs1.display().to_string()), "{lower}");
    assert!(opts.iter().any(|o| o.starts_with("upperdir=")));
    assert!(opts.iter().any(|o| o.starts_with("workdir=")));
    // Mounts answers the same.
    let again = c
        .mounts(pb::MountsRequest {
            snapshotter: SN.into(),
            key: "ctr".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(again, m);
    // A view of one layer: a read-only bind of it.
    let v = c
        .view(pb::ViewSnapshotRequest {
            snapshotter: SN.into(),
            key: "view".into(),
            parent: "sha256:l1".into(),
            labels: HashMap::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(
        (v[0].r#type.as_str(), v[0].source.as_str()),
        ("bind", m_source(&fs1))
    );
    assert_eq!(v[0].options, ["ro", "rbind"]);

    // Stat, Usage (the committed layer's 10 kB file), Update, List with filters.
    let info = c
        .stat(pb::StatSnapshotRequest {
            snapshotter: SN.into(),
            key: "sha256:l1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(info.kind, pb::Kind::Committed as i32);
    let u = c
        .usage(pb::UsageRequest {
            snapshotter: SN.into(),
            key: "sha256:l1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(u.size >= 10_000 && u.inodes >= 2, "{u:?}");
    let mut info = info;
    info.labels = labels(&[("containerd.io/gc.root", "yes")]);
    let updated = c
        .update(pb::UpdateSnapshotRequest {
            snapshotter: SN.into(),
            info: Some(info),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels.containerd.io/gc.root".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(updated.labels["containerd.io/gc.root"], "yes");
    assert_eq!(
        list(&mut c, &[]).await,
        ["ctr", "sha256:l1", "sha256:l2", "view"]
    );
    assert_eq!(list(&mut c, &["kind==active"]).await, ["ctr"]);
    assert_eq!(
        list(&mut c, &[r#"labels."containerd.io/gc.root""#, "name==view"]).await,
        ["sha256:l1", "view"]
    );

    // containerd's error codes.
    let code =
        |r: Result<Vec<containerd_client::types::Mount>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(prepare(&mut c, "ctr", "", &[]).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(prepare(&mut c, "x", "nope", &[]).await),
        Code::NotFound
    );
    assert_eq!(
        code(prepare(&mut c, "x", "ctr", &[]).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(prepare(&mut c, "", "", &[]).await),
        Code::InvalidArgument
    );
    assert_eq!(
        commit(&mut c, "n", "view").await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        commit(&mut c, "n", "gone").await.unwrap_err().code(),
        Code::NotFound
    );
    let rm = |key: &str| pb::RemoveSnapshotRequest {
        snapshotter: SN.into(),
        key: key.into(),
    };
    assert_eq!(
        c.remove(rm("sha256:l1")).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    let bad = c
        .list(pb::ListSnapshotsRequest {
            snapshotter: SN.into(),
            filters: vec!["name~=(".into()],
        })
        .await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);

    // A Nydus blob layer is committed at once: AlreadyExists, and it is there, empty.
    let e = prepare(
        &mut c,
        "extract-blob",
        "",
        &[
            ("containerd.io/snapshot.ref", "sha256:blob"),
            ("containerd.io/snapshot/nydus-blob", "true"),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e}");
    assert!(list(&mut c, &["name==sha256:blob"]).await == ["sha256:blob"]);
    assert!(list(&mut c, &["name==extract-blob"]).await.is_empty());

    // Remove, top down; Cleanup removes an orphaned directory and nothing else.
    for k in ["ctr", "view", "sha256:l2", "sha256:l1", "sha256:blob"] {
        c.remove(rm(k)).await.unwrap();
    }
    assert_eq!(
        c.remove(rm("ctr")).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(list(&mut c, &[]).await.is_empty());
    let orphan = state.join("snapshots/999");
    let other = state.join("snapshots/not-a-snapshot");
    std::fs::create_dir_all(orphan.join("fs")).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    c.cleanup(pb::CleanupRequest {
        snapshotter: SN.into(),
    })
    .await
    .unwrap();
    assert!(!orphan.exists() && other.exists());
    assert_eq!(
        std::fs::read_dir(state.join("snapshots")).unwrap().count(),
        1,
        "only the foreign directory is left"
    );
}

fn m_source(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// Keys, parents, commit names, Nydus blob targets and labels that look like paths never
/// become paths: everything the snapshotter makes is a numbered directory under its root,
/// nothing appears outside it, and the names come back unchanged.
#[tokio::test]
async fn names_and_labels_that_look_like_paths_stay_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = serve(dir.path()).await;
    let state = dir.path().join("state");
    let outside = dir.path().join("escaped");
    let evil = format!("../../{}", outside.display());
    let m = prepare(
        &mut c,
        &format!("{evil}/key"),
        "",
        &[
            ("containerd.io/snapshot.ref", &format!("{evil}/ref")),
            ("../../label", &evil),
        ],
    )
    .await
    .unwrap();
    let src = std::path::PathBuf::from(&m[0].source);
    assert!(src.starts_with(state.join("snapshots")), "{src:?}");
    commit(
        &mut c,
        &format!("/{evil}/committed"),
        &format!("{evil}/key"),
    )
    .await
    .unwrap();
    // A Nydus blob layer whose target is a path.
    let e = prepare(
        &mut c,
        "extract-evil",
        "",
        &[
            ("containerd.io/snapshot.ref", &format!("{evil}/blob")),
            ("containerd.io/snapshot/nydus-blob", "true"),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e}");
    // A container on the committed layer: its directories are numbered too.
    let m = prepare(&mut c, "../ctr", &format!("/{evil}/committed"), &[])
        .await
        .unwrap();
    for o in &m[0].options {
        if let Some(dirs) = o
            .strip_prefix("lowerdir=")
            .or_else(|| o.strip_prefix("upperdir="))
            .or_else(|| o.strip_prefix("workdir="))
        {
            for d in dirs.split(':') {
                let d = std::path::Path::new(d);
                assert!(d.starts_with(state.join("snapshots")), "{d:?}");
                let n = d.strip_prefix(state.join("snapshots")).unwrap();
                let first = n.components().next().unwrap().as_os_str().to_str().unwrap();
                assert!(first.parse::<u64>().is_ok(), "{d:?}");
            }
        }
    }
    assert!(!outside.exists(), "something was made outside the root");
    let mut names = list(&mut c, &[]).await;
    names.sort();
    let mut want = vec![
        format!("/{evil}/committed"),
        format!("{evil}/blob"),
        "../ctr".to_string(),
    ];
    want.sort();
    assert_eq!(names, want);
    // Everything under the root: numbered directories and the database, nothing else.
    for e in std::fs::read_dir(state.join("snapshots")).unwrap() {
        let n = e.unwrap().file_name();
        assert!(n.to_str().unwrap().parse::<u64>().is_ok(), "{n:?}");
    }
}
