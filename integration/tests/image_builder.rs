//! The image builder checked against independent OCI implementations: the feature image (every
//! kind of entry, whiteouts, opaque directories, hardlinks, xattrs, owners, devices, a sparse file
//! and a big random layer) pushed with skopeo to a plain and a token-auth docker-registry,
//! unpacked by umoci (the oracle other tests compare against) and by containerd; and a
//! two-platform image index.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use integration::containerd::HostsToml;
use integration::fstree::{assert_same_tree, Compare};
use integration::image::{
    feature_sparse_regions, CAP_NET_BIND_SERVICE_V2, FEATURE_BIG_SEED, FEATURE_SPARSE_LEN,
    MEDIA_TYPE_INDEX, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_ZSTD,
};
use integration::{
    build_oci_layout, feature_image_layers, feature_image_layers_with, oci_arch, random_bytes,
    require_root_and_tools, unpack_with_umoci, Compression, Containerd, FeatureImageOptions,
    ImageConfig, LayerSpec, OciImage, PlatformImage, RandomReader, Registry, SparseReader, TestDir,
};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
/// The big random layer of the full feature image.
const BIG_LAYER: u64 = 300 * MIB;
const REGISTRY_TOOLS: &[&str] = &["docker-registry", "skopeo", "umoci", "openssl"];
const CONTAINERD_TOOLS: &[&str] = &[
    "docker-registry",
    "skopeo",
    "umoci",
    "containerd",
    "ctr",
    "runc",
];

fn reader_sha256(mut r: impl Read) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

fn file_sha256(path: &Path) -> String {
    reader_sha256(fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display())))
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    rustix::fs::lgetxattr(path, name, &mut buf[..])
        .ok()
        .map(|n| buf[..n].to_vec())
}

fn xattr_names(path: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(path, &mut buf[..]).expect("listxattr");
    let mut v: Vec<String> = buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    v.sort();
    v
}

type XattrMap = BTreeMap<PathBuf, BTreeMap<String, Vec<u8>>>;

/// Every entry's xattrs (entries without any left out).
fn all_xattrs(root: &Path) -> XattrMap {
    walk(root)
        .into_iter()
        .filter_map(|rel| {
            let p = root.join(&rel);
            let x: BTreeMap<String, Vec<u8>> = xattr_names(&p)
                .into_iter()
                .map(|n| {
                    let v = xattr(&p, &n).unwrap();
                    (n, v)
                })
                .collect();
            (!x.is_empty()).then_some((rel, x))
        })
        .collect()
}

fn lstat(path: &Path) -> fs::Metadata {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
}

fn absent(path: &Path) -> bool {
    fs::symlink_metadata(path).is_err()
}

fn dir_names(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(path)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", path.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every path below `root` (relative).
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        if lstat(&p).is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                let r = rel.join(e.unwrap().file_name());
                out.push(r.clone());
                stack.push(r);
            }
        }
    }
    out
}

fn mode(md: &fs::Metadata) -> u32 {
    md.mode() & 0o7777
}

fn owner(md: &fs::Metadata) -> (u32, u32) {
    (md.uid(), md.gid())
}

