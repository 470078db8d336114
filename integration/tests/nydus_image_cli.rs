//! `nydus-image` run with the command lines Nydus's own tools use, so ours can stand in for
//! theirs. The argument lists below are copied from (as of the versions read):
//!
//! - nydus-snapshotter `pkg/converter/tool/builder.go` (main `a7a1f07`, v0.15.15-48): `Pack`
//!   (`buildPackArgs` with the tar-rafs feature), `Merge` and `Unpack`, and
//!   `pkg/converter/tool/feature.go`, which looks for flags in `nydus-image create -h`;
//! - nydusify `contrib/nydusify/pkg/checker/tool/builder.go` (`Check`) and `inspector.go`
//!   (`inspect --request blobs`) in dragonflyoss/nydus (master `34e6071e`, v2.4.4-8).
//!
//! No root needed: layers are tars made here, blobs and outputs are fifos where the snapshotter
//! uses fifos.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;

use integration::agent::bin;
use integration::fstree::pseudo_random;
use integration::TestDir;
use nydus::toc::{Toc, TAR_HEADER_SIZE};
use nydus::v6::Bootstrap;
use sha2::{Digest as _, Sha256};

/// Runs our `nydus-image` with `stdin` as its standard input.
fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(bin("nydus-image"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run nydus-image: {e}"));
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // A child that never reads its stdin must not block the test.
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

fn ok(args: &[&str], stdin: &[u8]) -> Output {
    let out = run(args, stdin);
    assert!(
        out.status.success(),
        "nydus-image {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command that must fail, and returns its stderr.
fn refused(args: &[&str]) -> String {
    let out = run(args, b"");
    assert!(
        !out.status.success(),
        "nydus-image {} succeeded but should not have",
        args.join(" ")
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

fn mkfifo(p: &Path) {
    rustix::fs::mkfifoat(rustix::fs::CWD, p, rustix::fs::Mode::from_raw_mode(0o600))
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", p.display()));
}

/// Reads everything written to fifo `p`, in the background.
fn drain_fifo(p: &Path) -> JoinHandle<Vec<u8>> {
    let p = p.to_path_buf();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        fs::File::open(&p).unwrap().read_to_end(&mut out).unwrap();
        out
    })
}

/// Writes `data` into fifo `p`, in the background.
fn feed_fifo(p: &Path, data: Vec<u8>) -> JoinHandle<()> {
    let p = p.to_path_buf();
    std::thread::spawn(move || {
        let mut f = fs::OpenOptions::new().write(true).open(&p).unwrap();
        // The reader may stop early (it failed): that is for the exit status to report.
        let _ = f.write_all(&data);
    })
}

/// Lets threads blocked opening fifo `p` go on, if the command exited without opening it.
fn release_fifo(p: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let nonblock = rustix::fs::OFlags::NONBLOCK.bits() as i32;
    let _ = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nonblock)
        .open(p);
    let _ = fs::OpenOptions::new()
        .write(true)
        .custom_flags(nonblock)
        .open(p);
}

/// One entry of a layer tar.
enum E {
    Dir(&'static str),
    File(&'static str, Vec<u8>),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
}

fn layer_tar(entries: &[E]) -> Vec<u8> {
    let mut ar = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                ar.append_data(&mut h, format!("{p}/"), std::io::empty())
            }
            E::File(p, data) => {
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                ar.append_data(&mut h, p, &data[..])
            }
            E::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                ar.append_link(&mut h, p, target)
            }
            E::Hardlink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                ar.append_link(&mut h, p, target)
            }
        }
        .unwrap();
    }
    ar.into_inner().unwrap()
}

/// One entry of a tar as compared here.
#[derive(Debug, PartialEq, Eq)]
struct Item {
    kind: u8,
    mode: u32,
    owner: (u64, u64),
    mtime: u64,
    /// File data, or the link target.
    data: Vec<u8>,
}

