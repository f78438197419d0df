//! `qemu-img`, QEMU's own image tool, for every image format cvol reads or writes:
//! cvol parses no image format itself.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use cvol_provider::CopyProgress;
use serde::Deserialize;

/// What `qemu-img info` says of an image.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageInfo {
    /// Its format, e.g. `qcow2`, `vmdk`, `raw`.
    pub format: String,
    /// The size of the disk it holds, in bytes.
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
}

/// `qemu-img info` of `path`: an error naming the file if qemu-img cannot read it.
pub fn info(path: &Path) -> anyhow::Result<ImageInfo> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .context("cannot run qemu-img (Debian package qemu-utils)")?;
    if !out.status.success() {
        bail!(
            "{}: not a disk image qemu-img can read: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{}: qemu-img info answered oddly", path.display()))
}

/// Where `convert` reads or writes: a file (with its format), or an NBD URL (raw).
pub enum Image<'a> {
    /// A file in this format, e.g. `qcow2`; for a target, with `-o` options.
    File {
        /// The file.
        path: &'a Path,
        /// Its format.
        format: &'a str,
        /// Creation options of a target, e.g. `subformat=streamOptimized`.
        options: Option<&'a str>,
    },
    /// A raw NBD export.
    Nbd(&'a str),
}

/// Copies `from` into `to` with `qemu-img convert`, reporting to `progress` (of `total`
/// bytes). Only allocated data is copied: zeroes stay holes. An NBD target must be a
/// blank volume (it is written with `-n --target-is-zero`).
pub fn convert(
    from: &Image,
    to: &Image,
    total: u64,
    progress: &dyn CopyProgress,
) -> anyhow::Result<()> {
    let mut command = Command::new("qemu-img");
    command.args(["convert", "-p"]);
    match from {
        Image::File { path, format, .. } => {
            command.args(["-f", format]).arg(path);
        }
        Image::Nbd(url) => {
            command.args(["-f", "raw", url]);
        }
    }
    match to {
        Image::File {
            path,
            format,
            options,
        } => {
            command.args(["-O", format]);
            if let Some(options) = options {
                command.args(["-o", options]);
            }
            command.arg(path);
        }
        Image::Nbd(url) => {
            command.args(["-n", "--target-is-zero", "-O", "raw", url]);
        }
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run qemu-img (Debian package qemu-utils)")?;
    progress.start(total);
    // "    (12.34/100%)\r" after each step.
    let mut stdout = child.stdout.take().expect("piped");
    let (mut text, mut done, mut buf) = (String::new(), 0u64, [0u8; 256]);
    loop {
        let n = stdout
            .read(&mut buf)
            .context("reading qemu-img's progress")?;
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        while let Some(end) = text.find('\r') {
            let line: String = text.drain(..=end).collect();
            if let Some(percent) = percent(&line) {
                let now = (total as f64 * percent / 100.0) as u64;
                progress.advance(now.saturating_sub(done));
                done = done.max(now);
            }
        }
    }
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    let status = child.wait()?;
    progress.finish();
    if !status.success() {
        bail!("qemu-img convert failed: {}", stderr.trim());
    }
    Ok(())
}

/// The percentage in a progress line `"    (12.34/100%)"`.
fn percent(line: &str) -> Option<f64> {
    line.trim()
        .strip_prefix('(')?
        .split('/')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_give_their_percentage() {
        assert_eq!(percent("    (12.34/100%)\r"), Some(12.34));
        assert_eq!(percent("(100.00/100%)"), Some(100.0));
        assert_eq!(percent("qemu-img: oops"), None);
    }
}