fn read(root: &Path, rel: &str) -> Vec<u8> {
    fs::read(root.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// Asserts that `root` is the final tree of [`feature_image_layers_with`]`(opts)`, as its doc
/// comment describes it.
fn assert_feature_tree(root: &Path, opts: FeatureImageOptions) {
    let p = |rel: &str| root.join(rel);
    // No marker reaches the tree.
    let markers: Vec<_> = walk(root)
        .into_iter()
        .filter(|r| {
            r.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".wh."))
        })
        .collect();
    assert!(
        markers.is_empty(),
        "whiteout files in the tree: {markers:?}"
    );

    // Layer 1, as later layers left it.
    assert_eq!(read(root, "bin/busybox"), fs::read("/bin/busybox").unwrap());
    assert_eq!(mode(&lstat(&p("bin/busybox"))), 0o755);
    assert_eq!(fs::read_link(p("bin/sh")).unwrap(), Path::new("busybox"));
    assert_eq!(read(root, "etc/hello.txt"), b"hello-from-image\n");
    assert_eq!(lstat(&p("etc/hello.txt")).mtime(), 0);
    assert_eq!(mode(&lstat(&p("tmp"))), 0o1777);
    assert_eq!(read(root, "etc/empty"), b"");
    assert!(absent(&p("etc/removed.txt")), "whited-out file still there");
    assert!(absent(&p("etc/never-existed")));
    assert_eq!(read(root, "etc/replaced.txt"), b"v2, from layer 3\n");
    assert!(absent(&p("gone")), "whited-out directory still there");
    assert_eq!(dir_names(&p("opaque")), ["sub", "upper.txt"]);
    assert_eq!(dir_names(&p("opaque/sub")), ["upper-b.txt"]);
    assert_eq!(read(root, "opaque/upper.txt"), b"upper\n");
    assert_eq!(dir_names(&p("merged")), ["lower.txt", "upper.txt"]);
    assert_eq!(read(root, "lower/shared.txt"), b"shared across layers\n");
    assert!(lstat(&p("type-change/file-to-dir")).is_dir());
    assert_eq!(dir_names(&p("type-change/file-to-dir")), ["inside.txt"]);
    assert_eq!(
        fs::read_link(p("type-change/dir-to-symlink")).unwrap(),
        Path::new("file-to-dir")
    );

    // Layer 2: devices and fifo.
    let md = lstat(&p("dev/char-null"));
    assert!(md.file_type().is_char_device());
    assert_eq!(
        (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev())),
        (1, 3)
    );
    assert_eq!(mode(&md), 0o666);
    let md = lstat(&p("dev/block-loop"));
    assert!(md.file_type().is_block_device());
    assert_eq!(
        (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev())),
        (7, 300)
    );
    assert_eq!((mode(&md), owner(&md)), (0o660, (0, 6)));
    let md = lstat(&p("dev/fifo"));
    assert!(md.file_type().is_fifo());
    assert_eq!((mode(&md), owner(&md)), (0o620, (1000, 1000)));

    // Xattrs.
    assert_eq!(
        xattr(&p("caps/ping"), "security.capability").as_deref(),
        Some(&CAP_NET_BIND_SERVICE_V2[..])
    );
    assert_eq!(mode(&lstat(&p("caps/ping"))), 0o755);
    let f = p("xattrs/file.txt");
    assert_eq!(xattr(&f, "user.greeting").as_deref(), Some(&b"hi"[..]));
    assert_eq!(
        xattr_names(&f),
        ["trusted.note", "user.binary", "user.greeting"]
    );
    assert_eq!(
        xattr(&f, "user.binary").as_deref(),
        Some(&[0u8, 1, 0xff, 0xfe, b'=', b'\n', 0][..])
    );
    assert_eq!(xattr(&f, "trusted.note"), Some(random_bytes(3, 300)));
    let d = p("xattrs/dir");
    let md = lstat(&d);
    assert!(md.is_dir());
    assert_eq!((mode(&md), owner(&md)), (0o750, (1000, 1000)));
    assert_eq!(
        xattr(&d, "user.dir").as_deref(),
        Some(&b"on a directory"[..])
    );
    assert_eq!(xattr(&d, "trusted.dir").as_deref(), Some(&b"t"[..]));
    assert_eq!(read(root, "xattrs/dir/inner.txt"), b"inner\n");
    let d = p("xattrs/replaced-dir");
    let md = lstat(&d);
    assert_eq!((mode(&md), owner(&md)), (0o755, (0, 0)));
    assert_eq!(xattr_names(&d), ["user.upper"]);

    // Owners.
    for (rel, m, o) in [
        ("owners/user", 0o640, (1000, 1000)),
        ("owners/nobody", 0o644, (65534, 65534)),
        ("owners/big", 0o644, (100_000, 70_000)),
        ("owners/huge", 0o644, (3_000_000, 3_000_001)),
        ("owners/dir", 0o700, (1000, 1000)),
    ] {
        let md = lstat(&p(rel));
        assert_eq!((mode(&md), owner(&md)), (m, o), "{rel}");
    }
    let md = lstat(&p("owners/link"));
    assert!(md.file_type().is_symlink());
    assert_eq!(owner(&md), (42, 43));

    // Hardlinks within a layer, one name whited out by an upper layer.
    let orig = lstat(&p("links/orig"));
    assert_eq!(orig.nlink(), 3, "links/orig has 3 names left");
    for rel in ["links/hl-same-dir", "links/sub/hl-other-dir"] {
        let md = lstat(&p(rel));
        assert_eq!((md.dev(), md.ino()), (orig.dev(), orig.ino()), "{rel}");
    }
    assert!(absent(&p("links/hl-whited-out")));
    assert_eq!((mode(&orig), owner(&orig)), (0o640, (1000, 1000)));
    assert_eq!(
        xattr(&p("links/sub/hl-other-dir"), "user.link").as_deref(),
        Some(&b"orig"[..])
    );
    assert_eq!(read(root, "links/hl-same-dir"), b"shared by five names\n");
    let (a, z) = (lstat(&p("links/a-link")), lstat(&p("links/z-target")));
    assert_eq!((a.ino(), a.nlink()), (z.ino(), 2));
    let (a, b) = (lstat(&p("upper/a")), lstat(&p("upper/b")));
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    let shared = lstat(&p("lower/shared.txt"));
    if opts.cross_layer_hardlink {
        let up = lstat(&p("upper/to-lower"));
        assert_eq!(
            (up.ino(), up.nlink()),
            (shared.ino(), 2),
            "cross-layer hardlink"
        );
    } else {
        assert!(absent(&p("upper/to-lower")));
        assert_eq!(shared.nlink(), 1);
    }

    // Symlinks.
    for (rel, target) in [
        ("links/rel", "orig".to_string()),
        ("links/abs", "/etc/hello.txt".to_string()),
        ("links/dangling", "does/not/exist".to_string()),
        ("links/dir", "../xattrs/dir".to_string()),
        ("links/long", "t".repeat(300)),
    ] {
        assert_eq!(fs::read_link(p(rel)).unwrap(), Path::new(&target), "{rel}");
    }

    // Modes.
    for (rel, m) in [
        ("modes/setuid", 0o4755),
        ("modes/setgid", 0o2711),
        ("modes/sticky", 0o1777),
        ("modes/none", 0o000),
        ("modes/all", 0o777),
    ] {
        assert_eq!(mode(&lstat(&p(rel))), m, "{rel}");
    }

    // Sparse file, names, big file.
    let sparse = p("sparse/64m.img");
    assert_eq!(lstat(&sparse).len(), FEATURE_SPARSE_LEN);
    assert_eq!(
        file_sha256(&sparse),
        reader_sha256(SparseReader::new(
            FEATURE_SPARSE_LEN,
            feature_sparse_regions()
        ))
    );
    assert_eq!(
        dir_names(&p("names")),
        ["n".repeat(255), "ünïcödé-名前.txt".to_string()]
    );
    let big = p("big/random.bin");
    assert_eq!(lstat(&big).len(), opts.big_layer_bytes);
    assert_eq!(
        file_sha256(&big),
        reader_sha256(RandomReader::new(FEATURE_BIG_SEED, opts.big_layer_bytes))
    );

    // Nothing else at the top.
    assert_eq!(
        dir_names(root),
        [
            "big",
            "bin",
            "caps",
            "dev",
            "etc",
            "links",
            "lower",
            "merged",
            "modes",
            "names",
            "opaque",
            "owners",
            "sparse",
            "tmp",
            "type-change",
            "upper",
            "xattrs"
        ]
    );
}

