//! Bounded, non-blocking reads of the small files the configuration names (keys, CA
//! certificates, the listener's certificate), and what to tell a user who cannot read one.
//!
//! Why one reader: a reload reads these files while it holds its lock, so a FIFO must not
//! hang it and `/dev/zero` must not exhaust memory; every caller (key sets, the HTTPS
//! listener's certificate, the merged CA bundles) gets the same guarantees and the same
//! messages.

use std::path::Path;

/// Why a bounded file read failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Opening or reading failed.
    #[error("{0}; check the path and the file's permissions")]
    Io(std::io::Error),
    /// Not a regular file (a FIFO, device, socket or folder).
    #[error("it is {0}, not a regular file; point the setting at the file itself")]
    NotRegular(&'static str),
    /// Larger than a file of this kind can be.
    #[error("it is larger than {0} bytes, so it is not a key or certificate file; check the path")]
    TooLarge(u64),
}

/// Reads a small configuration file (key, certificate) safely: opened non-blocking so a FIFO
/// cannot hang the caller (a reload holds its lock while reading), refused unless it is a
/// regular file (after symlinks), and never more than `max` bytes (`/dev/zero` cannot
/// exhaust memory).
pub fn read_file(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::IsADirectory => FileError::NotRegular("a folder"),
            _ => FileError::Io(e),
        })?;
    let meta = file.metadata().map_err(FileError::Io)?;
    let t = meta.file_type();
    if !t.is_file() {
        return Err(FileError::NotRegular(if t.is_dir() {
            "a folder"
        } else if t.is_fifo() {
            "a named pipe (FIFO)"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else {
            "a special file"
        }));
    }
    if meta.len() > max {
        return Err(FileError::TooLarge(max));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(FileError::Io)?;
    if bytes.len() as u64 > max {
        return Err(FileError::TooLarge(max));
    }
    Ok(bytes)
}

/// [`read_file`] with the error as text, for callers that only report it.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    read_file(path, max).map_err(|e| e.to_string())
}

/// Ownership and mode of a key file, and the group the sidecar runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileAccess {
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// The file's group.
    pub gid: u32,
    /// The sidecar's effective group.
    pub process_gid: u32,
}

impl FileAccess {
    /// Whether someone besides the sidecar's user (and its own group) can read or change the
    /// file: any "other" bit, or group bits for a group the sidecar does not run as. Group bits
    /// for the sidecar's own group are how Kubernetes makes a Secret readable for a non-root
    /// uid (`fsGroup` + `defaultMode: 0440`), so they are not flagged.
    pub fn too_open(&self) -> bool {
        self.mode & 0o007 != 0 || (self.mode & 0o070 != 0 && self.gid != self.process_gid)
    }
}

/// How `path` is protected, for the preflight's "readable by others" warning (`None` off
/// Unix, or when it cannot be read).
#[cfg(unix)]
pub fn file_access(path: &Path) -> Option<FileAccess> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    // SAFETY: getegid has no preconditions and cannot fail.
    let process_gid = unsafe { libc::getegid() };
    Some(FileAccess {
        mode: meta.mode() & 0o7777,
        gid: meta.gid(),
        process_gid,
    })
}

#[cfg(not(unix))]
pub fn file_access(_path: &Path) -> Option<FileAccess> {
    None
}

/// The uid:gid of the container image's user (distroless `nonroot`); key files mounted into
/// the container must be readable by it.
pub const CONTAINER_UID: u32 = 65532;

/// What to do when a key file cannot be read: who the sidecar runs as, and the ownership and
/// mode that work (in the container image that is uid/gid 65532).
pub fn permission_denied_hint(path: &Path) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid/getegid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let file = std::fs::metadata(path)
            .ok()
            .map(|m| (m.uid(), m.gid(), m.mode() & 0o7777));
        permission_advice(path, uid, gid, file)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        "permission denied; give the user the sidecar runs as read access to the file".into()
    }
}