/// What a tar holds, by path (without `./` and trailing `/`; the root left out).
fn tar_contents(bytes: &[u8]) -> BTreeMap<String, Item> {
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(bytes);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if path.is_empty() || path == "." {
            continue;
        }
        let h = e.header().clone();
        let mut data = Vec::new();
        match h.entry_type() {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                data = e.link_name_bytes().unwrap().into_owned();
            }
            _ => {
                e.read_to_end(&mut data).unwrap();
            }
        }
        let item = Item {
            kind: h.entry_type().as_byte(),
            mode: h.mode().unwrap(),
            owner: (h.uid().unwrap(), h.gid().unwrap()),
            mtime: h.mtime().unwrap(),
            data,
        };
        out.insert(path, item);
    }
    out
}

/// A section of a Nydus blob as nydus-snapshotter's `UnpackEntry` finds it: through the TOC,
/// inflated when the TOC says zstd.
fn blob_entry(blob: &[u8], name: &str) -> Vec<u8> {
    let toc = Toc::parse_from_tail(blob).unwrap();
    let e = toc
        .find(name)
        .unwrap_or_else(|| panic!("no {name} in the TOC"));
    let stored = &blob[e.compressed_offset as usize..][..e.compressed_size as usize];
    let mut out = Vec::new();
    match e.compressor().unwrap() {
        nydus::Compressor::None => out.extend_from_slice(stored),
        c => nydus::codec::decompress_bounded(c, stored, e.uncompressed_size as usize, &mut out)
            .unwrap(),
    }
    out
}

/// The layers of the test image: files, a directory and a symlink, a hardlink, then an upper
/// layer that overwrites, deletes (`.wh.`) and makes a directory opaque, one more, and one
/// without file data (a whiteout and a directory, as `RUN rm` and `RUN mkdir` make).
fn layers() -> Vec<Vec<E>> {
    vec![
        vec![
            E::Dir("etc"),
            E::File("etc/conf", b"v1".to_vec()),
            E::File("etc/old", b"old".to_vec()),
            E::Dir("opq"),
            E::File("opq/a", b"a".to_vec()),
            E::File("big", pseudo_random(1, 300_000)),
            E::Hardlink("big-hl", "big"),
            E::Symlink("link", "etc/conf"),
        ],
        vec![
            E::Dir("etc"),
            E::File("etc/conf", b"v2".to_vec()),
            E::File("etc/.wh.old", Vec::new()),
            E::Dir("opq"),
            E::File("opq/.wh..wh..opq", Vec::new()),
            E::File("opq/b", b"b".to_vec()),
            E::File("new", b"new".to_vec()),
        ],
        vec![
            E::File(".wh.link", Vec::new()),
            E::File("top", b"top".to_vec()),
            E::File("big2", pseudo_random(2, 100_000)),
        ],
        vec![E::File(".wh.new", Vec::new()), E::Dir("made")],
    ]
}

/// A layer as nydus-snapshotter leaves it after `Pack`: the blob (stored under its digest), the
/// bootstrap and the chunk data extracted from it, and the TOC numbers `Merge` passes on.
struct Packed {
    tar: Vec<u8>,
    digest: String,
    size: u64,
    /// sha256 of the TOC entries, as the snapshotter's `calcBlobTOCDigest` hashes them.
    toc_digest: String,
    toc_size: u32,
    /// The layer bootstrap, named by the layer digest as the snapshotter names it.
    bootstrap: PathBuf,
    /// The `image.blob` section alone, which the snapshotter gives `unpack` as `--blob`.
    data: PathBuf,
}