async fn build(dir: &Path, tag: &str, layers: Vec<LayerSpec>) -> OciImage {
    let (dir, tag) = (dir.to_path_buf(), tag.to_string());
    tokio::task::spawn_blocking(move || {
        build_oci_layout(&dir, &tag, &layers, &ImageConfig::default())
    })
    .await
    .unwrap()
    .unwrap()
}

async fn umoci(layout: &Path, tag: &str, dest: &Path) -> PathBuf {
    let (layout, tag, dest) = (layout.to_path_buf(), tag.to_string(), dest.to_path_buf());
    tokio::task::spawn_blocking(move || unpack_with_umoci(&layout, &tag, &dest))
        .await
        .unwrap()
        .unwrap()
}

/// The layers' media types as the registry serves the manifest of `<repo>:<tag>`.
async fn registry_layer_types(registry: &Registry, repo: &str, tag: &str) -> Vec<String> {
    let (body, _, _) = registry.client().get_manifest(repo, tag).await.unwrap();
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feature_image_with_a_300mib_layer_pushes_everywhere_and_umoci_unpacks_the_expected_tree() {
    require_root_and_tools(REGISTRY_TOOLS);
    let dir = TestDir::new("feature-image").unwrap();
    let opts = FeatureImageOptions {
        big_layer_bytes: BIG_LAYER,
        cross_layer_hardlink: true,
    };
    let img = build(
        &dir.join("layout"),
        "v1",
        feature_image_layers(BIG_LAYER).unwrap(),
    )
    .await;
    assert_eq!(img.layers.len(), 5);
    assert!(
        img.layers[4].size > BIG_LAYER,
        "random data must not compress"
    );
    let want_types = [
        MEDIA_TYPE_LAYER_GZIP,
        MEDIA_TYPE_LAYER_ZSTD,
        MEDIA_TYPE_LAYER_TAR,
        MEDIA_TYPE_LAYER_GZIP,
        MEDIA_TYPE_LAYER_GZIP,
    ];

    let open = Registry::start(&dir).await.unwrap();
    let info = open
        .push_oci_image(&img, "feature/all", "v1")
        .await
        .unwrap();
    assert_eq!(info.manifest_digest, img.manifest_digest);
    assert_eq!(
        registry_layer_types(&open, "feature/all", "v1").await,
        want_types
    );

    let auth = Registry::start_with_token_auth(&dir).await.unwrap();
    let info = auth
        .push_oci_image(&img, "private/feature", "v1")
        .await
        .unwrap();
    assert_eq!(info.manifest_digest, img.manifest_digest);
    assert_eq!(
        registry_layer_types(&auth, "private/feature", "v1").await,
        want_types
    );
    // The registry serves the zstd layer byte for byte.
    let zstd_layer = &img.layers[1];
    let blob = auth
        .client()
        .get_blob("private/feature", &zstd_layer.digest)
        .await
        .unwrap();
    assert_eq!(integration::sha256_digest(&blob), zstd_layer.digest);

    let rootfs = umoci(&img.dir, "v1", &dir.join("rootfs")).await;
    let root = rootfs.clone();
    tokio::task::spawn_blocking(move || assert_feature_tree(&root, opts))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feature_image_layers_are_deterministic() {
    let dir = TestDir::new("feature-determinism").unwrap();
    let small = |cross| {
        feature_image_layers_with(FeatureImageOptions {
            big_layer_bytes: 3 * MIB + 7,
            cross_layer_hardlink: cross,
        })
        .unwrap()
    };
    let a = build(&dir.join("a"), "v1", small(true)).await;
    let b = build(&dir.join("b"), "v1", small(true)).await;
    assert_eq!(a.manifest_digest, b.manifest_digest);
    assert_eq!(a.layers, b.layers);
    let c = build(&dir.join("c"), "v1", small(false)).await;
    assert_eq!(c.layers[..3], a.layers[..3]);
    assert_ne!(c.layers[3], a.layers[3]);
    assert_eq!(c.layers[4], a.layers[4]);
}

/// Starts containerd pulling plain HTTP from `registry`.
async fn containerd_for(dir: &TestDir, registry: &Registry) -> Containerd {
    let hosts = dir.join("certs.d");
    HostsToml::direct(registry.url())
        .write(&hosts, &registry.addr())
        .unwrap();
    Containerd::start(dir, &hosts).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_and_umoci_unpack_the_feature_image_alike() {
    require_root_and_tools(CONTAINERD_TOOLS);
    let dir = TestDir::new("feature-containerd").unwrap();
    let registry = Registry::start(&dir).await.unwrap();
    let containerd = containerd_for(&dir, &registry).await;

    // Without the cross-layer hardlink, containerd (overlayfs snapshotter) and umoci agree on
    // every entry: type, content, mode, owner, xattrs, hardlink groups.
    let opts = FeatureImageOptions {
        big_layer_bytes: 5 * MIB,
        cross_layer_hardlink: false,
    };
    let img = build(
        &dir.join("layout"),
        "v1",
        feature_image_layers_with(opts).unwrap(),
    )
    .await;
    let info = registry
        .push_oci_image(&img, "feature/ctr", "v1")
        .await
        .unwrap();
    let rootfs = umoci(&img.dir, "v1", &dir.join("umoci-rootfs")).await;
    assert_feature_tree(&rootfs, opts);
    containerd.cri_pull(&info.reference).await.unwrap();
    let mnt = dir.join("ctr-mount");
    fs::create_dir_all(&mnt).unwrap();
    containerd
        .ctr_ok(&["images", "mount", &info.reference, mnt.to_str().unwrap()])
        .await
        .unwrap();
    let (a, b) = (rootfs.clone(), mnt.clone());
    let compared = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(|| {
            // containerd 1.6 refuses `trusted.*` xattrs from layers ("admin attributes from
            // archive not supported"); everything else is the same.
            assert_same_tree(
                &a,
                &b,
                Compare {
                    mtime: false,
                    root_meta: false,
                    xattrs: false,
                    ..Compare::ALL
                },
            );
            let (xa, xb) = (all_xattrs(&a), all_xattrs(&b));
            let untrusted = |m: &XattrMap| -> XattrMap {
                m.iter()
                    .map(|(p, x)| {
                        let kept = x
                            .iter()
                            .filter(|(k, _)| !k.starts_with("trusted."))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        (p.clone(), kept)
                    })
                    .collect()
            };
            assert_eq!(untrusted(&xa), untrusted(&xb), "xattrs besides trusted.*");
            assert!(xa
                .values()
                .flat_map(|x| x.keys())
                .any(|k| k.starts_with("trusted.")));
            assert!(!xb
                .values()
                .flat_map(|x| x.keys())
                .any(|k| k.starts_with("trusted.")));
        })
    })
    .await
    .unwrap();
    containerd
        .ctr_ok(&["images", "unmount", mnt.to_str().unwrap()])
        .await
        .unwrap();
    if let Err(e) = compared {
        std::panic::resume_unwind(e);
    }

    // With it, the layer holds a hardlink to a file of a lower layer. umoci links it (see
    // assert_feature_tree); containerd 1.6 extracts each layer straight into the snapshot's
    // overlayfs upper directory, where the lower target does not exist, so the pull fails.
    let cross = build(
        &dir.join("layout-cross"),
        "v1",
        feature_image_layers(5 * MIB).unwrap(),
    )
    .await;
    let info = registry
        .push_oci_image(&cross, "feature/ctr-cross", "v1")
        .await
        .unwrap();
    let rootfs = umoci(&cross.dir, "v1", &dir.join("umoci-rootfs-cross")).await;
    assert_feature_tree(
        &rootfs,
        FeatureImageOptions {
            cross_layer_hardlink: true,
            ..opts
        },
    );
    let pulled = containerd.cri_pull(&info.reference).await;
    eprintln!("containerd pull of the image with a cross-layer hardlink: {pulled:?}");
    let err = pulled.expect_err("containerd 1.6 unpacked a hardlink to a lower layer's file");
    let msg = err.to_string();
    assert!(
        msg.contains("link") && msg.contains("no such file"),
        "unexpected error: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_platform_index_is_served_with_both_platforms_and_resolves_to_amd64_here() {
    require_root_and_tools(CONTAINERD_TOOLS);
    assert_eq!(oci_arch(), "amd64", "this test expects an amd64 machine");
    let dir = TestDir::new("image-index").unwrap();
    let registry = Registry::start(&dir).await.unwrap();
    let auth = Registry::start_with_token_auth(&dir).await.unwrap();
    let platform = |arch: &str| {
        PlatformImage::linux(
            arch,
            vec![
                LayerSpec::busybox(Compression::Gzip).unwrap(),
                LayerSpec::new(Compression::Zstd).file("etc/arch", format!("{arch}\n"), 0o644),
            ],
        )
    };
    let platforms = [platform("amd64"), platform("arm64")];
    let mut infos = Vec::new();
    for (reg, repo) in [(&registry, "multi/arch"), (&auth, "private/multi")] {
        let info = reg.push_image_index(repo, "v1", &platforms).await.unwrap();
        let (body, content_type, digest) = reg.client().get_manifest(repo, "v1").await.unwrap();
        assert_eq!(digest, info.index_digest);
        assert_eq!(content_type, MEDIA_TYPE_INDEX);
        let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let listed: BTreeSet<(String, String)> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    format!(
                        "{}/{}",
                        m["platform"]["os"].as_str().unwrap(),
                        m["platform"]["architecture"].as_str().unwrap()
                    ),
                    m["digest"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want: BTreeSet<(String, String)> = info
            .manifests
            .iter()
            .map(|(p, i)| (p.clone(), i.manifest_digest.clone()))
            .collect();
        assert_eq!(listed, want);
        assert_eq!(listed.len(), 2);
        // Each platform's manifest and config are in the registry, configs with their arch.
        for (p, image) in &info.manifests {
            let (m, _, d) = reg
                .client()
                .get_manifest(repo, &image.manifest_digest)
                .await
                .unwrap();
            assert_eq!(d, image.manifest_digest);
            let m: serde_json::Value = serde_json::from_slice(&m).unwrap();
            let cfg = reg
                .client()
                .get_blob(repo, m["config"]["digest"].as_str().unwrap())
                .await
                .unwrap();
            let cfg: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
            assert_eq!(
                format!("linux/{}", cfg["architecture"].as_str().unwrap()),
                *p
            );
        }
        // umoci picks this machine's platform from the index.
        let rootfs = umoci(
            &info.oci_dir,
            "v1",
            &dir.join(format!("rootfs-{}", reg.port())),
        )
        .await;
        assert_eq!(read(&rootfs, "etc/arch"), b"amd64\n");
        infos.push(info);
    }

    // containerd on this (amd64) machine resolves the index to the amd64 manifest.
    let info = &infos[0];
    let amd64 = info.platform("linux/amd64").expect("amd64 in the index");
    let containerd = containerd_for(&dir, &registry).await;
    let image_id = containerd.cri_pull(&info.reference).await.unwrap();
    assert_eq!(image_id, amd64.config.0);
    let out = containerd
        .ctr_run(&info.reference, &["/bin/busybox", "cat", "/etc/arch"])
        .await
        .unwrap();
    assert_eq!(out, "amd64\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn umoci_drops_empty_selinux_and_overlay_xattrs_and_keeps_the_rest() {
    require_root_and_tools(&["umoci"]);
    let dir = TestDir::new("umoci-xattrs").unwrap();
    let mut layer = LayerSpec::new(Compression::Gzip).file("f", &b"f\n"[..], 0o644);
    for (name, value) in [
        ("user.kept", &b"v"[..]),
        ("user.binary", &[0u8, b'\n', 0xff][..]),
        ("trusted.kept", &b"t"[..]),
        ("security.capability", &CAP_NET_BIND_SERVICE_V2[..]),
        ("user.empty", &b""[..]),
        ("trusted.empty", &b""[..]),
        ("security.selinux", &b"system_u:object_r:etc_t:s0"[..]),
        ("system.nfs4_acl", &b"\0\0\0\0"[..]),
        ("trusted.overlay.opaque", &b"y"[..]),
        ("trusted.overlay.redirect", &b"/x"[..]),
        ("trusted.overlay.origin", &b"o"[..]),
        ("trusted.overlay.impure", &b"y"[..]),
        ("trusted.overlay.nlink", &b"U+0"[..]),
    ] {
        layer = layer.xattr("f", name, value);
    }
    let img = build(&dir.join("layout"), "v1", vec![layer]).await;
    let rootfs = umoci(&img.dir, "v1", &dir.join("rootfs")).await;
    let f = rootfs.join("f");
    assert_eq!(
        xattr_names(&f),
        [
            "security.capability",
            "trusted.kept",
            "user.binary",
            "user.kept"
        ]
    );
    assert_eq!(
        xattr(&f, "user.binary").as_deref(),
        Some(&[0u8, b'\n', 0xff][..])
    );
}