/// [`permission_denied_hint`] for a sidecar running as `uid`:`gid` and a file with `file` =
/// (owner uid, owner gid, mode) when its metadata could be read (pure, for the tests). The fix
/// depends on why: a file the sidecar owns but whose mode forbids reading needs `chmod`, not
/// `chown` (issue 20: a mode-0000 key got "chown" advice); someone else's file needs
/// `chown`; a readable file behind a closed folder needs the folder fixed.
pub fn permission_advice(path: &Path, uid: u32, gid: u32, file: Option<(u32, u32, u32)>) -> String {
    let shown = path.display();
    let owner = file
        .map(|(fuid, fgid, mode)| {
            format!(" (the file is owned by {fuid}:{fgid} with mode {mode:04o})")
        })
        .unwrap_or_default();
    let advice = match file {
        Some((fuid, _, mode)) if fuid == uid && mode & 0o400 == 0 => format!(
            "; the sidecar owns the file, but its mode lets no one read it: `chmod 600 {shown}`"
        ),
        Some((fuid, _, _)) if fuid == uid => format!(
            "; the file itself is readable by its owner, the sidecar, so a folder above it is \
             closed to uid {uid}: give that folder execute (search) permission (`namei -l \
             {shown}` shows which one)"
        ),
        _ if uid == CONTAINER_UID => format!(
            "; in the container image the sidecar is uid:gid {CONTAINER_UID}:{CONTAINER_UID}: \
             on the host, `sudo chown {CONTAINER_UID}:{CONTAINER_UID}` the key files with \
             mode 0400 (or `chgrp {CONTAINER_UID}` with mode 0440) before mounting them; in \
             Kubernetes set fsGroup: {CONTAINER_UID} and defaultMode: 0440 on the Secret \
             volume (see config/kubernetes/deployment.yaml)"
        ),
        _ => format!(
            "; `sudo chown {uid} {shown} && chmod 600 {shown}`, or run the sidecar as the \
             file's owner (in the container image the sidecar is uid:gid \
             {CONTAINER_UID}:{CONTAINER_UID})"
        ),
    };
    format!(
        "permission denied: the sidecar runs as uid {uid}, gid {gid}{owner} and must be able \
         to read the file (and every folder above it){advice}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_modes() {
        let access = |mode, gid| FileAccess {
            mode,
            gid,
            process_gid: 7,
        };
        assert!(!access(0o600, 0).too_open());
        assert!(!access(0o400, 0).too_open());
        assert!(access(0o644, 7).too_open(), "others can read");
        assert!(access(0o640, 0).too_open(), "another group can read");
        assert!(!access(0o440, 7).too_open(), "the sidecar's own group");
    }

    /// The advice fits the cause: the owner's own unreadable file gets `chmod 600`, never
    /// `chown` (issue 20); someone else's file gets `chown`; the container's uid its recipe.
    #[test]
    fn permission_advice_fits_the_cause() {
        let path = Path::new("/k/merchant_private_key.pem");
        let own = permission_advice(path, 1000, 1000, Some((1000, 1000, 0o000)));
        assert!(
            own.contains("`chmod 600 /k/merchant_private_key.pem`"),
            "{own}"
        );
        assert!(!own.contains("chown"), "{own}");
        let folder = permission_advice(path, 1000, 1000, Some((1000, 1000, 0o600)));
        assert!(
            folder.contains("a folder above it") && !folder.contains("chown"),
            "{folder}"
        );
        let other = permission_advice(path, 1000, 1000, Some((0, 0, 0o600)));
        assert!(
            other.contains("sudo chown 1000 /k/merchant_private_key.pem"),
            "{other}"
        );
        let container = permission_advice(path, CONTAINER_UID, CONTAINER_UID, Some((0, 0, 0o600)));
        assert!(container.contains("fsGroup: 65532"), "{container}");
        let container_own = permission_advice(
            path,
            CONTAINER_UID,
            CONTAINER_UID,
            Some((CONTAINER_UID, 0, 0)),
        );
        assert!(container_own.contains("chmod 600"), "{container_own}");
    }

    #[test]
    fn bounded_reads_refuse_folders_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_file(dir.path(), 16).unwrap_err();
        assert!(matches!(e, FileError::NotRegular("a folder")), "{e}");
        let path = dir.path().join("big");
        std::fs::write(&path, [b'x'; 17]).unwrap();
        assert!(matches!(read_file(&path, 16), Err(FileError::TooLarge(16))));
        assert_eq!(read_file(&path, 17).unwrap().len(), 17);
        let e = read_bounded(&dir.path().join("gone"), 16).unwrap_err();
        assert!(e.contains("check the path"), "{e}");
    }
}
