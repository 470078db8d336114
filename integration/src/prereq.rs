//! Prerequisite checks: integration tests fail (not skip) when the machine lacks what they need.

use std::path::Path;

/// Panics with one message naming everything that is missing: root privileges and each of
/// `tools` that is not an executable file on `PATH`. Also installs the rustls crypto provider
/// (see [`install_crypto_provider`](crate::install_crypto_provider)).
///
/// ```no_run
/// integration::require_root_and_tools(&["containerd", "ctr", "docker-registry", "skopeo"]);
/// ```
pub fn require_root_and_tools(tools: &[&str]) {
    crate::install_crypto_provider();
    let mut problems = Vec::new();
    let euid = rustix::process::geteuid();
    if !euid.is_root() {
        problems.push(format!("not running as root (euid {})", euid.as_raw()));
    }
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| find_on_path(t).is_none())
        .collect();
    if !missing.is_empty() {
        problems.push(format!("not on PATH: {}", missing.join(", ")));
    }
    if !problems.is_empty() {
        panic!(
            "integration test prerequisites missing: {}. Run hack/setup.sh as root and run the tests as root.",
            problems.join("; ")
        );
    }
}

/// The first executable file called `name` in the directories of `PATH`.
pub(crate) fn find_on_path(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = Path::new(name);
        return is_exec(p).then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_exec(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_not_nonsense() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("surely-no-such-binary-xyz").is_none());
    }

    #[test]
    fn missing_tool_panics_with_its_name() {
        let err =
            std::panic::catch_unwind(|| require_root_and_tools(&["surely-no-such-binary-xyz"]))
                .expect_err("must panic");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("surely-no-such-binary-xyz"), "{msg}");
    }
}