/// `Pack` of nydus-snapshotter with the tar-rafs feature, the source and the blob being fifos
/// and the prefetch patterns (default `/`) on stdin.
fn pack(dir: &Path, i: usize, tar: Vec<u8>, blobs: &Path) -> Packed {
    let src = dir.join(format!("src{i}.fifo"));
    let blob = dir.join(format!("blob{i}.fifo"));
    mkfifo(&src);
    mkfifo(&blob);
    let feeder = feed_fifo(&src, tar.clone());
    let reader = drain_fifo(&blob);
    let args = [
        "create",
        "--log-level",
        "warn",
        "--prefetch-policy",
        "fs",
        "--blob",
        s(&blob),
        "--whiteout-spec",
        "none",
        "--fs-version",
        "6",
        "--type",
        "tar-rafs",
        "--blob-inline-meta",
        "--features",
        "blob-toc",
        "--compressor",
        "zstd",
        "--aligned-chunk",
        "--chunk-size",
        "0x100000",
        s(&src),
    ];
    let out = run(&args, b"/");
    release_fifo(&src);
    release_fifo(&blob);
    feeder.join().unwrap();
    let bytes = reader.join().unwrap();
    assert!(
        out.status.success(),
        "Pack of layer {i} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.is_empty(),
        "--log-level warn keeps stdout quiet: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let digest = sha256_hex(&bytes);
    fs::write(blobs.join(&digest), &bytes).unwrap();
    let toc = Toc::parse_from_tail(&bytes).unwrap();
    let entries_end = bytes.len() - TAR_HEADER_SIZE;
    let entries = &bytes[bytes.len() - toc.size() as usize..entries_end];
    let bootstrap = dir.join(&digest);
    fs::write(&bootstrap, blob_entry(&bytes, "image.boot")).unwrap();
    // Like the snapshotter, an empty file when the layer has no chunk data.
    let data = dir.join(format!("{digest}.data"));
    let has_data = Toc::parse_from_tail(&bytes)
        .unwrap()
        .find("image.blob")
        .is_some();
    let chunk_data = if has_data {
        blob_entry(&bytes, "image.blob")
    } else {
        Vec::new()
    };
    fs::write(&data, chunk_data).unwrap();
    Packed {
        tar,
        size: bytes.len() as u64,
        digest,
        toc_digest: sha256_hex(entries),
        toc_size: toc.size(),
        bootstrap,
        data,
    }
}

fn blob_table(boot: &Path) -> Vec<nydus::v6::BlobEntry> {
    let bytes = fs::read(boot).unwrap();
    Bootstrap::parse(&bytes).unwrap().blobs().to_vec()
}

fn ids(table: &[nydus::v6::BlobEntry]) -> Vec<String> {
    table
        .iter()
        .map(|e| e.blob_id().unwrap().to_string())
        .collect()
}

/// The JSON strings of `v[key]`.
fn strings(v: &serde_json::Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not an array in {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// Pack, Merge, Unpack (nydus-snapshotter) and check, inspect (nydusify) with their exact
/// command lines on a four-layer image: every command is accepted, the JSON files hold what
/// those tools read, the merged blob table holds the digests, sizes and TOC numbers given, and
/// unpack gives back each layer tar and the merged image.
#[test]
fn upstream_command_lines_build_merge_check_and_unpack_an_image() {
    let dir = TestDir::new("ni-cli-upstream").unwrap();
    let blobs = dir.join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let packed: Vec<Packed> = layers()
        .iter()
        .enumerate()
        .map(|(i, l)| pack(dir.path(), i, layer_tar(l), &blobs))
        .collect();
    let digests: Vec<String> = packed.iter().map(|p| p.digest.clone()).collect();
    let sources: Vec<&str> = packed.iter().map(|p| s(&p.bootstrap)).collect();

    // Merge as the snapshotter runs it for a plain (non-ref) image: no per-layer lists, so the
    // layer blobs are named by the bootstrap file names (the layer digests).
    let merged = dir.join("bootstrap");
    let out_json = dir.join("merge-output.json");
    let mut args = vec![
        "merge",
        "--log-level",
        "warn",
        "--prefetch-policy",
        "fs",
        "--output-json",
        s(&out_json),
        "--bootstrap",
        s(&merged),
    ];
    args.extend(&sources);
    ok(&args, b"/");
    // tool.Merge reads `outputJSON{Blobs []string}` and turns each into sha256:<hex>: the
    // blobs the image uses, so not the last layer's, which holds no file data.
    let v = read_json(&out_json);
    let mut listed = strings(&v, "blobs");
    listed.sort();
    let mut expected = digests[..3].to_vec();
    expected.sort();
    assert_eq!(listed, expected, "{v}");
    // The rest of Nydus's OutputSerializer, with its types.
    assert_eq!(v["bootstrap"], s(&merged));
    assert_eq!(v["fs_version"], "6");
    assert_eq!(v["compressor"], "zstd");
    assert!(v["version"].is_string() && v["external_bootstrap"] == "");
    assert!(v["external_blobs"].as_array().unwrap().is_empty());
    assert!(v["trace"].is_object());
    assert_eq!(ids(&blob_table(&merged)), strings(&v, "blobs"));
    // The prefetch pattern `/` read from stdin is one prefetch table entry.
    let bytes = fs::read(&merged).unwrap();
    assert_eq!(Bootstrap::parse(&bytes).unwrap().prefetch_nids().count(), 1);

    // nydusify check: `check --log-level warn --output-json F --bootstrap B`, then
    // rule/bootstrap.go reads `output{Blobs []string json:"blobs"}`.
    let check_json = dir.join("nydus_output.json");
    ok(
        &[
            "check",
            "--log-level",
            "warn",
            "--output-json",
            s(&check_json),
            "--bootstrap",
            s(&merged),
        ],
        b"",
    );
    let c = read_json(&check_json);
    assert_eq!(strings(&c, "blobs"), strings(&v, "blobs"), "{c}");
    assert_eq!(c["bootstrap"], s(&merged));
    assert_eq!(c["fs_version"], "6");
    // The positional form, with the blobs read and every chunk checked.
    let check2 = dir.join("check2.json");
    ok(
        &["check", s(&merged), "-D", s(&blobs), "-J", s(&check2)],
        b"",
    );
    assert_eq!(read_json(&check2)["blobs"], c["blobs"]);

    // nydusify packer: `inspect B --request blobs` into tool.BlobInfo{BlobID "blob_id",
    // CompressedSize "compressed_size", DecompressedSize "decompressed_size",
    // ReadaheadOffset "readahead_offset", ReadaheadSize "readahead_size"}.
    let out = ok(&["inspect", s(&merged), "--request", "blobs"], b"");
    let infos: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let table = blob_table(&merged);
    assert_eq!(infos.as_array().unwrap().len(), table.len());
    for (info, e) in infos.as_array().unwrap().iter().zip(&table) {
        assert_eq!(info["blob_id"], e.blob_id().unwrap());
        assert_eq!(info["compressed_size"], e.compressed_size);
        assert_eq!(info["decompressed_size"], e.uncompressed_size);
        assert!(info["readahead_offset"].is_u64() && info["readahead_size"].is_u64());
    }

    // The merged image: layers stacked with their whiteouts applied.
    let tar = dir.join("merged.tar");
    ok(
        &[
            "unpack",
            "-B",
            s(&merged),
            "-D",
            s(&blobs),
            "--output",
            s(&tar),
        ],
        b"",
    );
    let image = tar_contents(&fs::read(&tar).unwrap());
    let names: Vec<&str> = image.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        ["big", "big-hl", "big2", "etc", "etc/conf", "made", "opq", "opq/b", "top"]
    );
    assert_eq!(image["etc/conf"].data, b"v2");
    assert_eq!(image["big"].data, pseudo_random(1, 300_000));
    assert_eq!(image["big-hl"].data, b"big", "still a hardlink");
    assert_eq!(image["big2"].data, pseudo_random(2, 100_000));

    // tool.Unpack per layer: the layer bootstrap, the chunk data alone as --blob, and a fifo as
    // --output (read while it is written). The tar is the layer tar, whiteouts included.
    for (i, p) in packed.iter().enumerate() {
        let fifo = dir.join(format!("oci{i}.tar"));
        mkfifo(&fifo);
        let reader = drain_fifo(&fifo);
        let out = run(
            &[
                "unpack",
                "--log-level",
                "warn",
                "--bootstrap",
                s(&p.bootstrap),
                "--output",
                s(&fifo),
                "--blob",
                s(&p.data),
            ],
            b"",
        );
        release_fifo(&fifo);
        let tar = reader.join().unwrap();
        assert!(
            out.status.success(),
            "unpack of layer {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(tar_contents(&tar), tar_contents(&p.tar), "layer {i}");
    }

    // Merge with every per-layer flag, on a parent image (layer 0 merged alone) and with a
    // chunk dictionary: the layers' own blobs in the merged table carry the given digests
    // (their ids), sizes and TOC digests and sizes; the parent's blob stays as it was.
    let parent = dir.join("parent.boot");
    ok(&["merge", "--bootstrap", s(&parent), sources[0]], b"");
    let parent_entry = blob_table(&parent)[0];
    assert_eq!(parent_entry.blob_id().unwrap(), digests[0]);
    let full = dir.join("full.boot");
    let full_json = dir.join("full.json");
    let upper = &packed[1..];
    let join = |f: &dyn Fn(&Packed) -> String| upper.iter().map(f).collect::<Vec<_>>().join(",");
    let (blob_digests, blob_sizes, toc_digests, toc_sizes, original) = (
        join(&|p| p.digest.clone()),
        join(&|p| p.size.to_string()),
        join(&|p| p.toc_digest.clone()),
        join(&|p| p.toc_size.to_string()),
        join(&|p| format!("orig-{}", &p.digest[..8])),
    );
    let chunk_dict = format!("bootstrap={}", s(&parent));
    ok(
        &[
            "merge",
            "--log-level",
            "warn",
            "--prefetch-policy",
            "fs",
            "--output-json",
            s(&full_json),
            "--bootstrap",
            s(&full),
            "--chunk-dict",
            &chunk_dict,
            "--parent-bootstrap",
            s(&parent),
            s(&upper[0].bootstrap),
            s(&upper[1].bootstrap),
            s(&upper[2].bootstrap),
            "--blob-digests",
            &blob_digests,
            "--original-blob-ids",
            &original,
            "--blob-sizes",
            &blob_sizes,
            "--blob-toc-digests",
            &toc_digests,
            "--blob-toc-sizes",
            &toc_sizes,
        ],
        b"/",
    );
    let table = blob_table(&full);
    assert_eq!(ids(&table), strings(&read_json(&full_json), "blobs"));
    let by_id: BTreeMap<String, nydus::v6::BlobEntry> = table
        .iter()
        .map(|e| (e.blob_id().unwrap().to_string(), *e))
        .collect();
    assert_eq!(by_id.len(), 3, "{:?}", by_id.keys());
    assert_eq!(
        by_id[&digests[0]].compressed_size,
        parent_entry.compressed_size
    );
    assert_eq!(
        by_id[&digests[0]].blob_toc_digest,
        parent_entry.blob_toc_digest
    );
    assert!(
        !by_id.contains_key(&upper[2].digest),
        "a layer without file data has no blob in the image"
    );
    for p in &upper[..2] {
        let e = &by_id[&p.digest];
        assert_eq!(e.compressed_size, p.size, "--blob-sizes");
        assert_eq!(hex(&e.blob_toc_digest), p.toc_digest, "--blob-toc-digests");
        assert_eq!(e.blob_toc_size, p.toc_size, "--blob-toc-sizes");
    }
    // The same image as merging the three layers.
    let tar = dir.join("full.tar");
    ok(
        &["unpack", s(&full), "-D", s(&blobs), "--output", s(&tar)],
        b"",
    );
    assert_eq!(tar_contents(&fs::read(&tar).unwrap()), image);

    // --original-blob-ids alone names the layers' blobs.
    let named = dir.join("named.boot");
    let originals: Vec<String> = (0..4).map(|i| format!("layer-{i}")).collect();
    let list = originals.join(",");
    let mut args = vec![
        "merge",
        "--bootstrap",
        s(&named),
        "--original-blob-ids",
        list.as_str(),
    ];
    args.extend(&sources);
    ok(&args, b"");
    let mut got = ids(&blob_table(&named));
    got.sort();
    assert_eq!(got, originals[..3]);
}

/// `create` writes Nydus's output JSON: `blobs` lists the new blob by its real id (nydusify's
/// build workflow reads `debugJSON{Version, Blobs}` and takes the last blob), `bootstrap` is
/// the bootstrap path or "" for an inline bootstrap; the help lists what the snapshotter's
/// feature detection greps for; `--log-level` decides whether the summary is printed.
#[test]
fn create_output_json_help_and_log_level_are_nydus_shaped() {
    let dir = TestDir::new("ni-cli-create").unwrap();
    let tar = dir.join("layer.tar");
    fs::write(&tar, layer_tar(&layers()[0])).unwrap();
    let blob = dir.join("blob");
    let json = dir.join("out.json");
    let out = ok(
        &[
            "create",
            "-t",
            "tar-rafs",
            "--blob-inline-meta",
            "--features",
            "blob-toc",
            "--blob",
            s(&blob),
            "-J",
            s(&json),
            s(&tar),
        ],
        b"",
    );
    assert!(
        !out.stdout.is_empty(),
        "info (the default) prints a summary"
    );
    let v = read_json(&json);
    assert_eq!(
        strings(&v, "blobs"),
        [sha256_hex(&fs::read(&blob).unwrap())],
        "{v}"
    );
    assert_eq!(v["bootstrap"], "");
    assert_eq!(v["fs_version"], "6");
    assert_eq!(v["compressor"], "zstd");
    assert!(v["version"].is_string() && v["trace"].is_object());

    // With a separate bootstrap and a parent: every blob of the table, the new one last.
    let boot = dir.join("boot");
    let boot2 = dir.join("boot2");
    let blobs = dir.join("blobs");
    ok(
        &[
            "create",
            "-t",
            "tar-rafs",
            "-D",
            s(&blobs),
            "-B",
            s(&boot),
            s(&tar),
        ],
        b"",
    );
    let tar2 = dir.join("layer2.tar");
    fs::write(&tar2, layer_tar(&layers()[1])).unwrap();
    ok(
        &[
            "create",
            "--type",
            "tar-rafs",
            "--parent-bootstrap",
            s(&boot),
            "-D",
            s(&blobs),
            "-B",
            s(&boot2),
            "-J",
            s(&json),
            "--whiteout-spec",
            "oci",
            s(&tar2),
        ],
        b"",
    );
    let v = read_json(&json);
    assert_eq!(v["bootstrap"], s(&boot2));
    assert_eq!(strings(&v, "blobs"), ids(&blob_table(&boot2)));
    assert_eq!(strings(&v, "blobs").len(), 2);

    // feature.go: `--type` and `tar-rafs` (tar2rafs), `--batch-size`, `--encrypt`.
    let help = String::from_utf8(ok(&["create", "-h"], b"").stdout).unwrap();
    for word in [
        "--type",
        "tar-rafs",
        "--batch-size",
        "--encrypt",
        "--whiteout-spec",
    ] {
        assert!(
            help.contains(word),
            "{word} missing from create -h:\n{help}"
        );
    }

    // The old snapshotter spellings of a directory build, and quiet levels.
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let out = ok(
        &[
            "create",
            "--log-level",
            "error",
            "--source-type",
            "directory",
            "--inline-bootstrap",
            "--blob",
            s(&dir.join("dirblob")),
            "--batch-size",
            "0",
            "--blob-data-size",
            "0x1000",
            s(&src),
        ],
        b"",
    );
    assert!(out.stdout.is_empty());
}

/// Layer bootstraps built on an image (with --parent-bootstrap) list that image's blobs as well
/// as their own: merge takes them as chunk dictionary blobs with --chunk-dict and refuses a
/// layer with two blobs of its own without it.
#[test]
fn merge_chunk_dict_marks_the_shared_blobs() {
    let dir = TestDir::new("ni-cli-dict").unwrap();
    let blobs = dir.join("blobs");
    let base_tar = dir.join("base.tar");
    fs::write(&base_tar, layer_tar(&layers()[0])).unwrap();
    let base = dir.join("base.boot");
    ok(
        &[
            "create",
            "-t",
            "tar-rafs",
            "-D",
            s(&blobs),
            "-B",
            s(&base),
            s(&base_tar),
        ],
        b"",
    );
    let mut layer_boots = Vec::new();
    for i in 1..3 {
        let tar = dir.join(format!("l{i}.tar"));
        fs::write(&tar, layer_tar(&layers()[i])).unwrap();
        let boot = dir.join(format!("l{i}.boot"));
        ok(
            &[
                "create",
                "-t",
                "tar-rafs",
                "--parent-bootstrap",
                s(&base),
                "-D",
                s(&blobs),
                "-B",
                s(&boot),
                s(&tar),
            ],
            b"",
        );
        assert_eq!(blob_table(&boot).len(), 2);
        layer_boots.push(boot);
    }
    let merged = dir.join("merged.boot");
    let err = refused(&[
        "merge",
        "-B",
        s(&merged),
        s(&layer_boots[0]),
        s(&layer_boots[1]),
    ]);
    assert!(err.contains("--chunk-dict"), "{err}");
    let dict = format!("bootstrap={}", s(&base));
    ok(
        &[
            "merge",
            "-B",
            s(&merged),
            "--chunk-dict",
            &dict,
            s(&layer_boots[0]),
            s(&layer_boots[1]),
        ],
        b"",
    );
    let table = ids(&blob_table(&merged));
    assert_eq!(
        table.len(),
        3,
        "the base blob once, and each layer's own: {table:?}"
    );
    assert!(table.contains(&ids(&blob_table(&base))[0]));
    ok(&["check", "-B", s(&merged), "-D", s(&blobs)], b"");

    // create --chunk-dict (as nydus-snapshotter's converter runs it): a layer repeating a file
    // of the dictionary stores none of its chunks, names the dictionary's blob in its table and
    // holds only its own files.
    let (name, data) = layers()[0]
        .iter()
        .find_map(|e| match e {
            E::File(p, d) if d.len() > 1000 => Some((*p, d.clone())),
            _ => None,
        })
        .expect("a file in layer 0");
    let copy_tar = dir.join("copy.tar");
    fs::write(&copy_tar, layer_tar(&[E::File("copy", data.clone())])).unwrap();
    let (copy, copy_json) = (dir.join("copy.boot"), dir.join("copy.json"));
    ok(
        &[
            "create",
            "-t",
            "tar-rafs",
            "--chunk-dict",
            &dict,
            "-D",
            s(&blobs),
            "-B",
            s(&copy),
            "-J",
            s(&copy_json),
            s(&copy_tar),
        ],
        b"",
    );
    let j = read_json(&copy_json);
    assert_eq!(j["chunks_stored"], 0, "{j}");
    assert!(j["chunks_deduplicated"].as_u64().unwrap() >= 1, "{j}");
    assert_eq!(
        blob_table(&copy)[0].blob_id().unwrap(),
        ids(&blob_table(&base))[0]
    );
    let tar = dir.join("copy-unpacked.tar");
    ok(
        &[
            "unpack",
            "-B",
            s(&copy),
            "-D",
            s(&blobs),
            "--output",
            s(&tar),
        ],
        b"",
    );
    let items = tar_contents(&fs::read(&tar).unwrap());
    assert_eq!(items.get("copy").map(|i| &i.data), Some(&data));
    assert!(
        !items.keys().any(|k| k.contains(name)),
        "dictionary files leaked: {:?}",
        items.keys()
    );
}

/// Values this tool cannot honour fail, naming the flag, instead of building something else.
#[test]
fn values_that_cannot_be_honoured_fail_naming_the_flag() {
    let dir = TestDir::new("ni-cli-refuse").unwrap();
    let tar = dir.join("layer.tar");
    fs::write(&tar, layer_tar(&layers()[0])).unwrap();
    let blob = dir.join("blob");
    let boot = dir.join("boot");
    ok(
        &[
            "create",
            "-t",
            "tar-rafs",
            "-b",
            s(&blob),
            "-B",
            s(&boot),
            s(&tar),
        ],
        b"",
    );
    let out = dir.join("out");
    let create = |extra: &[&str]| {
        let mut args = vec![
            "create",
            "-t",
            "tar-rafs",
            "--blob-inline-meta",
            "-b",
            s(&out),
        ];
        args.extend(extra);
        args.push(s(&tar));
        refused(&args)
    };
    for (extra, flag) in [
        (&["--whiteout-spec", "bogus"][..], "--whiteout-spec"),
        (
            &["--whiteout-spec", "overlayfs"][..],
            "--whiteout-spec overlayfs",
        ),
        (
            &["--whiteout-spec", "none", "--parent-bootstrap", s(&boot)][..],
            "--whiteout-spec none",
        ),
        (&["--batch-size", "0x10000"][..], "--batch-size"),
        (
            &["--chunk-dict", "bootstrap=/nonexistent"][..],
            "/nonexistent",
        ),
        (&["--chunk-dict", "dir=/x"][..], "--chunk-dict"),
        (&["--encrypt"][..], "--encrypt"),
        (&["--fs-version", "5"][..], "--fs-version"),
        (&["--log-level", "loud"][..], "--log-level"),
        (&["--type", "targz-ref"][..], "--type"),
    ] {
        let err = create(extra);
        assert!(err.contains(flag), "{extra:?}: {err}");
    }
    assert!(!out.exists(), "a refused build leaves no blob behind");

    let merged = dir.join("merged");
    let d = "a".repeat(64);
    let two = format!("{d},{d}");
    for (extra, flag) in [
        (vec!["--blob-digests", two.as_str()], "--blob-digests"),
        (vec!["--blob-digests", "sha256:xyz"], "--blob-digests"),
        (vec!["--blob-sizes", "12,13"], "--blob-sizes"),
        (vec!["--blob-sizes", "big"], "--blob-sizes"),
        (vec!["--blob-toc-digests", "00"], "--blob-toc-digests"),
        (vec!["--blob-toc-sizes", "99999999999"], "--blob-toc-sizes"),
        (vec!["--original-blob-ids", "a,b"], "--original-blob-ids"),
        (vec!["--chunk-dict", "dict=x"], "--chunk-dict"),
    ] {
        let mut args = vec!["merge", "-B", s(&merged)];
        args.extend(extra.iter().copied());
        args.push(s(&boot));
        let err = refused(&args);
        assert!(err.contains(flag), "{extra:?}: {err}");
    }
    assert!(!merged.exists());

    let err = refused(&["inspect", s(&boot), "--request", "stats"]);
    assert!(err.contains("--request"), "{err}");
    let err = refused(&[
        "unpack",
        "--bootstrap",
        s(&boot),
        "--output",
        s(&dir.join("x.tar")),
        "--backend-type",
        "registry",
        "--backend-config",
        "{}",
    ]);
    assert!(err.contains("--backend-type"), "{err}");
    let err = refused(&["check", s(&boot), "--bootstrap", s(&boot)]);
    assert!(err.contains("--bootstrap"), "{err}");
}
