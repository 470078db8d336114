//! The shell's file work: reading what is there, backups, atomic writes, and the plan for each
//! `hosts.toml`.

use super::*;

/// Reads a file, `None` if it does not exist.
pub(super) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, DfinitError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DfinitError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Fails if `path` exists and is not a directory (following symlinks).
pub(super) fn check_dir(path: &Path, what: &'static str) -> Result<bool, DfinitError> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => Err(DfinitError::NotADirectory {
            path: path.to_path_buf(),
            what,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(DfinitError::Io {
            action: "inspect",
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub(super) fn append_to_name(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Decides where the pristine copy of `path` (current content `current`) goes before `path` is
/// changed. `<path>.dfinit.bak` is never overwritten: if it holds the same bytes it is kept; if
/// it holds an older, different original, the current one goes to `<path>.dfinit.bak.<n>`.
pub(super) fn plan_backup(
    path: &Path,
    current: &[u8],
) -> Result<(PathBuf, FileAction, Option<Notice>), DfinitError> {
    const MAX_BACKUPS: u32 = 100;
    let first = append_to_name(path, BACKUP_SUFFIX);
    let mut candidate = first.clone();
    for n in 1..=MAX_BACKUPS {
        match read_optional(&candidate)? {
            None => {
                let notice = (n > 1).then(|| Notice::EarlierBackupKept {
                    earlier: first.clone(),
                    new: candidate.clone(),
                });
                return Ok((candidate, FileAction::Created, notice));
            }
            Some(existing) if existing == current => {
                return Ok((candidate, FileAction::KeptExisting, None));
            }
            Some(_) => candidate = append_to_name(path, &format!("{BACKUP_SUFFIX}.{n}")),
        }
    }
    Err(DfinitError::Io {
        action: "find a free backup name for",
        path: path.to_path_buf(),
        source: io::Error::other(format!(
            "{MAX_BACKUPS} earlier backups exist; clean them up"
        )),
    })
}

/// A file write decided during planning and carried out afterwards.
pub(super) struct PendingWrite {
    pub(super) path: PathBuf,
    pub(super) contents: Vec<u8>,
    /// Write only if absent (backups), otherwise replace atomically.
    pub(super) no_clobber: bool,
    /// Permissions and owner to copy (from the file being replaced or backed up).
    pub(super) like: Option<fs::Metadata>,
}

/// Writes `contents` to a temporary file next to `target` with `like`'s mode and owner, syncs it,
/// then renames it over `target` (or, with `no_clobber`, hard-links it into place so an existing
/// file is never replaced).
pub(super) fn write_atomic(
    target: &Path,
    contents: &[u8],
    like: Option<&fs::Metadata>,
    no_clobber: bool,
) -> Result<(), DfinitError> {
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.dfinit-{}.tmp", std::process::id()));
    let mode = like.map_or(0o644, |m| m.permissions().mode() & 0o7777);

    let result = (|| -> io::Result<()> {
        let open = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
        };
        let mut file = match open() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Left over from a killed run with the same pid.
                fs::remove_file(&tmp)?;
                open()?
            }
            other => other?,
        };
        file.write_all(contents)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some(like) = like {
            let mine = file.metadata()?;
            if (mine.uid(), mine.gid()) != (like.uid(), like.gid()) {
                std::os::unix::fs::fchown(&file, Some(like.uid()), Some(like.gid()))?;
            }
        }
        file.sync_all()?;
        drop(file);
        if no_clobber {
            fs::hard_link(&tmp, target)?;
            fs::remove_file(&tmp)?;
        } else {
            fs::rename(&tmp, target)?;
        }
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err("write", target))
}

/// Plans one `hosts.toml`: compares with what is there and schedules the write (and a backup of
/// a hand-written file it replaces).
pub(super) fn plan_hosts_file(
    dir: &Path,
    contents: String,
    role: FileRole,
    files: &mut Vec<FileChange>,
    writes: &mut Vec<PendingWrite>,
    notices: &mut Vec<Notice>,
) -> Result<(), DfinitError> {
    check_dir(dir, "registry host directory under config_path")?;
    let path = dir.join("hosts.toml");
    let existing = read_optional(&path)?;
    let action = match &existing {
        None => FileAction::Created,
        Some(old) if *old == contents.as_bytes() => FileAction::Unchanged,
        Some(_) => FileAction::Updated,
    };
    if let (FileAction::Updated, Some(old)) = (action, &existing) {
        if !is_managed(old) {
            let (backup, backup_action, notice) = plan_backup(&path, old)?;
            notices.extend(notice);
            notices.push(Notice::ReplacedUnmanagedHosts {
                path: path.clone(),
                backup: backup.clone(),
            });
            let like = fs::metadata(&path).map_err(io_err("inspect", &path))?;
            if backup_action == FileAction::Created {
                writes.push(PendingWrite {
                    path: backup.clone(),
                    contents: old.clone(),
                    no_clobber: true,
                    like: Some(like),
                });
            }
            files.push(FileChange {
                path: backup,
                role: FileRole::Backup { of: path.clone() },
                action: backup_action,
            });
        }
    }
    if action != FileAction::Unchanged {
        let like = match action {
            FileAction::Updated => Some(fs::metadata(&path).map_err(io_err("inspect", &path))?),
            _ => None,
        };
        writes.push(PendingWrite {
            path: path.clone(),
            contents: contents.into_bytes(),
            no_clobber: false,
            like,
        });
    }
    files.push(FileChange { path, role, action });
    Ok(())
}
