//! A small disk: a tmpfs of a fixed size on a temporary mount point, for
//! faults that fill a service's disk (a filler file written until `ENOSPC`)
//! and heal it (the filler removed). `bazaar chaos` and the full-disk system
//! tests use it. Mounting needs root; [`Tmpfs::mount`] says why it cannot
//! otherwise. The tmpfs is unmounted when the [`Tmpfs`] is dropped, also
//! when a run fails half-way.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The filler's name in the tmpfs's root.
const FILLER: &str = "filler";

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// One tmpfs on a temporary mount point; unmounted on drop.
pub struct Tmpfs {
    mount_point: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` on a new directory named `prefix…` in the
    /// temporary directory, or says why it cannot (not root, `mount`
    /// missing or refused): the reason to skip what needed it.
    pub fn mount(prefix: &str, bytes: u64) -> Result<Tmpfs, String> {
        if !is_root() {
            return Err("mounting a tmpfs needs root".into());
        }
        let mount_point = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map_err(|e| format!("cannot create a mount point: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(mount_point.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { mount_point })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.mount_point.path()
    }

    /// Changes the size to `bytes` while mounted (`mount -o remount`).
    pub fn resize(&self, bytes: u64) -> anyhow::Result<()> {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(self.path())
            .output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    fn filler(&self) -> PathBuf {
        self.path().join(FILLER)
    }

    /// Fills every free byte with a filler file; returns its size.
    /// Blocking: call it off the async threads.
    pub fn fill(&self) -> anyhow::Result<u64> {
        let path = self.filler();
        let mut f = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let chunk = vec![0xA5u8; 64 * 1024];
        let mut written = 0u64;
        // Whole chunks, then smaller and smaller writes for the last pages.
        let mut size = chunk.len();
        while size > 0 {
            match f.write(&chunk[..size]) {
                Ok(0) => break,
                Ok(n) => written += u64::try_from(n)?,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => size /= 2,
                Err(e) => return Err(e.into()),
            }
        }
        let _ = f.sync_all();
        Ok(written)
    }

    /// Removes the filler: the space is back.
    pub fn free(&self) -> anyhow::Result<()> {
        let path = self.filler();
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let path = self.mount_point.path().to_path_buf();
        let umount = |lazy: bool| {
            let mut cmd = Command::new("umount");
            if lazy {
                cmd.arg("-l");
            }
            match cmd.arg(&path).output() {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        if let Err(e) = umount(false) {
            // A process still holds a file there: detach it now, the kernel
            // frees it when the last file closes.
            eprintln!("umount {}: {e}; detaching it lazily", path.display());
            if let Err(e) = umount(true) {
                eprintln!("umount -l {}: {e}", path.display());
            }
        }
    }
}
